"""A hostile *paired* device serves forged, replayed, rolled-back and escaping folder logs.

Uses the world of test_hostile_peer.py: the victim V and its friend F are real daemons,
the test process is the paired device H (its real identity and key).  V shares a folder
``docs``; H answers V's ``folder.heads`` / ``folder.log`` / ``obj.small`` requests with
what each test crafts, signed with H's real key where a signature must pass.  V must
refuse every bad log (and say so in its log), write nothing outside its folder, keep
what it had, and go on serving F.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dizzy.daemon.transport import PeerConnection
from dizzy.protocol.changelog import (
    LOG_MAGIC,
    ZERO_HASH,
    LogEntry,
    LogWriter,
    SignedHead,
    sign_head,
)
from dizzy.protocol.framing import pack_value
from dizzy.protocol.ids import DeviceId
from dizzy.protocol.peer_wire import ErrorResponse, Notice, Request, Response
from dizzy.protocol.versions import VersionVector
from tests.multi.fetch_helpers import full_log, wait_until
from tests.multi.test_hostile_peer import (
    TEST_DEADLINE,
    World,
    as_hostile,
    friend_can_get,
    in_thread,
    victim_status_ok,
    world,
)

__all__ = ["world"]  # the module-scoped fixture, shared with test_hostile_peer

pytestmark = pytest.mark.timeout(90)

FOLDER = "docs"
#: V pulls, refuses and logs within this
REFUSE_TIMEOUT = 20.0
T0 = 1_700_000_000_000_000_000


@dataclass
class Docs:
    root: Path
    outside: Path
    key: Ed25519PrivateKey
    device: bytes
    friend_device: bytes


@pytest.fixture(scope="module")
def docs(world: World) -> Iterator[Docs]:
    root = world.tmp / "victim-docs"
    outside = world.tmp / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "keep.txt").write_bytes(b"the victim's own file\n")
    # A symlink the victim's user made, pointing out of the folder.
    os.symlink(outside, root / "out-link")
    proc = world.victim.cli("share", FOLDER, str(root))
    assert proc.returncode == 0, proc.stderr
    yield Docs(root, outside, world.identity.private_key, world.identity.device_id.digest,
               DeviceId.parse(world.friend.device_id()).digest)


def victim_files(docs: Docs) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for path in sorted(docs.root.rglob("*")):
        rel = path.relative_to(docs.root).as_posix()
        if ".dizzy" in rel:
            continue
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes()
    return out


@dataclass
class HostileLog:
    """What H answers: heads, log batches by ``after``, small objects by ID."""

    heads: list[bytes]
    batch: Callable[[int], dict[str, Any]]
    blobs: dict[str, bytes] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    folder: str = FOLDER


async def serve(conn: PeerConnection, log: HostileLog) -> None:
    async for message in conn:
        if not isinstance(message, Request):
            continue
        log.asked.append(message.kind)
        body = message.body
        reply: Response | ErrorResponse
        if message.kind == "folder.list":
            reply = Response(message.id, {"folders": [log.folder]})
        elif message.kind == "folder.heads" and body.get("folder") == log.folder:
            reply = Response(message.id, {"heads": log.heads})
        elif message.kind == "folder.log" and body.get("folder") == log.folder:
            reply = Response(message.id, log.batch(int(body["after"])))
        elif message.kind in ("obj.small", "obj.chunk") and body.get("id") in log.blobs:
            reply = Response(message.id, {"data": log.blobs[body["id"]]})
        elif message.kind == "obj.stat" and body.get("id") in log.blobs:
            reply = Response(message.id, {"have": True, "kind": "blob",
                                          "size": len(log.blobs[body["id"]])})
        else:
            reply = ErrorResponse(message.id, "not-found", "not here")
        await conn.send(reply)


async def offer(world: World, log: HostileLog, until: Callable[[], bool], what: str) -> None:
    """Connect as H, announce a change in ``docs`` and serve ``log`` until ``until()``."""
    async with as_hostile(world) as conn, trio.open_nursery() as nursery:
        nursery.start_soon(serve, conn, log)
        await conn.send(Notice("folder.changed", {"folder": log.folder}))
        await in_thread(wait_until, until, REFUSE_TIMEOUT, what)
        nursery.cancel_scope.cancel()


def refused(world: World, reason: str, since: int) -> Callable[[], bool]:
    def check() -> bool:
        tail = full_log(world.victim)[since:]
        return any("refused the log from" in line and reason in line
                   for line in tail.splitlines())
    return check


def entry_wire(docs: Docs, seq: int, prev: bytes, path: str, data: bytes,
               device: bytes | None = None) -> bytes:
    """A log entry's bytes built by hand, past LogEntry's own validation."""
    device = device or docs.device
    return pack_value([LOG_MAGIC, FOLDER, device, seq, prev, path, "file", False,
                       blake3.blake3(data).digest(), len(data), T0 + seq, 0o644, None,
                       [[device, seq]]])


def batch_of(entries: list[bytes], head: SignedHead) -> Callable[[int], dict[str, Any]]:
    return lambda after: {"entries": entries[after:] or entries[-1:], "head": head.encode()}


def one_file_log(docs: Docs, path: str, data: bytes) -> tuple[list[bytes], SignedHead]:
    wire = entry_wire(docs, 1, ZERO_HASH, path, data)
    return [wire], sign_head(FOLDER, docs.device, 1, blake3.blake3(wire).digest(), docs.key)


async def _assert_untouched(world: World, docs: Docs, before: dict[str, bytes | str]) -> None:
    assert victim_files(docs) == before
    assert list(docs.outside.iterdir()) == []
    await in_thread(victim_status_ok, world)
    await in_thread(friend_can_get, world)


async def test_forged_and_relayed_signatures_are_refused(world: World, docs: Docs) -> None:
    with trio.fail_after(TEST_DEADLINE):
        before = victim_files(docs)
        entries, head = one_file_log(docs, "forged.txt", b"forged\n")
        # 1. H's own log, signed by another key.
        wrong = Ed25519PrivateKey.generate()
        forged = SignedHead(FOLDER, docs.device, 1, head.head_hash,
                            wrong.sign(head.signed_message()))
        mark = len(full_log(world.victim))
        await offer(world, HostileLog([forged.encode()], batch_of(entries, forged),
                                      {blake3.blake3(b"forged\n").hexdigest(): b"forged\n"}),
                    refused(world, "bad signature", mark), "V to refuse a forged head")
        # 2. A log H claims to relay from F, signed by H (F's key does not verify it).
        relayed_wire = entry_wire(docs, 1, ZERO_HASH, "relayed.txt", b"relayed\n",
                                  device=docs.friend_device)
        relayed_head = SignedHead(
            FOLDER, docs.friend_device, 1, blake3.blake3(relayed_wire).digest(),
            docs.key.sign(pack_value(["dizzy/head/1", FOLDER, docs.friend_device, 1,
                                      blake3.blake3(relayed_wire).digest()])))
        mark = len(full_log(world.victim))
        await offer(world, HostileLog([relayed_head.encode()],
                                      batch_of([relayed_wire], relayed_head)),
                    refused(world, "bad signature", mark), "V to refuse a forged relay")
        await _assert_untouched(world, docs, before)


@pytest.mark.parametrize("path", ["../escape.txt", "/tmp/abs.txt", "a/../../escape.txt",
                                  "out-link/../escape.txt", "a\\..\\escape.txt", "a//b",
                                  "x\x00y"])
async def test_path_traversal_in_a_signed_log_is_refused(world: World, docs: Docs,
                                                         path: str) -> None:
    """Signed with H's real key, so only path validation stands in the way."""
    with trio.fail_after(TEST_DEADLINE):
        before = victim_files(docs)
        entries, head = one_file_log(docs, path, b"escaped\n")
        mark = len(full_log(world.victim))
        await offer(world, HostileLog([head.encode()], batch_of(entries, head),
                                      {blake3.blake3(b"escaped\n").hexdigest(): b"escaped\n"}),
                    refused(world, "", mark), f"V to refuse the path {path!r}")
        assert not (world.tmp / "escape.txt").exists()
        assert not Path("/tmp/abs.txt").exists()
        await _assert_untouched(world, docs, before)


async def test_symlink_escapes_write_nothing_outside(world: World, docs: Docs) -> None:
    """A file under the victim's own link to outside, and a link H makes to outside and
    then a file under it: nothing is ever written through a link."""
    with trio.fail_after(TEST_DEADLINE + 20):
        data = b"through the link\n"
        oid = blake3.blake3(data).hexdigest()
        writer = LogWriter(FOLDER, docs.device, docs.key)
        v = VersionVector({docs.device: 1})
        made: list[LogEntry] = [
            writer.append("h-link", "link", False, None, 0, T0, 0o777, str(docs.outside), v),
        ]
        heads = [writer.head()]
        made += [
            writer.append("h-link/pwned.txt", "file", False, oid, len(data), T0, 0o644, None, v),
            writer.append("out-link/pwned.txt", "file", False, oid, len(data), T0, 0o644,
                          None, v),
        ]
        heads.append(writer.head())
        wires = [e.encode() for e in made]

        def batch(after: int) -> dict[str, Any]:
            end = 1 if after == 0 else 3
            return {"entries": wires[after:end], "head": heads[0 if end == 1 else 1].encode()}

        log = HostileLog([heads[1].encode()], batch, {oid: data})
        mark = len(full_log(world.victim))

        def applied() -> bool:
            # V took the whole log (both batches) and tried every entry.
            text = full_log(world.victim)[mark:]
            return "3 new change(s)" in text or ((docs.root / "h-link").is_symlink() and \
                "pwned.txt" in text)
        await offer(world, log, applied, "V to take H's log and try to apply it")
        await trio.sleep(2.0)  # let the apply round finish
        print("\n  victim's folder:", victim_files(docs))
        assert list(docs.outside.iterdir()) == [], "a file was written through a symlink"
        assert os.readlink(docs.root / "out-link") == str(docs.outside)
        await in_thread(victim_status_ok, world)
        await in_thread(friend_can_get, world)


async def test_replayed_rolled_back_and_forked_logs_are_refused(world: World) -> None:
    """H's genuine log reaches V.  Then H replays old entries, advertises an older head,
    signs another history at the same sequence number and one that diverges later: V
    takes none of it and keeps what it had, and still takes H's genuine continuation."""
    folder = "replay"
    root = world.tmp / "victim-replay"
    root.mkdir()
    assert world.victim.cli("share", folder, str(root)).returncode == 0
    key, device = world.identity.private_key, world.identity.device_id.digest
    blobs: dict[str, bytes] = {}

    def file_entry(w: LogWriter, name: str, text: bytes, counter: int) -> LogEntry:
        oid = blake3.blake3(text).hexdigest()
        blobs[oid] = text
        return w.append(name, "file", False, oid, len(text), T0 + counter, 0o644, None,
                        VersionVector({device: counter}))

    def answer(entries: list[LogEntry], head: SignedHead, *, honour_after: bool = True
               ) -> Callable[[int], dict[str, Any]]:
        return lambda after: {"entries": [e.encode() for e in
                                          (entries[after:] if honour_after else entries)],
                              "head": head.encode()}

    def files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()
                and ".dizzy" not in p.name}

    with trio.fail_after(TEST_DEADLINE + 30):
        writer = LogWriter(folder, device, key)
        genuine = [file_entry(writer, "r1.txt", b"one\n", 1),
                   file_entry(writer, "r2.txt", b"two\n", 2)]
        head1 = sign_head(folder, device, 1, genuine[0].entry_hash, key)
        head2 = writer.head()
        await offer(world, HostileLog([head2.encode()], answer(genuine, head2), blobs,
                                      folder=folder),
                    lambda: files() == {"r1.txt": b"one\n", "r2.txt": b"two\n"},
                    "V to take H's genuine log")
        genuine.append(file_entry(writer, "r3.txt", b"three\n", 3))
        head3 = writer.head()

        # Replay: V asks for entries after 2; H sends 1..3 again.
        mark = len(full_log(world.victim))
        await offer(world, HostileLog([head3.encode()], answer(genuine, head3,
                                                               honour_after=False),
                                      blobs, folder=folder),
                    refused(world, "where 3 was due", mark), "V to refuse replayed entries")
        # Rollback, and another history at the same seq: nothing newer to take.
        fork = LogWriter(folder, device, key, last_seq=1, last_hash=genuine[0].entry_hash)
        forked = [genuine[0], file_entry(fork, "r2.txt", b"forked two\n", 9)]
        fork_head2 = fork.head()
        for stale in (head1, fork_head2):
            log = HostileLog([stale.encode()], answer(forked, stale), blobs, folder=folder)
            await offer(world, log, lambda log=log: "folder.heads" in log.asked,  # type: ignore[misc]
                        "V to ask H for its heads")
            await trio.sleep(1.0)
            assert "folder.log" not in log.asked, "V asked for the log behind an old head"
        # A fork that goes further: entry 3' chained to 2', signed at seq 3.
        forked.append(file_entry(fork, "r3.txt", b"forked three\n", 10))
        fork_head3 = fork.head()
        mark = len(full_log(world.victim))
        await offer(world, HostileLog([fork_head3.encode()], answer(forked, fork_head3), blobs,
                                      folder=folder),
                    refused(world, "diverges", mark), "V to refuse the diverging log")
        assert files() == {"r1.txt": b"one\n", "r2.txt": b"two\n"}
        # After all that, H's genuine continuation is still taken.
        await offer(world, HostileLog([head3.encode()], answer(genuine, head3), blobs,
                                      folder=folder),
                    lambda: files().get("r3.txt") == b"three\n", "V to take entry 3")
        assert files() == {"r1.txt": b"one\n", "r2.txt": b"two\n", "r3.txt": b"three\n"}
        await in_thread(victim_status_ok, world)
