"""Fuzzing the frame decoder and the canonical one-value decoder (protocol/framing.py).

Allowed errors: ``RemoteProtocolError`` (``FrameTooLarge`` included) for bad bytes; the
decoder must give the same frames however the stream is split.
"""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dizzy.protocol.errors import RemoteProtocolError
from dizzy.protocol.framing import (
    EOF,
    HEADER,
    NEED_DATA,
    PEER_MAX_FRAME,
    FrameDecoder,
    encode_frame,
    unpack_one,
)
from tests.fuzz.strategies import examples, msgpack_values, mutated_bytes_of
from tests.fuzz_counter import tick

#: valid one-value encodings to mutate
CORPUS = [encode_frame(v)[4:] for v in (
    {"t": "req", "v": 1, "m": "status", "p": {}}, [1, "two", b"three", None, True, 4.5],
    {"nested": [{"a": [1, [2, [3]]]}]}, "text", b"\x00" * 40, 2**63, -1,
)]

#: small limit so oversized-frame paths are reached with small inputs
SMALL_LIMIT = 256


def decode_all(chunks: list[bytes], limit: int) -> tuple[list[Any], str]:
    """Feed ``chunks`` then EOF; the frames and how it ended ("eof" or the error)."""
    decoder = FrameDecoder(limit)
    frames: list[Any] = []
    try:
        for chunk in [*chunks, b""]:
            decoder.receive_data(chunk)
            while (value := decoder.next_frame()) is not NEED_DATA:
                if value is EOF:
                    return frames, "eof"
                frames.append(value)
    except RemoteProtocolError as exc:
        return frames, type(exc).__name__
    raise AssertionError("EOF fed but the decoder still wants data")


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return [p for p in pieces if p]


@examples(6000)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 1000), max_size=8),
       limit=st.sampled_from([SMALL_LIMIT, PEER_MAX_FRAME]))
def test_random_bytes_decode_or_fail_cleanly_however_split(
        data: bytes, cuts: list[int], limit: int) -> None:
    tick()
    whole = decode_all([data], limit)
    assert decode_all(split(data, cuts), limit) == whole


@examples(1500)
@given(values=st.lists(msgpack_values, min_size=1, max_size=4), cuts=st.lists(
    st.integers(0, 10_000), max_size=6), garbage=st.binary(max_size=12))
def test_valid_frames_survive_any_split_and_garbage_after(
        values: list[Any], cuts: list[int], garbage: bytes) -> None:
    tick()
    stream = b"".join(encode_frame(v, PEER_MAX_FRAME) for v in values)
    frames, end = decode_all(split(stream, cuts), PEER_MAX_FRAME)
    assert end == "eof"
    assert len(frames) == len(values)
    # Trailing garbage after valid frames never costs the frames before it.
    frames2, _ = decode_all(split(stream + garbage, cuts), PEER_MAX_FRAME)
    assert frames2[: len(frames)] == frames


@examples(1500)
@given(value=msgpack_values, data=st.data())
def test_truncated_frame_is_an_error_at_eof(value: Any, data: st.DataObject) -> None:
    tick()
    frame = encode_frame(value, PEER_MAX_FRAME)
    cut = data.draw(st.integers(1, len(frame) - 1))
    frames, end = decode_all([frame[:cut]], PEER_MAX_FRAME)
    assert frames == [] and end == "RemoteProtocolError"


@examples(1000)
@given(value=msgpack_values)
def test_valid_frame_byte_by_byte(value: Any) -> None:
    tick()
    frame = encode_frame(value, PEER_MAX_FRAME)
    assert decode_all([frame[i : i + 1] for i in range(len(frame))], PEER_MAX_FRAME) == \
        decode_all([frame], PEER_MAX_FRAME)


@examples(2000)
@given(length=st.integers(SMALL_LIMIT + 1, (1 << 32) - 1), body=st.binary(max_size=64))
def test_oversized_header_refused_before_the_body(length: int, body: bytes) -> None:
    tick()
    decoder = FrameDecoder(SMALL_LIMIT)
    decoder.receive_data(HEADER.pack(length) + body)
    try:
        decoder.next_frame()
    except RemoteProtocolError as exc:
        assert type(exc).__name__ == "FrameTooLarge"
    else:
        raise AssertionError("an oversized frame was accepted")


@examples(5000)
@given(data=st.one_of(st.binary(max_size=300), mutated_bytes_of(CORPUS)))
def test_unpack_one_accepts_one_value_or_raises_remote_error(data: bytes) -> None:
    tick()
    with contextlib.suppress(RemoteProtocolError):
        unpack_one(data, "fuzz")
