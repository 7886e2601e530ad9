"""Outboards: building, the byte-level encoding, and every malformed input."""

from __future__ import annotations

import blake3
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dizzy.protocol.chunking import CHUNK_MAX, CHUNK_MIN, chunk_spans
from dizzy.protocol.errors import LocalProtocolError, RemoteProtocolError
from dizzy.protocol.ids import object_id_of
from dizzy.protocol.outboard import (
    MAX_CHUNKS,
    OUTBOARD_MAGIC,
    ChunkRef,
    Outboard,
    OutboardBuilder,
    outboard_of,
)

EMPTY_ID = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def golden_data(length: int, seed: bytes = b"dizzy-golden") -> bytes:
    return blake3.blake3(seed).digest(length=length)


@pytest.fixture(scope="module")
def data() -> bytes:
    return golden_data(8 * 1024 * 1024 + 12345)


@pytest.fixture(scope="module")
def outboard(data: bytes) -> Outboard:
    return outboard_of(data)


def test_builder_matches_chunker_and_b3sum(data: bytes, outboard: Outboard) -> None:
    # the object ID is the plain BLAKE3 of all bytes, what b3sum prints
    assert outboard.object_id == blake3.blake3(data).hexdigest() == object_id_of(data)
    assert outboard.object_id == (
        "2ecc79a05d552ac0400a5233b2948e11baced87713058e524467662d2f73bbf0"
    )
    assert [(c.offset, c.length) for c in outboard.chunks] == chunk_spans(data)
    for i, c in enumerate(outboard.chunks):
        assert c.hash == blake3.blake3(data[c.offset : c.end]).digest()
        assert outboard.verify_chunk(i, data[c.offset : c.end])
    assert outboard.size == len(data)


def test_golden_encoding(outboard: Outboard) -> None:
    # pins the wire form: a change here breaks every peer of an older version
    encoded = outboard.encode()
    assert len(encoded) == 319
    assert blake3.blake3(encoded).hexdigest() == (
        "e3886b64c29639d95abf851f1d6e4bf3a38470a191d794ee277450c38292e4af"
    )


def test_golden_encoding_bytes() -> None:
    hello = "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
    assert outboard_of(b"hello").encode() == bytes.fromhex(
        "95"  # array of 5
        "b0" + OUTBOARD_MAGIC.encode().hex()  # str of 16
        + "c420" + hello  # bin 32: the object ID
        + "05"  # size
        + "9105"  # [5]
        + "c420" + hello  # one chunk hash, the whole object here
    )


def test_encoding_layout(outboard: Outboard) -> None:
    value = msgpack.unpackb(outboard.encode(), raw=False)
    assert value == [
        OUTBOARD_MAGIC,
        bytes.fromhex(outboard.object_id),
        outboard.size,
        [c.length for c in outboard.chunks],
        b"".join(c.hash for c in outboard.chunks),
    ]


@pytest.mark.parametrize("sizes", [[1], [7, 3_000_001], [4 * 1024 * 1024], [20 * 1024 * 1024]])
def test_builder_block_sizes_do_not_matter(
    data: bytes, outboard: Outboard, sizes: list[int]
) -> None:
    builder = OutboardBuilder()
    pos = 0
    turn = 0
    while pos < len(data):
        size = sizes[turn % len(sizes)]
        if size == 1 and pos > 100:
            size = len(data)  # a few single bytes, then the rest: keeps the test fast
        builder.feed(bytearray(data[pos : pos + size]))
        pos += size
        turn += 1
    assert builder.size == len(data)
    assert builder.finish() == outboard


def test_empty_object() -> None:
    empty = outboard_of(b"")
    assert empty == Outboard(EMPTY_ID, 0, ())
    assert Outboard.decode(empty.encode(), EMPTY_ID) == empty
    with pytest.raises(IndexError):
        empty.chunk_index_at(0)


def test_small_object_is_one_chunk() -> None:
    ob = outboard_of(b"hello")
    assert ob.chunks == (ChunkRef(0, 5, blake3.blake3(b"hello").digest()),)
    assert ob.object_id == blake3.blake3(b"hello").hexdigest()


def test_round_trip(outboard: Outboard) -> None:
    encoded = outboard.encode()
    assert Outboard.decode(encoded) == outboard
    assert Outboard.decode(bytearray(encoded), outboard.object_id) == outboard
    assert Outboard.decode(memoryview(encoded)) == outboard


def test_chunk_index_at(outboard: Outboard) -> None:
    for i, c in enumerate(outboard.chunks):
        assert outboard.chunk_index_at(c.offset) == i
        assert outboard.chunk_index_at(c.end - 1) == i
    for bad in (-1, outboard.size, outboard.size + 10):
        with pytest.raises(IndexError):
            outboard.chunk_index_at(bad)


def test_verify_chunk_rejects_wrong_bytes(data: bytes, outboard: Outboard) -> None:
    c = outboard.chunks[1]
    good = bytearray(data[c.offset : c.end])
    assert outboard.verify_chunk(1, good)
    good[100] ^= 1
    assert not outboard.verify_chunk(1, good)
    assert not outboard.verify_chunk(1, data[c.offset : c.end - 1])
    assert not outboard.verify_chunk(0, data[c.offset : c.end])


# -- malformed input -------------------------------------------------------------


def test_every_truncation_is_refused(outboard: Outboard) -> None:
    encoded = outboard.encode()
    for cut in range(len(encoded)):
        with pytest.raises(RemoteProtocolError):
            Outboard.decode(encoded[:cut])


@pytest.mark.parametrize("tail", [b"\x00", b"\xc0", b"garbage", msgpack.packb([1])])
def test_trailing_bytes_are_refused(outboard: Outboard, tail: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="trailing"):
        Outboard.decode(outboard.encode() + tail)


def test_wrong_object_id_is_refused(outboard: Outboard) -> None:
    with pytest.raises(RemoteProtocolError, match="not"):
        Outboard.decode(outboard.encode(), EMPTY_ID)


H = b"\x11" * 32
OID = b"\x22" * 32


def enc(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        {"a": 1},
        [OUTBOARD_MAGIC, OID, 5, [5]],  # too short
        [OUTBOARD_MAGIC, OID, 5, [5], H, 0],  # too long
        ["dizzy/outboard/2", OID, 5, [5], H],
        [b"dizzy/outboard/1", OID, 5, [5], H],
        [OUTBOARD_MAGIC, OID[:31], 5, [5], H],
        [OUTBOARD_MAGIC, OID.hex(), 5, [5], H],
        [OUTBOARD_MAGIC, OID, "5", [5], H],
        [OUTBOARD_MAGIC, OID, True, [1], H],
        [OUTBOARD_MAGIC, OID, 5.0, [5], H],
        [OUTBOARD_MAGIC, OID, -5, [5], H],
        [OUTBOARD_MAGIC, OID, 6, [5], H],  # size disagrees with lengths
        [OUTBOARD_MAGIC, OID, 5, [5], H + H],  # one hash too many
        [OUTBOARD_MAGIC, OID, 5, [5], H[:31]],
        [OUTBOARD_MAGIC, OID, 5, [5], H.hex()],
        [OUTBOARD_MAGIC, OID, 5, 5, H],
        [OUTBOARD_MAGIC, OID, 5, [5.0], H],
        [OUTBOARD_MAGIC, OID, 1, [True], H],
        [OUTBOARD_MAGIC, OID, 5, ["5"], H],
        [OUTBOARD_MAGIC, OID, 0, [0], H],  # empty chunk
        [OUTBOARD_MAGIC, OID, 10, [-5, 15], H + H],
        [OUTBOARD_MAGIC, OID, CHUNK_MAX + 1, [CHUNK_MAX + 1], H],
        [OUTBOARD_MAGIC, OID, 10, [5, 5], H + H],  # non-last chunk below CHUNK_MIN
        [OUTBOARD_MAGIC, OID, 2**64 - 1, [2**64 - 1], H],
        [OUTBOARD_MAGIC, OID, MAX_CHUNKS + 1, [1] * (MAX_CHUNKS + 1), H * (MAX_CHUNKS + 1)],
    ],
    ids=lambda v: repr(v)[:60],
)
def test_malformed_values_are_refused(value: object) -> None:
    with pytest.raises(RemoteProtocolError):
        Outboard.decode(enc(value))


def test_non_canonical_encoding_is_refused() -> None:
    canonical = enc([OUTBOARD_MAGIC, OID, 5, [5], H])
    assert Outboard.decode(canonical).size == 5
    # the same values with the size as a uint32 instead of a fixint
    wide = canonical.replace(b"\x05\x91\x05", b"\xce\x00\x00\x00\x05\x91\x05")
    assert msgpack.unpackb(wide) == msgpack.unpackb(canonical)
    with pytest.raises(RemoteProtocolError, match="canonical"):
        Outboard.decode(wide)


@pytest.mark.parametrize(
    "blob", [b"", b"\xc1", b"\x91", b"\xdd\xff\xff\xff\xff", b"\x95" + b"\xa0" * 4]
)
def test_garbage_is_refused(blob: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        Outboard.decode(blob)


def test_construction_validates() -> None:
    with pytest.raises(LocalProtocolError):
        ChunkRef(0, 5, b"short")
    with pytest.raises(LocalProtocolError):
        ChunkRef(0, 0, H)
    with pytest.raises(LocalProtocolError):
        ChunkRef(-1, 5, H)
    with pytest.raises(LocalProtocolError):
        ChunkRef(0, 5, bytearray(H))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        Outboard("A" * 64, 5, (ChunkRef(0, 5, H),))  # not canonical lowercase
    with pytest.raises(LocalProtocolError):
        Outboard(OID.hex(), 5, (ChunkRef(1, 5, H),))  # does not start at 0
    with pytest.raises(LocalProtocolError):
        Outboard(OID.hex(), 6, (ChunkRef(0, 5, H),))
    with pytest.raises(LocalProtocolError):
        Outboard(  # a gap between chunks
            OID.hex(),
            2 * CHUNK_MIN,
            (ChunkRef(0, CHUNK_MIN, H), ChunkRef(CHUNK_MIN + 1, CHUNK_MIN - 1, H)),
        )
    with pytest.raises(LocalProtocolError):
        Outboard(OID.hex(), 5, [ChunkRef(0, 5, H)])  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(CHUNK_MIN, CHUNK_MAX), max_size=30).flatmap(
        lambda ls: st.tuples(st.just(ls), st.integers(1, CHUNK_MAX))
    ),
    oid=st.binary(min_size=32, max_size=32),
    seed=st.binary(max_size=4),
)
def test_round_trip_property(
    lengths: tuple[list[int], int], oid: bytes, seed: bytes
) -> None:
    all_lengths = [*lengths[0], lengths[1]]
    hashes = blake3.blake3(seed).digest(length=32 * len(all_lengths))
    ob = Outboard.from_lengths(oid.hex(), all_lengths, hashes)
    encoded = ob.encode()
    assert Outboard.decode(encoded, oid.hex()) == ob
    assert Outboard.decode(encoded).encode() == encoded
