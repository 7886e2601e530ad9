"""Fuzzing change-log decoding and verification (protocol/changelog.py, versions.py).

Allowed errors: ``RemoteProtocolError`` and its subclasses ``UnsafePath``,
``ForgedSignature``, ``BrokenChain``, ``Rollback``, ``Fork``.  The properties that matter
for security: a replica accepts a batch only if it is the genuine, signed continuation
of what it holds, and a refused batch leaves the replica exactly as it was.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from dizzy.protocol.changelog import (
    ZERO_HASH,
    LogEntry,
    LogReplica,
    LogWriter,
    SignedHead,
)
from dizzy.protocol.errors import RemoteProtocolError
from dizzy.protocol.framing import pack_value
from dizzy.protocol.ids import DeviceId
from dizzy.protocol.versions import VersionVector
from tests.fuzz.strategies import (
    examples,
    msgpack_values,
    mutated_bytes_of,
    packed_values,
    seeds,
)
from tests.fuzz_counter import tick

# Keys are made once: Ed25519 key generation per example would dominate the run.
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
DEV = DeviceId.from_public_key(PUB).digest
WRONG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
WRONG_PUB = WRONG_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
WRONG_DEV = DeviceId.from_public_key(WRONG_PUB).digest
FOLDER = "photos"
T0 = 1_700_000_000_000_000_000


def _write(w: LogWriter, i: int, variant: str = "") -> LogEntry:
    kind = i % 4
    v = VersionVector({DEV: i, WRONG_DEV: 1} if i % 2 else {DEV: i})
    if kind == 0:
        return w.append(f"dir/f{i}{variant}.txt", "file", False, f"{i:02x}" * 32, i * 1000,
                        T0 + i, 0o644, None, v)
    if kind == 1:
        return w.append(f"dir{i}{variant}", "dir", False, None, 0, T0 + i, 0o755, None, v)
    if kind == 2:
        return w.append(f"ln{i}{variant}", "link", False, None, 0, T0 + i, 0o777, "../x", v)
    return w.append(f"dir/f{i - 3}{variant}.txt", "file", True, None, 0, T0 + i, 0o644, None, v)


def _log(n: int, fork_at: int | None = None) -> tuple[list[LogEntry], list[SignedHead]]:
    """A genuine log of ``n`` entries and its signed heads at every seq (0..n)."""
    w = LogWriter(FOLDER, DEV, KEY)
    entries: list[LogEntry] = []
    heads = [w.head()]
    for i in range(1, n + 1):
        entries.append(_write(w, i, "-fork" if fork_at is not None and i >= fork_at else ""))
        heads.append(w.head())
    return entries, heads


N = 8
ENTRIES, HEADS = _log(N)
#: the same device signed a second history that departs from the first at seq 5
FORK_ENTRIES, FORK_HEADS = _log(N, fork_at=5)
ENCODED = [e.encode() for e in ENTRIES]
ENCODED_HEADS = [h.encode() for h in HEADS]


def _wire(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


# ------------------------------------------------------------------ decoders


@examples(6000)
@given(data=st.one_of(mutated_bytes_of(ENCODED), packed_values([_wire(e) for e in ENCODED]),
                      st.binary(max_size=200), msgpack_values.map(pack_value)))
def test_entry_decode_accepts_only_valid_entries(data: bytes) -> None:
    tick()
    try:
        entry = LogEntry.decode(data)
    except RemoteProtocolError:
        return
    assert entry.encode() == data  # canonical: one spelling per entry


@examples(5000)
@given(data=st.one_of(mutated_bytes_of(ENCODED_HEADS),
                      packed_values([_wire(h) for h in ENCODED_HEADS]),
                      st.binary(max_size=120)))
def test_head_decode_and_verify_accepts_only_genuine_heads(data: bytes) -> None:
    tick()
    try:
        head = SignedHead.decode(data)
        head.verify(PUB)
    except RemoteProtocolError:
        return
    # A head that verifies was signed by KEY: it is one of the heads we signed.
    assert data in ENCODED_HEADS


VECTORS = [VersionVector({DEV: 3, WRONG_DEV: 1}).encode(), VersionVector({DEV: 1}).encode(),
           VersionVector().encode()]


@examples(4000)
@given(data=st.one_of(mutated_bytes_of(VECTORS), packed_values([_wire(v) for v in VECTORS]),
                      st.binary(max_size=100)))
def test_version_vector_decode(data: bytes) -> None:
    tick()
    try:
        vector = VersionVector.decode(data)
    except RemoteProtocolError:
        return
    assert vector.encode() == data


# ------------------------------------------------------------------ replication


def _forged_head(rng: random.Random, seq: int, head_hash: bytes) -> SignedHead:
    how = rng.randrange(3)
    message = pack_value(["dizzy/head/1", FOLDER, DEV, seq, head_hash])
    if how == 0:  # re-signed by the wrong key
        signature = WRONG_KEY.sign(message)
    elif how == 1:  # random signature
        signature = rng.randbytes(64)
    else:  # a genuine signature of another head
        signature = rng.choice(HEADS[1:]).signature
    return SignedHead(FOLDER, DEV, seq, head_hash, signature)


def _tampered_entry(rng: random.Random, entry: LogEntry) -> LogEntry:
    changes: dict[str, Any] = rng.choice([
        {"path": entry.path + ".evil"}, {"mtime_ns": entry.mtime_ns + 1},
        {"mode": entry.mode ^ 0o100}, {"prev": bytes(32) if entry.seq > 1 else b"\x01" * 32},
        {"version": VersionVector({WRONG_DEV: 9})},
    ])
    if "prev" in changes and entry.seq == 1:
        changes = {"path": entry.path + ".evil"}
    return replace(entry, **changes)


def _batch(rng: random.Random, known: int) -> tuple[list[LogEntry], SignedHead, str]:
    """A batch offered to a replica holding ``known`` entries, and how it was made."""
    end = rng.randint(0, N)
    start = rng.randint(0, end)  # entries start+1..end
    entries = list(ENTRIES[start:end])
    head = HEADS[end]
    ops: list[str] = []
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        op = rng.choice(["reorder", "drop", "replay", "tamper", "forge-head", "fork",
                         "stale-head", "foreign-entry", "other-head"])
        ops.append(op)
        if op == "reorder" and len(entries) > 1:
            i, j = rng.sample(range(len(entries)), 2)
            entries[i], entries[j] = entries[j], entries[i]
        elif op == "drop" and entries:
            del entries[rng.randrange(len(entries))]
        elif op == "replay":
            entries.insert(rng.randint(0, len(entries)), rng.choice(ENTRIES))
        elif op == "tamper" and entries:
            i = rng.randrange(len(entries))
            entries[i] = _tampered_entry(rng, entries[i])
        elif op == "forge-head":
            head = _forged_head(rng, head.seq, head.head_hash)
        elif op == "fork":
            entries = list(FORK_ENTRIES[start:end])
            head = FORK_HEADS[end]
        elif op == "stale-head":
            head = HEADS[rng.randint(0, N)]
        elif op == "foreign-entry" and entries:
            w = LogWriter("other", DEV, KEY)
            entries[rng.randrange(len(entries))] = _write(w, 1)
        elif op == "other-head":
            head = rng.choice(FORK_HEADS)
    return entries, head, "+".join(ops) or "genuine"


@examples(5000)
@given(seed=seeds, known=st.integers(0, N), rounds=st.integers(1, 3))
def test_replica_accepts_only_the_signed_continuation(seed: int, known: int, rounds: int) -> None:
    tick()
    rng = random.Random(seed)
    replica = LogReplica(FOLDER, DEV, PUB, known_seq=known,
                         known_hash=HEADS[known].head_hash,
                         head=HEADS[known] if known else None)
    held = list(ENTRIES[:known])
    assert held == FORK_ENTRIES[:known] or known >= 5
    for _ in range(rounds):
        entries, head, how = _batch(rng, replica.known_seq)
        before = (replica.known_seq, replica.known_hash, replica.head)
        k = replica.known_seq
        # The device signed two histories; either continues what we hold if it agrees
        # with it so far (the replica cannot know about the other one yet).
        chains = [(e, h) for e, h in ((ENTRIES, HEADS), (FORK_ENTRIES, FORK_HEADS))
                  if e[:k] == held]
        genuine_continuation = any(
            head == h[head.seq] and head.seq > k and entries == e[k : head.seq]
            for e, h in chains
        )
        already_held = not entries and any(head == h[k] for _, h in chains)
        try:
            new = replica.accept(entries, head)
        except RemoteProtocolError as exc:
            assert (replica.known_seq, replica.known_hash, replica.head) == before, how
            assert not genuine_continuation and not already_held, (how, exc)
            continue
        assert genuine_continuation or already_held, (how, entries, head)
        held.extend(new)
        assert any(held == e[: replica.known_seq] for e, _ in chains)
        assert replica.known_hash == (held[-1].entry_hash if held else ZERO_HASH)
