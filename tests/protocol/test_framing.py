"""Byte-level tests of the frame decoder: whole buffers, byte by byte, trailing bytes."""

from __future__ import annotations

import contextlib
import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dizzy.protocol.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from dizzy.protocol.framing import (
    EOF,
    LARGE_BYTES,
    NEED_DATA,
    PEER_MAX_FRAME,
    FrameDecoder,
    encode_frame,
    encode_frame_parts,
)

# Golden vector: the exact bytes of one frame, so the wire format cannot drift.
GOLDEN_VALUE = {"t": "req", "v": 1, "m": "status", "p": {}}
GOLDEN_FRAME = bytes.fromhex("0000001684a174a3726571a17601a16da6737461747573a17080")


def drain(decoder: FrameDecoder) -> list[object]:
    out = []
    while (value := decoder.next_frame()) is not NEED_DATA and value is not EOF:
        out.append(value)
    return out


def test_golden_frame_bytes() -> None:
    assert encode_frame(GOLDEN_VALUE) == GOLDEN_FRAME


def test_whole_buffer_then_eof() -> None:
    d = FrameDecoder()
    d.receive_data(encode_frame(1) + encode_frame({"a": b"x"}))
    assert drain(d) == [1, {"a": b"x"}]
    d.receive_data(b"")
    assert d.next_frame() is EOF


def test_byte_by_byte() -> None:
    data = encode_frame("hello") + encode_frame([1, 2, 3])
    d = FrameDecoder()
    got: list[object] = []
    for i in range(len(data)):
        d.receive_data(data[i : i + 1])
        got.extend(drain(d))
    assert got == ["hello", [1, 2, 3]]


def test_trailing_partial_frame_waits() -> None:
    data = encode_frame("a") + encode_frame("b")[:3]
    d = FrameDecoder()
    d.receive_data(data)
    assert d.next_frame() == "a"
    assert d.next_frame() is NEED_DATA


def test_eof_inside_header_or_body_is_remote_error() -> None:
    for cut in (2, 6):
        d = FrameDecoder()
        d.receive_data(encode_frame("abcdef")[:cut])
        d.receive_data(b"")
        with pytest.raises(RemoteProtocolError):
            d.next_frame()


def test_oversized_length_rejected_before_body_arrives() -> None:
    d = FrameDecoder(max_size=100)
    d.receive_data(struct.pack(">I", 101))
    with pytest.raises(FrameTooLarge):
        d.next_frame()


def test_huge_announced_length_costs_nothing() -> None:
    d = FrameDecoder()
    d.receive_data(b"\xff\xff\xff\xff")
    with pytest.raises(FrameTooLarge):
        d.next_frame()
    assert d.buffered == 4


def test_encode_refuses_oversized() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * 200, max_size=100)


@pytest.mark.parametrize(
    "body",
    [b"\xc1", b"\x92\x01", b"\x01\x02", b"\xd9"],  # reserved byte, short array, extra, short str
)
def test_malformed_body_is_remote_error(body: bytes) -> None:
    d = FrameDecoder()
    d.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(RemoteProtocolError):
        d.next_frame()


def test_data_after_eof_is_local_error() -> None:
    d = FrameDecoder()
    d.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        d.receive_data(b"x")


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=20,
)


@given(st.lists(values, max_size=5), st.integers(1, 17))
def test_round_trip_any_split(items: list[object], step: int) -> None:
    data = b"".join(encode_frame(v) for v in items)
    d = FrameDecoder()
    got: list[object] = []
    for i in range(0, len(data), step):
        d.receive_data(data[i : i + step])
        got.extend(drain(d))
    assert got == items


@given(st.binary(max_size=300))
def test_garbage_never_crashes(garbage: bytes) -> None:
    d = FrameDecoder(max_size=256)
    d.receive_data(garbage)
    d.receive_data(b"")
    with contextlib.suppress(RemoteProtocolError):
        drain(d)


def test_msgpack_golden_matches_library() -> None:
    assert GOLDEN_FRAME[4:] == msgpack.packb(GOLDEN_VALUE, use_bin_type=True)


# -- encode_frame_parts: the same bytes as encode_frame, large values by reference ------

_LARGE = LARGE_BYTES


@pytest.mark.parametrize("value", [
    {"t": "res", "i": 7, "b": {"data": b"\x01" * _LARGE}},
    {"t": "res", "i": 7, "b": {"data": b"\x02" * (_LARGE + 1), "n": 3}},
    {"t": "res", "i": 1, "b": {"data": b"\x03" * (1 << 16)}},  # bin 32 from here
    {"t": "res", "i": 1, "b": {"data": b"\x04" * ((1 << 16) - 1)}},  # the last bin 16
    [b"\x05" * _LARGE, "x", b"\x06" * (_LARGE * 3), {"k": [1, 2.5, None, True]}],
    {"small": b"abc", "n": -1},
])
def test_parts_concatenate_to_encode_frame(value: object) -> None:
    parts = encode_frame_parts(value, PEER_MAX_FRAME)
    assert b"".join(parts) == encode_frame(value, PEER_MAX_FRAME)


def test_parts_pass_large_bytes_by_reference() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    parts = encode_frame_parts({"t": "res", "i": 3, "b": {"data": data}}, PEER_MAX_FRAME)
    assert any(part is data for part in parts)


def test_parts_enforce_the_frame_limit() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame_parts({"data": b"\0" * (_LARGE * 2)}, max_size=_LARGE)


@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20)
    | st.binary(max_size=40) | st.sampled_from([b"\x07" * _LARGE, b"\x08" * (1 << 16)]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
))
def test_parts_match_encode_frame_on_any_value(value: object) -> None:
    assert b"".join(encode_frame_parts(value, PEER_MAX_FRAME)) == \
        encode_frame(value, PEER_MAX_FRAME)


def test_decoder_segments_frames_split_anywhere() -> None:
    # One large frame and small ones, fed in uneven reads that straddle headers and
    # bodies: the segment list must hand back every value intact.
    big = {"t": "res", "i": 1, "b": {"data": bytes(range(256)) * 1000}}
    stream = b"".join([encode_frame("a"), encode_frame(big, PEER_MAX_FRAME),
                       encode_frame([1, 2]), encode_frame(big, PEER_MAX_FRAME)])
    for step in (1, 3, 4096, 65537, 300000):
        d = FrameDecoder(PEER_MAX_FRAME)
        got: list[object] = []
        for start in range(0, len(stream), step):
            d.receive_data(stream[start : start + step])
            got.extend(drain(d))
        assert got == ["a", big, [1, 2], big]
        assert d.buffered == 0


def test_decoder_gathers_tiny_pieces_instead_of_keeping_a_segment_each() -> None:
    # A peer trickling a frame one byte per TLS record must not cost a segment (and
    # its bookkeeping) per byte.
    frame = encode_frame({"data": b"\x09" * 100_000}, PEER_MAX_FRAME)
    d = FrameDecoder(PEER_MAX_FRAME)
    for i in range(len(frame) - 1):
        d.receive_data(frame[i : i + 1])
    assert len(d._segments) == 1
    d.receive_data(frame[-1:])
    assert drain(d) == [{"data": b"\x09" * 100_000}]
    assert d.buffered == 0


def test_decoder_mixes_large_and_tiny_pieces() -> None:
    big = {"t": "res", "i": 2, "b": {"data": bytes(range(256)) * 512}}
    stream = encode_frame(big, PEER_MAX_FRAME) + encode_frame("tail")
    d = FrameDecoder(PEER_MAX_FRAME)
    got: list[object] = []
    pos = 0
    for size in [1, 2, 70_000, 3, 5000, 1, 9]:
        d.receive_data(stream[pos : pos + size])
        pos += size
        got.extend(drain(d))
    d.receive_data(stream[pos:])
    got.extend(drain(d))
    assert got == [big, "tail"]
