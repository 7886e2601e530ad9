"""Tree manifests: canonical bytes, stable IDs, and every malformed input."""

from __future__ import annotations

import blake3
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dizzy.protocol.errors import LocalProtocolError, RemoteProtocolError, UnsafePath
from dizzy.protocol.manifest import (
    MAX_TREE_BYTES,
    MAX_TREE_ENTRIES,
    TREE_MAGIC,
    TreeEntry,
    TreeManifest,
)

A = blake3.blake3(b"a").hexdigest()
B = blake3.blake3(b"b").hexdigest()


def sample() -> TreeManifest:
    return TreeManifest(
        [
            TreeEntry("zeta.txt", "file", 0o644, 1, A),
            TreeEntry("sub", "dir", 0o755, 0, B),
            TreeEntry("link", "link", 0o777, 8, "zeta.txt"),
            TreeEntry("Émile", "file", 0o600, 1, B),
        ]
    )


def enc(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def test_golden_bytes_and_id() -> None:
    manifest = TreeManifest(
        [TreeEntry("b", "link", 0o777, 1, "a"), TreeEntry("a", "file", 0o644, 1, A)]
    )
    assert manifest.encode() == bytes.fromhex(
        "92"  # [magic, entries]
        "ac" + TREE_MAGIC.encode().hex()
        + "92"  # two entries, sorted by name
        + "95" + "a161" + "a466696c65" + "cd01a4" + "01" + "c420" + A
        + "95" + "a162" + "a46c696e6b" + "cd01ff" + "01" + "a161"
    )
    assert manifest.tree_id == blake3.blake3(manifest.encode()).hexdigest()
    assert manifest.tree_id == "31c8e6382cecc268a0d845433cab5724c8e37f42179ac282e6dd2f78fe265c7e"


def test_order_of_construction_does_not_matter() -> None:
    forward = sample()
    backward = TreeManifest(reversed(sample().entries))
    assert forward == backward
    assert forward.encode() == backward.encode()
    assert forward.tree_id == backward.tree_id
    assert hash(forward) == hash(backward)


def test_sorted_by_utf8_bytes_not_code_points() -> None:
    # U+FF5E sorts before U+1F600 as code points, after it as UTF-16, and before it
    # as UTF-8 bytes (EF BD 9E < F0 9F 98 80); "Z" < "a" < "é" in every order
    names = ["\U0001f600", "\uff5e", "é", "a", "Z"]
    manifest = TreeManifest(TreeEntry(n, "file", 0o644, 0, A) for n in names)
    assert [e.name for e in manifest] == ["Z", "a", "é", "\uff5e", "\U0001f600"]
    assert [e.name for e in manifest] == sorted(names, key=lambda n: n.encode())


def test_round_trip() -> None:
    manifest = sample()
    data = manifest.encode()
    again = TreeManifest.decode(data)
    assert again == manifest
    assert again.tree_id == manifest.tree_id
    assert TreeManifest.decode(bytearray(data)) == manifest
    assert len(again) == 4


def test_empty_tree() -> None:
    empty = TreeManifest([])
    assert empty.encode() == enc([TREE_MAGIC, []])
    assert TreeManifest.decode(empty.encode()) == empty


def test_every_truncation_is_refused() -> None:
    data = sample().encode()
    for cut in range(len(data)):
        with pytest.raises(RemoteProtocolError):
            TreeManifest.decode(data[:cut])


@pytest.mark.parametrize("tail", [b"\x00", b"\x90", b"junk"])
def test_trailing_bytes_are_refused(tail: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="trailing"):
        TreeManifest.decode(sample().encode() + tail)


RAW_A = bytes.fromhex(A)


def entry(name: object = "f", kind: object = "file", mode: object = 0o644,
          size: object = 0, ref: object = RAW_A) -> list[object]:
    return [name, kind, mode, size, ref]


@pytest.mark.parametrize(
    "value",
    [
        None,
        [TREE_MAGIC],
        [TREE_MAGIC, [], 0],
        ["dizzy/tree/2", []],
        [TREE_MAGIC.encode(), []],
        [TREE_MAGIC, {}],
        [TREE_MAGIC, [entry()[:4]]],
        [TREE_MAGIC, [[*entry(), 0]]],
        [TREE_MAGIC, [{"name": "f"}]],
        [TREE_MAGIC, [entry(kind="fifo")]],
        [TREE_MAGIC, [entry(kind=b"file")]],
        [TREE_MAGIC, [entry(mode=0o10000)]],
        [TREE_MAGIC, [entry(mode=-1)]],
        [TREE_MAGIC, [entry(mode=True)]],
        [TREE_MAGIC, [entry(mode="644")]],
        [TREE_MAGIC, [entry(size=-1)]],
        [TREE_MAGIC, [entry(size=2**64 - 1)]],
        [TREE_MAGIC, [entry(size=1.0)]],
        [TREE_MAGIC, [entry(ref=A)]],  # hex string where a hash belongs
        [TREE_MAGIC, [entry(ref=RAW_A[:31])]],
        [TREE_MAGIC, [entry(kind="dir", ref=None)]],
        [TREE_MAGIC, [entry(kind="link", ref=RAW_A)]],
        [TREE_MAGIC, [entry(kind="link", ref="")]],
        [TREE_MAGIC, [entry(kind="link", ref="a\x00b")]],
        [TREE_MAGIC, [entry(kind="link", ref="x" * 4096)]],
        [TREE_MAGIC, [entry(name="b"), entry(name="a")]],  # unsorted
        [TREE_MAGIC, [entry(name="a"), entry(name="a")]],  # duplicate
        [TREE_MAGIC, [entry(name="é"), entry(name="z")]],  # code-point order, not bytes
    ],
    ids=lambda v: repr(v)[:60],
)
def test_malformed_values_are_refused(value: object) -> None:
    with pytest.raises(RemoteProtocolError):
        TreeManifest.decode(enc(value))


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "a\x00", "x" * 256, b"f", 7])
def test_unsafe_names_are_refused_as_unsafe_path(name: object) -> None:
    with pytest.raises(UnsafePath):
        TreeManifest.decode(enc([TREE_MAGIC, [entry(name=name)]]))


def test_non_canonical_encoding_is_refused() -> None:
    good = enc([TREE_MAGIC, [entry(mode=5)]])
    TreeManifest.decode(good)
    wide = good.replace(b"\x05\x00\xc4", b"\xcd\x00\x05\x00\xc4")  # mode as uint16
    assert msgpack.unpackb(wide) == msgpack.unpackb(good)
    with pytest.raises(RemoteProtocolError, match="canonical"):
        TreeManifest.decode(wide)


def test_entry_count_bound() -> None:
    too_many = enc([TREE_MAGIC, [entry(name=f"{i:06d}") for i in range(MAX_TREE_ENTRIES + 1)]])
    with pytest.raises(RemoteProtocolError, match="entries"):
        TreeManifest.decode(too_many)
    with pytest.raises(LocalProtocolError):
        TreeManifest(
            TreeEntry(f"{i:06d}", "file", 0, 0, A) for i in range(MAX_TREE_ENTRIES + 1)
        )


def test_byte_size_bound() -> None:
    with pytest.raises(RemoteProtocolError, match="larger"):
        TreeManifest.decode(b"\x00" * (MAX_TREE_BYTES + 1))
    big = TreeManifest(
        TreeEntry(f"{i:05d}" + "x" * 200, "link", 0o777, 0, "t" * 4000) for i in range(1100)
    )
    with pytest.raises(LocalProtocolError, match="larger"):
        big.encode()


@pytest.mark.parametrize(
    "args",
    [
        ("", "file", 0, 0, A),
        ("a/b", "file", 0, 0, A),
        ("f", "sock", 0, 0, A),
        ("f", "file", 0o10000, 0, A),
        ("f", "file", 0, -1, A),
        ("f", "file", 0, 0, A.upper()),
        ("f", "file", 0, 0, "abc"),
        ("f", "dir", 0, 0, "../x"),
        ("f", "link", 0, 0, ""),
        ("f", "link", 0, 0, "\udcff"),
    ],
)
def test_entry_construction_validates(args: tuple[object, ...]) -> None:
    with pytest.raises(LocalProtocolError):
        TreeEntry(*args)  # type: ignore[arg-type]


def test_duplicate_names_refused_locally() -> None:
    with pytest.raises(LocalProtocolError, match="duplicate"):
        TreeManifest([TreeEntry("a", "file", 0, 0, A), TreeEntry("a", "dir", 0, 0, B)])


names = st.text(min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..") and not any(c in s for c in "/\\\x00")
    and all(not 0xD800 <= ord(c) <= 0xDFFF for c in s)
)
entries = st.builds(
    TreeEntry,
    name=names,
    kind=st.sampled_from(["file", "dir"]),
    mode=st.integers(0, 0o7777),
    size=st.integers(0, 2**63 - 1),
    ref=st.binary(min_size=32, max_size=32).map(bytes.hex),
) | st.builds(
    TreeEntry,
    name=names,
    kind=st.just("link"),
    mode=st.integers(0, 0o7777),
    size=st.integers(0, 100),
    ref=names,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(entries, max_size=12, unique_by=lambda e: e.name), st.randoms())
def test_round_trip_property(items: list[TreeEntry], rnd: object) -> None:
    manifest = TreeManifest(items)
    shuffled = list(items)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert TreeManifest(shuffled).encode() == manifest.encode()
    decoded = TreeManifest.decode(manifest.encode())
    assert decoded == manifest
    assert decoded.tree_id == manifest.tree_id
