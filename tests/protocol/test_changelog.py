"""Signed folder logs: golden bytes, strict decoding, and replication under attack."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from dizzy.protocol.changelog import (
    LOG_MAGIC,
    MAX_BATCH_ENTRIES,
    MAX_ENTRY_BYTES,
    ZERO_HASH,
    LogEntry,
    LogReplica,
    LogWriter,
    SignedHead,
    sign_head,
)
from dizzy.protocol.errors import (
    BrokenChain,
    ForgedSignature,
    Fork,
    LocalProtocolError,
    RemoteProtocolError,
    Rollback,
    UnsafePath,
)
from dizzy.protocol.ids import DeviceId
from dizzy.protocol.versions import VersionVector

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
DEV = DeviceId.from_public_key(PUB).digest
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
OTHER_PUB = OTHER_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
OTHER_DEV = DeviceId.from_public_key(OTHER_PUB).digest
OID = "ab" * 32
T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
V1 = VersionVector({DEV: 1})


def enc(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def writer(folder: str = "photos") -> LogWriter:
    return LogWriter(folder, DEV, KEY)


def append_file(w: LogWriter, path: str, n: int = 1) -> LogEntry:
    return w.append(path, "file", False, OID, n, T0 + n, 0o644, None, VersionVector({DEV: n}))


def replica(folder: str = "photos") -> LogReplica:
    return LogReplica(folder, DEV, PUB)


def log_of(n: int) -> tuple[LogWriter, list[LogEntry]]:
    w = writer()
    return w, [append_file(w, f"dir/f{i}.txt", i) for i in range(1, n + 1)]


def head_at(entries: list[LogEntry], seq: int) -> SignedHead:
    head_hash = entries[seq - 1].entry_hash if seq else ZERO_HASH
    return sign_head("photos", DEV, seq, head_hash, KEY)


# -- golden bytes -----------------------------------------------------------------


def test_golden_entry_and_head() -> None:
    w = writer()
    entry = w.append("a/b.txt", "file", False, OID, 5, T0, 0o644, None, V1)
    assert DEV.hex() == "98ba85304ac639f0f55daab01ad6d592be44a125d9b3b65e1efca5b96960baec"
    assert entry.encode() == bytes.fromhex(
        "9e" + "ab" + LOG_MAGIC.encode().hex()
        + "a6" + b"photos".hex()
        + "c420" + DEV.hex()
        + "01"  # seq
        + "c420" + "00" * 32  # prev of the first entry
        + "a7" + b"a/b.txt".hex()
        + "a4" + b"file".hex()
        + "c2"  # deleted: false
        + "c420" + OID
        + "05"  # size
        + "cf" + T0.to_bytes(8, "big").hex()
        + "cd01a4"  # mode 0o644
        + "c0"  # no link target
        + "91" + "92c420" + DEV.hex() + "01"
    )
    assert entry.entry_hash.hex() == (
        "10e88944626907387f1d6884ce1b06c7321bf93309bc9e9a17bcd06b6868068a"
    )
    head = w.head()
    assert head.encode() == bytes.fromhex(
        "96" + "ac" + b"dizzy/head/1".hex() + "a6" + b"photos".hex() + "c420" + DEV.hex()
        + "01" + "c420" + entry.entry_hash.hex()
        + "c440" + "998d20b75788ef2d5544846b1338994676e25b931d655219b75e21918cce07d2"
        "a854f79aecfe4afd4c993ed187758126343478ed29f4aa3880f3e19f87429d06"
    )
    # the signed bytes: the head without its signature, a 5-array under its own label
    assert head.signed_message() == enc(["dizzy/head/1", "photos", DEV, 1, entry.entry_hash])
    head.verify(PUB)


def test_round_trips() -> None:
    w = writer()
    entries = [
        w.append("a.txt", "file", False, OID, 10, T0, 0o600, None, V1),
        w.append("d", "dir", False, None, 0, -5, 0o755, None, V1.bump(DEV)),
        w.append("d/l", "link", False, None, 0, 0, 0o777, "../a.txt", V1),
        w.append("a.txt", "file", True, None, 0, T0, 0o600, None, V1.bump(OTHER_DEV)),
        w.append("Émile/😀", "file", False, "00" * 32, 2**63 - 1, 2**63 - 1, 0o7777, None, V1),
    ]
    for entry in entries:
        again = LogEntry.decode(entry.encode())
        assert again == entry
        assert again.entry_hash == entry.entry_hash
        assert LogEntry.decode(bytearray(entry.encode())) == entry
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert [e.prev for e in entries[1:]] == [e.entry_hash for e in entries[:-1]]
    head = w.head()
    assert SignedHead.decode(head.encode()) == head


def test_writer_resumes_from_stored_state() -> None:
    w, entries = log_of(3)
    resumed = LogWriter("photos", DEV, KEY, last_seq=3, last_hash=entries[-1].entry_hash)
    fourth = append_file(resumed, "x", 4)
    assert fourth == append_file(w, "x", 4)
    assert resumed.head() == w.head()


def test_writer_refuses_inconsistent_setup() -> None:
    with pytest.raises(LocalProtocolError):
        LogWriter("photos", OTHER_DEV, KEY)  # a key that is not the device's
    with pytest.raises(LocalProtocolError):
        LogWriter("photos", DEV, KEY, last_seq=0, last_hash=b"\x01" * 32)
    with pytest.raises(LocalProtocolError):
        LogWriter("../photos", DEV, KEY)
    w = writer()
    with pytest.raises(LocalProtocolError):  # a live file names its content
        w.append("a", "file", False, None, 0, 0, 0o644, None, V1)
    with pytest.raises(UnsafePath):
        w.append("../a", "file", False, OID, 0, 0, 0o644, None, V1)
    assert w.last_seq == 0  # a refused append does not move the log
    with pytest.raises(LocalProtocolError):
        sign_head("photos", OTHER_DEV, 0, ZERO_HASH, KEY)


# -- strict decoding ---------------------------------------------------------------


def good_fields() -> list[Any]:
    return [LOG_MAGIC, "photos", DEV, 1, ZERO_HASH, "a/b.txt", "file", False, bytes(32), 5,
            T0, 0o644, None, [[DEV, 1]]]


def with_field(index: int, value: object) -> bytes:
    fields = good_fields()
    fields[index] = value
    return enc(fields)


def test_good_fields_decode() -> None:
    assert LogEntry.decode(enc(good_fields())).path == "a/b.txt"


HOSTILE_PATHS = ["../x", "a/../../x", "/abs", "/", "a\0b", "a//b", "", "a/", ".", "a/./b",
                 "a\\b", "x" * 256, "d/" + "y" * 300, "a/" * 2048 + "a"]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_paths_rejected(path: str) -> None:
    with pytest.raises(UnsafePath):
        LogEntry.decode(with_field(5, path))


@pytest.mark.parametrize(
    "data",
    [
        with_field(0, "dizzy/log/2"),
        with_field(1, "a/b"),  # folder: one name
        with_field(1, ""),
        with_field(1, 7),
        with_field(2, b"x" * 31),
        with_field(2, "d" * 32),
        with_field(3, 0),
        with_field(3, -1),
        with_field(3, 2**63),
        with_field(3, True),
        with_field(3, 1.0),
        with_field(4, b"\x01" * 32),  # seq 1 must start from zero
        with_field(4, bytes(31)),
        with_field(5, 5),
        with_field(6, "socket"),
        with_field(6, ["file"]),
        with_field(7, 0),
        with_field(7, None),
        with_field(8, None),  # a live file without content
        with_field(8, "ab" * 32),  # hex text instead of 32 bytes
        with_field(8, bytes(33)),
        with_field(9, -1),
        with_field(9, 2**63),
        with_field(10, 2**63),
        with_field(10, 2**64 - 1),
        with_field(10, 1.5),
        with_field(11, 0o10000),
        with_field(11, -1),
        with_field(12, "target"),  # a file has no link target
        with_field(13, []),  # a change with no version
        with_field(13, [[DEV, 0]]),
        with_field(13, {"v": 1}),
        enc(good_fields()[:-1]),
        enc([*good_fields(), None]),
        enc(dict(enumerate(good_fields()))),
        enc(good_fields()) + b"\x00",  # trailing bytes
        enc(good_fields())[:-1],  # truncated
        enc(good_fields()).replace(b"\x05\xcf", b"\xcc\x05\xcf"),  # size spelt long
        enc(good_fields()).replace(b"\xa7a/b.txt", b"\xd9\x07a/b.txt"),  # str8 for fixstr
        enc(good_fields()).replace(b"\xa7a/b.txt", b"\xa7a/b.tx\x80"),  # not UTF-8
        b"\xc1",
        b"\x9e" + b"\xc0" * (MAX_ENTRY_BYTES + 1),  # too big to even unpack
    ],
)
def test_malformed_entries_rejected(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        LogEntry.decode(data)


@pytest.mark.parametrize(
    "changes",
    [
        {6: "dir"},  # a directory with an object ID
        {6: "link", 8: None, 9: 0},  # a link without a target
        {6: "link", 8: None, 9: 0, 12: ""},
        {6: "link", 8: None, 9: 0, 12: "a\0b"},
        {6: "link", 8: None, 9: 0, 12: "x" * 4096},
        {7: True},  # a deletion with an object ID
        {7: True, 8: None},  # a deletion with a size
        {6: "dir", 8: None},  # a directory with a size
    ],
)
def test_inconsistent_entries_rejected(changes: dict[int, object]) -> None:
    fields = good_fields()
    for index, value in changes.items():
        fields[index] = value
    with pytest.raises(RemoteProtocolError):
        LogEntry.decode(enc(fields))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        enc(["dizzy/head/1", "photos", DEV, 1, bytes(32)]),  # no signature
        enc(["dizzy/head/1", "photos", DEV, 0, b"\x01" * 32, bytes(64)]),
        enc(["dizzy/head/1", "photos", DEV, -1, bytes(32), bytes(64)]),
        enc(["dizzy/head/1", "photos", DEV, 1, bytes(32), bytes(63)]),
        enc(["dizzy/log/1", "photos", DEV, 1, bytes(32), bytes(64)]),
        enc(["dizzy/head/1", "photos", DEV, 1, bytes(32), bytes(64)]) + b"\x90",
        enc(["dizzy/head/1", "p" * 2000, DEV, 1, bytes(32), bytes(64)]),
    ],
)
def test_malformed_heads_rejected(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        SignedHead.decode(data)


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    spots = st.integers(min_value=0, max_value=len(data) - 1)
    return st.one_of(
        st.tuples(spots, st.integers(0, 255)).map(lambda p: data[: p[0]] + bytes([p[1]])
                                                   + data[p[0] + 1 :]),
        spots.map(lambda i: data[:i]),
        st.tuples(spots, st.binary(min_size=1, max_size=4)).map(
            lambda p: data[: p[0]] + p[1] + data[p[0] :]
        ),
        st.binary(max_size=300),
    )


SAMPLE = append_file(writer(), "a/b.txt", 3).encode()


@given(_mutations(SAMPLE))
def test_entry_decode_fuzz_raises_only_remote_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        entry = LogEntry.decode(data)
        assert entry.encode() == data


@given(_mutations(writer().head().encode()))
def test_head_decode_fuzz_raises_only_remote_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        assert SignedHead.decode(data).encode() == data


# -- replication ------------------------------------------------------------------


def test_replication_in_several_batches() -> None:
    _, entries = log_of(10)
    r = replica()
    assert r.accept(entries[:3], head_at(entries, 3)) == entries[:3]
    assert r.accept(entries[3:4], head_at(entries, 4)) == entries[3:4]
    assert r.accept(entries[4:], head_at(entries, 10)) == entries[4:]
    assert (r.known_seq, r.known_hash) == (10, entries[-1].entry_hash)
    assert r.head == head_at(entries, 10)
    # a head we already hold, alone: nothing new, nothing wrong
    assert r.accept([], head_at(entries, 10)) == []
    resumed = LogReplica("photos", DEV, PUB, known_seq=10, known_hash=entries[-1].entry_hash)
    assert resumed.accept([], head_at(entries, 10)) == []


def test_empty_log_head() -> None:
    r = replica()
    assert r.accept([], writer().head()) == []
    assert r.known_seq == 0


def test_forged_signature() -> None:
    _, entries = log_of(2)
    good = head_at(entries, 2)
    flipped = bytes([good.signature[0] ^ 1]) + good.signature[1:]
    r = replica()
    with pytest.raises(ForgedSignature):
        r.accept(entries, replace(good, signature=flipped))
    # signed by another paired device's key, but naming this device
    other_sig = OTHER_KEY.sign(good.signed_message())
    with pytest.raises(ForgedSignature):
        r.accept(entries, replace(good, signature=other_sig))
    # a genuine signature by the other device does not speak for this one
    with pytest.raises(ForgedSignature):
        good.verify(OTHER_PUB)
    # the signature covers every field
    with pytest.raises(ForgedSignature):
        r.accept(entries[:1], replace(good, seq=1, head_hash=entries[0].entry_hash))
    assert r.known_seq == 0


def test_replayed_older_head_is_a_rollback() -> None:
    _, entries = log_of(5)
    r = replica()
    r.accept(entries, head_at(entries, 5))
    with pytest.raises(Rollback) as info:
        r.accept([], head_at(entries, 3))
    assert (info.value.known_seq, info.value.offered_seq) == (5, 3)
    with pytest.raises(Rollback):
        r.accept(entries[:3], head_at(entries, 3))
    assert r.known_seq == 5


def test_fork_same_seq_other_hash() -> None:
    _, entries = log_of(3)
    fork_writer = LogWriter("photos", DEV, KEY, last_seq=2, last_hash=entries[1].entry_hash)
    other_third = fork_writer.append("evil", "dir", False, None, 0, 0, 0o755, None, V1)
    assert other_third.seq == 3 and other_third != entries[2]
    r = replica()
    r.accept(entries, head_at(entries, 3))
    with pytest.raises(Fork):
        r.accept([], fork_writer.head())
    # the forked branch grows past us: its entries chain and are signed, but not from ours
    fourth = append_file(fork_writer, "more", 4)
    with pytest.raises(Fork):
        r.accept([fourth], fork_writer.head())
    assert (r.known_seq, r.known_hash) == (3, entries[2].entry_hash)


def test_broken_prev() -> None:
    _, entries = log_of(3)
    forged_second = replace(entries[1], prev=b"\x07" * 32)
    third = replace(entries[2], prev=forged_second.entry_hash)
    r = replica()
    with pytest.raises(BrokenChain):
        r.accept([entries[0], forged_second, entries[2]], head_at(entries, 3))
    with pytest.raises(BrokenChain):  # chains to the forged entry, but the head does not
        r.accept([entries[0], forged_second, third], head_at(entries, 3))
    assert r.known_seq == 0


@pytest.mark.parametrize(
    "batch",
    [
        lambda e: e[1:],  # a gap: does not start after what we hold
        lambda e: [e[0], e[2]],  # a gap inside
        lambda e: [e[0], e[1], e[1], e[2]],  # a repeat
        lambda e: e[:2],  # stops short of the signed head
        lambda e: [],  # head without its entries
    ],
)
def test_non_contiguous_batches(batch: Any) -> None:
    _, entries = log_of(3)
    r = replica()
    with pytest.raises(BrokenChain):
        r.accept(batch(entries), head_at(entries, 3))


def test_wrong_folder_or_device() -> None:
    _, entries = log_of(2)
    elsewhere = replica("music")
    with pytest.raises(BrokenChain):
        elsewhere.accept(entries, head_at(entries, 2))
    # entries of another folder under a head for this one
    music = LogWriter("music", DEV, KEY)
    music_entries = [append_file(music, "a", 1)]
    with pytest.raises(BrokenChain):
        replica().accept(music_entries, sign_head("photos", DEV, 1,
                                                  music_entries[0].entry_hash, KEY))
    # the other device's log offered as this device's
    other = LogWriter("photos", OTHER_DEV, OTHER_KEY)
    other_entries = [other.append("a", "dir", False, None, 0, 0, 0o755, None, V1)]
    with pytest.raises(BrokenChain):
        replica().accept(other_entries, other.head())
    with pytest.raises(LocalProtocolError):
        LogReplica("photos", OTHER_DEV, PUB)


def test_batch_size_bounded() -> None:
    _, entries = log_of(1)
    too_many = entries * (MAX_BATCH_ENTRIES + 1)
    with pytest.raises(RemoteProtocolError):
        replica().accept(too_many, head_at(entries, 1))


@given(
    st.lists(st.sampled_from(["a", "b/c", "d"]), min_size=1, max_size=25),
    st.data(),
)
def test_random_logs_replicate_in_random_batches(paths: list[str], data: st.DataObject) -> None:
    w = writer()
    entries = [append_file(w, path, i) for i, path in enumerate(paths, start=1)]
    inner_cuts = data.draw(st.sets(st.integers(1, len(entries)))) if len(entries) > 1 else set()
    cuts = sorted(inner_cuts | {len(entries)})
    r = replica()
    received: list[LogEntry] = []
    start = 0
    for cut in cuts:
        # entries and heads travel as bytes
        batch = [LogEntry.decode(e.encode()) for e in entries[start:cut]]
        head = SignedHead.decode(head_at(entries, cut).encode())
        received += r.accept(batch, head)
        start = cut
    assert received == entries
    assert r.head == w.head()
