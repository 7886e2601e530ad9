"""Fuzzing what a peer sends about objects: tree manifests, outboards, IDs.

Allowed errors: ``RemoteProtocolError`` (``UnsafePath`` for a bad name) from the
decoders; ``BadObjectId`` / ``BadDeviceId`` from the ID parsers.  Accepted manifests
and outboards are canonical (re-encode to the same bytes) and self-consistent.
"""

from __future__ import annotations

import re
from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from dizzy.protocol.chunking import CHUNK_MIN
from dizzy.protocol.errors import BadDeviceId, BadObjectId, RemoteProtocolError
from dizzy.protocol.ids import DeviceId, parse_object_id
from dizzy.protocol.manifest import TreeEntry, TreeManifest
from dizzy.protocol.outboard import Outboard
from dizzy.protocol.paths import validate_name
from tests.fuzz.strategies import examples, msgpack_values, mutated_bytes_of, packed_values
from tests.fuzz_counter import tick

TREES = [
    TreeManifest([
        TreeEntry("a.txt", "file", 0o644, 5, "ab" * 32),
        TreeEntry("sub", "dir", 0o755, 0, "cd" * 32),
        TreeEntry("link", "link", 0o777, 0, "../elsewhere"),
        TreeEntry("é", "file", 0o600, 1 << 40, "00" * 32),
    ]).encode(),
    TreeManifest([]).encode(),
]
OUTBOARDS = [
    Outboard.from_lengths("ef" * 32, [CHUNK_MIN, CHUNK_MIN + 7, 3], bytes(range(96))).encode(),
    Outboard.from_lengths("01" * 32, [], b"").encode(),
    Outboard.from_lengths("02" * 32, [10], b"\x05" * 32).encode(),
]


def _wire(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


@examples(5000)
@given(data=st.one_of(mutated_bytes_of(TREES), packed_values([_wire(t) for t in TREES]),
                      st.binary(max_size=150), msgpack_values.map(msgpack.packb)))
def test_tree_manifest_decode(data: bytes) -> None:
    tick()
    try:
        tree = TreeManifest.decode(data)
    except RemoteProtocolError:
        return
    assert tree.encode() == data
    for entry in tree:
        assert validate_name(entry.name) == entry.name


@examples(5000)
@given(data=st.one_of(mutated_bytes_of(OUTBOARDS), packed_values([_wire(o) for o in OUTBOARDS]),
                      st.binary(max_size=150)))
def test_outboard_decode(data: bytes) -> None:
    tick()
    try:
        outboard = Outboard.decode(data)
    except RemoteProtocolError:
        return
    assert outboard.encode() == data
    assert sum(c.length for c in outboard.chunks) == outboard.size
    for offset in {0, outboard.size // 2, outboard.size - 1}:
        if 0 <= offset < outboard.size:
            assert outboard.chunks[outboard.chunk_index_at(offset)].offset <= offset


ID_TEXT = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="0123456789abcdefABCDEF \t\n-", min_size=60, max_size=70),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ234567- 01", min_size=50, max_size=70),
)
SOME_DEVICE = str(DeviceId(bytes(range(32))))


@examples(5000)
@given(text=st.one_of(ID_TEXT, st.integers(0, len(SOME_DEVICE) - 1).flatmap(
    lambda i: st.characters().map(lambda c: SOME_DEVICE[:i] + c + SOME_DEVICE[i + 1 :]))))
def test_id_parsers(text: str) -> None:
    tick()
    try:
        object_id = parse_object_id(text)
    except BadObjectId:
        pass
    else:
        assert len(object_id) == 64 and parse_object_id(object_id) == object_id
    try:
        device = DeviceId.parse(text)
    except BadDeviceId:
        return
    assert DeviceId.parse(str(device)) == device
    # One character changed in a real ID never parses to that same device: the check
    # characters catch it (separators and case do not count as changes).
    if device.digest == bytes(range(32)):
        assert _compact(text) == _compact(SOME_DEVICE), text


def _compact(text: str) -> str:
    return re.sub(r"[\s-]", "", text).upper()
