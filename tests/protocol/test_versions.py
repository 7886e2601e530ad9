"""Version vectors: the algebra's laws, canonical bytes, and every malformed input."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dizzy.protocol.errors import LocalProtocolError, RemoteProtocolError
from dizzy.protocol.versions import MAX_COUNTER, MAX_VECTOR_DEVICES, VersionVector

A, B, C = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32

vectors = st.dictionaries(
    st.sampled_from([A, B, C]), st.integers(min_value=1, max_value=5), max_size=3
).map(VersionVector)

OPPOSITE = {"equal": "equal", "newer": "older", "older": "newer", "concurrent": "concurrent"}


def enc(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def test_bump_and_compare() -> None:
    empty = VersionVector()
    one = empty.bump(A)
    assert one == VersionVector({A: 1})
    assert one.compare(empty) == "newer"
    assert empty.compare(one) == "older"
    assert one.bump(A).compare(one) == "newer"
    assert one.bump(A).compare(one.bump(B)) == "concurrent"
    assert one.compare(VersionVector({A: 1})) == "equal"
    assert dict(one.bump(B).bump(B)) == {A: 1, B: 2}
    assert len(one) == 1 and one[A] == 1 and list(one) == [A]
    assert empty.bump(A) is not empty and not empty  # immutable: bump makes a new one


def test_merge_is_pointwise_max() -> None:
    left = VersionVector({A: 3, B: 1})
    right = VersionVector({B: 4, C: 2})
    assert left.merge(right) == VersionVector({A: 3, B: 4, C: 2})


@given(vectors, vectors)
def test_compare_is_antisymmetric(left: VersionVector, right: VersionVector) -> None:
    assert right.compare(left) == OPPOSITE[left.compare(right)]
    assert (left.compare(right) == "equal") == (left == right)


@given(vectors, vectors)
def test_merge_dominates_both(left: VersionVector, right: VersionVector) -> None:
    merged = left.merge(right)
    assert merged.compare(left) in ("newer", "equal")
    assert merged.compare(right) in ("newer", "equal")
    assert merged == right.merge(left)
    assert merged.bump(A).compare(left) == "newer"


@given(vectors, vectors, vectors)
def test_merge_is_associative(a: VersionVector, b: VersionVector, c: VersionVector) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(vectors)
def test_round_trip_and_canonical(vector: VersionVector) -> None:
    data = vector.encode()
    assert VersionVector.decode(data) == vector
    assert hash(VersionVector.decode(data)) == hash(vector)
    assert VersionVector.from_wire(msgpack.unpackb(data)) == vector


def test_golden_bytes() -> None:
    assert VersionVector({B: 2, A: 1}).encode() == bytes.fromhex(
        "92" + "92c420" + A.hex() + "01" + "92c420" + B.hex() + "02"
    )


@pytest.mark.parametrize(
    "counters",
    [{b"short": 1}, {A: 0}, {A: -1}, {A: MAX_COUNTER + 1}, {A: True}, {A: 1.0}, {"x" * 32: 1}],
)
def test_bad_construction(counters: dict[object, object]) -> None:
    with pytest.raises(LocalProtocolError):
        VersionVector(counters)


@pytest.mark.parametrize(
    "data",
    [
        enc({"a": 1}),
        enc([[A]]),
        enc([[A, 1, 2]]),
        enc([(A, 0)]),
        enc([(A, 1.5)]),
        enc([(A, True)]),
        enc([(b"x" * 31, 1)]),
        enc([("a" * 32, 1)]),
        enc([(B, 1), (A, 1)]),  # unsorted
        enc([(A, 1), (A, 2)]),  # repeated
        enc([(A, 1)]) + b"\x00",  # trailing
        b"\xc1",  # never-used msgpack byte
        b"\x92",  # truncated
        b"\x91\x92\xc4\x20" + A + b"\xcc\x01",  # 1 as uint8: not the canonical spelling
        enc([(bytes([i // 256, i % 256]) + bytes(30), 1) for i in range(MAX_VECTOR_DEVICES + 1)]),
    ],
)
def test_bad_decode(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        VersionVector.decode(data)


@given(st.binary(max_size=200))
def test_decode_fuzz_raises_only_remote_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        VersionVector.decode(data)
