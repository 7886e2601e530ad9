"""Byte-level tests of the frame decoder: whole buffers, byte by byte, trailing bytes."""

from __future__ import annotations

import contextlib
import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dizzy.protocol.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from dizzy.protocol.framing import EOF, NEED_DATA, FrameDecoder, encode_frame

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
