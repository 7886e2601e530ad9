"""A hostile *paired* device talking to a real daemon over the real peer transport.

The hostile device H is paired for real: a daemon runs on its home just long enough to
pair with the victim V (the CLI, loopback, ``--no-mdns``), then stops.  The test process
then loads H's identity and dials V with ``dial_peer``: V sees an authenticated, paired
peer and this file sends it whatever it likes.  A second real daemon F (the friend),
also paired with V, checks that V keeps serving well-behaved peers.

V and F run for the whole module.  V keeps one connection per device, so every test
waits until V lists H offline before dialling again (a second connection would lose
the simultaneous-dial tie-break).  Nothing sleeps to wait for a state: waits poll
against deadlines; the few fixed sleeps are the behaviour under test ("send nothing
for 3 s", "do not read replies for 3 s").
"""

from __future__ import annotations

import random
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import trio

from dizzy.daemon.identity import Identity, load_or_create_identity
from dizzy.daemon.transport import PeerConnection, dial_peer
from dizzy.protocol.framing import PEER_MAX_FRAME, FrameDecoder, encode_frame, pack_value
from dizzy.protocol.outboard import Outboard, outboard_of
from dizzy.protocol.peer_wire import (
    MAX_REQUESTS_IN_FLIGHT,
    PROTOCOL_VERSION,
    ErrorResponse,
    Hello,
    PeerMessage,
    Request,
    Response,
)
from tests.multi.fetch_helpers import (
    Node,
    connect,
    file_blake3,
    full_log,
    has_outboard,
    make_random_file,
    pid,
    put,
    stored_path,
    wait_until,
)
from tests.multi.test_pairing_loopback import ONLINE_TIMEOUT

pytestmark = pytest.mark.timeout(60)

MB = 1024 * 1024
#: every test body runs inside this (pytest-timeout's 60 s is the backstop)
TEST_DEADLINE = 55.0
#: a reply to one small request from an idle loopback daemon
REPLY_TIMEOUT = 10.0
#: the victim must drop a connection that broke the protocol this soon
CLOSE_TIMEOUT = 10.0
#: peak resident memory the victim may reach under the request flood
RSS_LIMIT = 300 * MB
FLOOD_REQUESTS = 1000
FLOOD_OBJECT_SIZE = 64 * MB


@dataclass
class World:
    tmp: Path
    victim: Node
    friend: Node
    hostile_home: Path
    hostile_id: str
    identity: Identity
    victim_cert: bytes
    seeds: Iterator[int] = field(default_factory=lambda: count(1))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("hostile")
    victim = Node(tmp / "victim", "victim")
    friend = Node(tmp / "friend", "friend")
    hostile = Node(tmp / "hostile", "hostile")
    try:
        victim.start()
        friend.start()
        hostile.start()
        connect(victim, friend)
        connect(victim, hostile)
        hostile_id = hostile.device_id()
        hostile.stop()  # from now on the test process is H
        wait_until(lambda: victim.sees_offline(hostile_id), ONLINE_TIMEOUT,
                   "the victim to list the stopped hostile daemon offline")
        yield World(
            tmp=tmp,
            victim=victim,
            friend=friend,
            hostile_home=hostile.home,
            hostile_id=hostile_id,
            identity=load_or_create_identity(hostile.home),
            victim_cert=(victim.home / "device-cert.pem").read_bytes(),
        )
    finally:
        errors: list[AssertionError] = []
        for node in (victim, friend, hostile):
            try:
                node.stop()
            except AssertionError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


# ------------------------------------------------------------------------ helpers


async def in_thread(fn: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(lambda: fn(*args))


@asynccontextmanager
async def as_hostile(world: World) -> AsyncIterator[PeerConnection]:
    """A fresh authenticated connection to the victim as the paired device H."""
    await in_thread(wait_until, lambda: world.victim.sees_offline(world.hostile_id),
                    CLOSE_TIMEOUT, "the victim to drop H's previous connection")
    conn = await dial_peer("127.0.0.1", world.victim.port, world.identity,
                           [world.victim_cert], expected=None, name="hostile")
    try:
        yield conn
    finally:
        await conn.aclose()


async def ask(conn: PeerConnection, kind: str, body: dict[str, Any]
              ) -> Response | ErrorResponse:
    """Send one request (through the session, so the ID is tracked) and await its answer."""
    request = conn.new_request(kind, body)
    await conn.send(request)
    with trio.fail_after(REPLY_TIMEOUT):
        while True:
            message = await conn.receive()
            if isinstance(message, Response | ErrorResponse):
                assert message.id == request.id, message
                return message


async def send_raw(conn: PeerConnection, data: bytes) -> None:
    """Bytes straight into the TLS stream, past our own session's checks."""
    async with conn._send_lock:
        await conn._stream.send_all(data)


async def closed_by_victim(conn: PeerConnection, timeout: float = CLOSE_TIMEOUT) -> int:
    """Read raw bytes until the victim closes the connection; returns the bytes read.

    Fails if the connection is still open after ``timeout``.
    """
    got = 0
    with trio.move_on_after(timeout):
        while True:
            try:
                data = await conn._stream.receive_some(1024 * 1024)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return got
            if not data:
                return got
            got += len(data)
    raise AssertionError(f"the victim kept the connection open for {timeout:g} s")


def vm_rss(process_id: int) -> int:
    with open(f"/proc/{process_id}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def victim_status_ok(world: World) -> None:
    status = world.victim.status()  # asserts the CLI succeeded
    assert status["listen"] == world.victim.address, status


def friend_can_get(world: World, size: int = 2 * MB) -> None:
    """A fresh object put on the victim reaches the friend intact, over the network."""
    seed = next(world.seeds)
    src = make_random_file(world.tmp / f"fresh-{seed}", size, seed=b"fresh%d" % seed)
    object_id = put(world.victim, src)
    out = world.tmp / f"got-{seed}"
    proc = world.friend.cli("get", object_id, "-o", str(out), timeout=40.0)
    assert proc.returncode == 0, (proc.stderr, world.victim.log(), world.friend.log())
    assert file_blake3(out) == object_id
    out.unlink()


def a_stored_blob(world: World, size: int = 3 * MB) -> tuple[str, Outboard]:
    seed = next(world.seeds)
    src = make_random_file(world.tmp / f"blob-{seed}", size, seed=b"blob%d" % seed)
    object_id = put(world.victim, src)
    outboard = outboard_of(src.read_bytes())
    assert outboard.object_id == object_id
    return object_id, outboard


# ---------------------------------------------------------- 1: malformed requests


BAD_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    # (label, kind, body); "{id}" in a body is replaced by a stored blob's ID
    ("chunk index past the end", "obj.chunk", {"id": "{id}", "i": 10**6}),
    ("chunk index = chunk count", "obj.chunk", {"id": "{id}", "i": "{n}"}),
    ("negative chunk index", "obj.chunk", {"id": "{id}", "i": -1}),
    ("huge chunk index", "obj.chunk", {"id": "{id}", "i": 2**64 - 1}),
    ("string chunk index", "obj.chunk", {"id": "{id}", "i": "0"}),
    ("float chunk index", "obj.chunk", {"id": "{id}", "i": 0.0}),
    ("bool chunk index", "obj.chunk", {"id": "{id}", "i": True}),
    ("nil chunk index", "obj.chunk", {"id": "{id}", "i": None}),
    ("no chunk index", "obj.chunk", {"id": "{id}"}),
    ("chunk of unknown object", "obj.chunk", {"id": "0" * 64, "i": 0}),
    ("outboard of unknown object", "obj.outboard", {"id": "f" * 64}),
    ("tree of unknown object", "obj.tree", {"id": "e" * 64}),
    ("tree of a blob", "obj.tree", {"id": "{id}"}),
    ("malformed id (short hex)", "obj.stat", {"id": "abc"}),
    ("malformed id (not hex)", "obj.chunk", {"id": "z" * 64, "i": 0}),
    ("malformed id (int)", "obj.outboard", {"id": 12345}),
    ("malformed id (bytes)", "obj.stat", {"id": b"\x00" * 32}),
    ("malformed id (path)", "obj.tree", {"id": "../../../etc/passwd"}),
    # (just under MAX_REQUEST_FRAME: a bigger request costs the link, see test_hostile_memory)
    ("malformed id (huge)", "obj.stat", {"id": "a" * 60_000}),
    ("no id", "obj.outboard", {}),
    ("unknown request kind", "obj.nope", {"id": "{id}"}),
    ("unknown request kind 2", "zzz", {}),
]


async def test_malformed_requests_get_error_responses(world: World) -> None:
    with trio.fail_after(TEST_DEADLINE):
        object_id, outboard = await in_thread(a_stored_blob, world)
        n = len(outboard.chunks)

        def fill(value: Any) -> Any:
            return {"{id}": object_id, "{n}": n}.get(value, value) \
                if isinstance(value, str) else value

        async with as_hostile(world) as conn:
            codes: dict[str, str] = {}
            for label, kind, body in BAD_REQUESTS:
                reply = await ask(conn, kind, {k: fill(v) for k, v in body.items()})
                assert isinstance(reply, ErrorResponse), (label, reply)
                codes[label] = reply.code
                # After every error the connection still serves a valid request.
                ok = await ask(conn, "obj.stat", {"id": object_id})
                assert isinstance(ok, Response), (label, ok)
                assert ok.body == {"have": True, "kind": "blob", "size": 3 * MB}, ok
            print("\n  error codes:", codes)
            # A daemon bug would show as "internal" (an exception the handler missed).
            assert "internal" not in codes.values(), codes
            assert codes["unknown request kind"] == "unknown-request"
            # Unknown but well-formed IDs: stat is an answer, not an error.
            stat = await ask(conn, "obj.stat", {"id": "0" * 64})
            assert isinstance(stat, Response) and stat.body == {"have": False}, stat
            # And valid chunk requests still come back whole and correct.
            for i in (0, n - 1):
                reply = await ask(conn, "obj.chunk", {"id": object_id, "i": i})
                assert isinstance(reply, Response), reply
                assert outboard.verify_chunk(i, reply.body["data"]), i
        await in_thread(victim_status_ok, world)


# -------------------------------------------------------------------- 2: flooding


async def test_request_flood_is_cut_with_bounded_memory(world: World) -> None:
    """256 unread chunk requests (legal) are all answered, correctly, with bounded
    memory (16 serve slots); 1000 in one write are a protocol error.  As observed, the
    victim parses the whole burst before answering any, so it cuts at request 257 having
    answered none; either outcome (cut, or every request answered) would be accepted."""
    with trio.fail_after(TEST_DEADLINE):
        src = world.tmp / "flood-object"
        await in_thread(lambda: make_random_file(src, FLOOD_OBJECT_SIZE, seed=b"flood"))
        object_id = await in_thread(put, world.victim, src)
        await in_thread(wait_until, lambda: has_outboard(world.victim.home, object_id), 20.0,
                        "the victim to chunk the flood object")
        victim_pid = pid(world.victim)
        before = vm_rss(victim_pid)
        peak = before
        stop_sampling = trio.Event()

        async def sample() -> None:
            nonlocal peak
            while not stop_sampling.is_set():
                peak = max(peak, vm_rss(victim_pid))
                with trio.move_on_after(0.02):
                    await stop_sampling.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            async with as_hostile(world) as conn:
                reply = await ask(conn, "obj.outboard", {"id": object_id})
                assert isinstance(reply, Response), reply
                outboard = Outboard.decode(reply.body["data"])
                chunks = len(outboard.chunks)
                # Phase 1, legal: the most requests the protocol allows in flight, replies
                # left unread for 3 s.  The victim must keep the link and bounded memory.
                wanted: dict[int, int] = {}
                for k in range(MAX_REQUESTS_IN_FLIGHT):
                    request = conn.new_request("obj.chunk", {"id": object_id, "i": k % chunks})
                    wanted[request.id] = k % chunks
                    await conn.send(request)
                await trio.sleep(3.0)
                legal_peak = peak
                with trio.fail_after(30.0):
                    while wanted:
                        message = await conn.receive()
                        assert isinstance(message, Response), message
                        assert outboard.verify_chunk(wanted.pop(message.id),
                                                     message.body["data"])
                assert await in_thread(world.victim.sees_online, world.hostile_id)
                # Phase 2, hostile:
                # 1000 chunk requests in one write, past our own session's limit of 256.
                flood = b"".join(
                    encode_frame(Request(10_000 + k, "obj.chunk",
                                         {"id": object_id, "i": k % chunks}).to_wire(),
                                 PEER_MAX_FRAME)
                    for k in range(FLOOD_REQUESTS)
                )
                # (cut while we were still writing: fine)
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await send_raw(conn, flood)
                await trio.sleep(3.0)  # not reading: replies pile up on the victim
                during = peak
                # Now read: either the victim cut us (protocol error) or it answers all.
                decoder = FrameDecoder(PEER_MAX_FRAME)
                answered = 0
                cut = False
                with trio.move_on_after(30.0):
                    while answered < FLOOD_REQUESTS:
                        try:
                            data = await conn._stream.receive_some(1024 * 1024)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            data = b""
                        if not data:
                            cut = True
                            break
                        decoder.receive_data(data)
                        while isinstance(frame := decoder.next_frame(), dict):
                            if frame.get("t") in ("res", "err"):
                                answered += 1
            await trio.sleep(1.0)
            after = vm_rss(victim_pid)
            stop_sampling.set()
        print(f"\n  flood: {chunks} chunks, {answered} of {FLOOD_REQUESTS} answered, "
              f"{'cut' if cut else 'not cut'}; victim VmRSS before {before / MB:.0f} MB, "
              f"peak {peak / MB:.0f} MB (256 legal unread: {legal_peak / MB:.0f} MB, "
              f"1000 unread: {during / MB:.0f} MB), "
              f"after {after / MB:.0f} MB")
        assert cut or answered == FLOOD_REQUESTS, (cut, answered)
        if cut:
            assert answered < FLOOD_REQUESTS
            assert f"more than {MAX_REQUESTS_IN_FLIGHT} requests in flight" in \
                full_log(world.victim), world.victim.log()
        assert legal_peak < RSS_LIMIT, legal_peak
        assert peak < RSS_LIMIT, peak
        assert after < RSS_LIMIT, after
        await in_thread(victim_status_ok, world)
        # The friend still fetches the whole 64 MB object from the victim.
        out = world.tmp / "flood-got"
        proc = await in_thread(lambda: world.friend.cli("get", object_id, "-o", str(out),
                                                         timeout=40.0))
        assert proc.returncode == 0, (proc.stderr, world.victim.log())
        assert await in_thread(file_blake3, out) == object_id
        out.unlink()


# ------------------------------------------------------ 3: a lying source (receiver)


@dataclass
class Lie:
    """How H answers the victim's fetch of an object H claims to have."""

    outboard: str  # "garbage" | "error" | "real"
    chunks: str = "corrupt"  # "corrupt" | "error"


LIES = {
    "garbage outboard": Lie("garbage"),
    "outboard refused": Lie("error"),
    "corrupt chunks": Lie("real", "corrupt"),
    "chunks refused": Lie("real", "error"),
}


@pytest.mark.parametrize("lie", list(LIES))
async def test_lying_source_fails_the_get_cleanly(world: World, lie: str) -> None:
    """H says "I have it" and then sends junk or nothing: V's ``get`` fails (never
    stores a wrong object, never hangs) and V keeps working.  "chunks refused" waits for
    the fetcher's SOURCE_RETURN_WAIT (30 s) before giving up."""
    how = LIES[lie]
    with trio.fail_after(TEST_DEADLINE):
        seed = next(world.seeds)
        data = random.Random(seed).randbytes(3 * MB)
        outboard = outboard_of(data)
        object_id = outboard.object_id
        asked: dict[str, int] = {}

        async def serve(conn: PeerConnection) -> None:
            async for message in conn:
                if not isinstance(message, Request):
                    continue
                asked[message.kind] = asked.get(message.kind, 0) + 1
                reply: Response | ErrorResponse
                mine = message.body.get("id") == object_id
                if message.kind == "obj.stat":
                    body = {"have": True, "kind": "blob", "size": len(data)} if mine \
                        else {"have": False}
                    reply = Response(message.id, body)
                elif message.kind == "obj.outboard" and how.outboard == "garbage":
                    reply = Response(message.id, {"data": b"\x93garbage" * 100})
                elif message.kind == "obj.outboard" and how.outboard == "real":
                    reply = Response(message.id, {"data": outboard.encode()})
                elif message.kind == "obj.chunk" and how.chunks == "corrupt":
                    ref = outboard.chunks[message.body["i"]]
                    reply = Response(message.id, {"data": b"\x00" * ref.length})
                else:
                    reply = ErrorResponse(message.id, "not-found", "not here after all")
                await conn.send(reply)

        async with as_hostile(world) as conn, trio.open_nursery() as nursery:
            nursery.start_soon(serve, conn)
            out = world.tmp / f"lied-{seed}"
            proc = await in_thread(lambda: world.victim.cli("get", object_id, "-o", str(out),
                                                             timeout=50.0))
            nursery.cancel_scope.cancel()
        err = proc.stderr.decode(errors="replace")
        print(f"\n  {lie}: rc={proc.returncode} asked={asked} stderr={err.strip()!r}")
        assert proc.returncode != 0, (proc.stdout, err)
        assert err.startswith("dizzy: "), err
        assert not out.exists()
        assert not stored_path(world.victim, object_id).exists()
        assert asked.get("obj.stat", 0) >= 1 and asked.get("obj.outboard", 0) >= 1, asked
        if how.outboard == "real":
            assert asked.get("obj.chunk", 0) >= 1, asked
        await in_thread(victim_status_ok, world)
        await in_thread(friend_can_get, world)


# --------------------------------------------------------- 4: garbage on the wire


def _garbage_cases() -> dict[str, bytes]:
    rng = random.Random(4)
    noise = bytearray(rng.randbytes(4096))
    noise[0] = 0xA7  # announced length > PEER_MAX_FRAME whatever the seed
    tiny_noise = bytes(rng.randbytes(64))
    return {
        "random bytes": bytes(noise),
        "random frame body": struct.pack(">I", len(tiny_noise)) + tiny_noise,
        "oversized frame header": struct.pack(">I", PEER_MAX_FRAME + 1) + b"\x00" * 64,
        "4 GiB frame header": b"\xff\xff\xff\xff",
        "msgpack list": encode_frame([1, 2, 3], PEER_MAX_FRAME),
        "msgpack int": encode_frame(7, PEER_MAX_FRAME),
        "unknown message type": encode_frame({"t": "bogus", "i": 1}, PEER_MAX_FRAME),
        "request with negative id": encode_frame(
            {"t": "req", "i": -1, "k": "obj.stat", "b": {}}, PEER_MAX_FRAME),
        "request with bad kind": encode_frame(
            {"t": "req", "i": 1, "k": "OBJ STAT!", "b": {}}, PEER_MAX_FRAME),
        "request body not a map": encode_frame(
            {"t": "req", "i": 1, "k": "obj.stat", "b": [1]}, PEER_MAX_FRAME),
        "request without body": encode_frame({"t": "req", "i": 1, "k": "obj.stat"},
                                             PEER_MAX_FRAME),
        "non-str map key": struct.pack(">I", 3) + pack_value({1: 2}),
        "response never asked for": encode_frame(Response(999, {"x": 1}).to_wire(),
                                                 PEER_MAX_FRAME),
        "error never asked for": encode_frame(
            ErrorResponse(424242, "nope", "never asked").to_wire(), PEER_MAX_FRAME),
        "second hello": encode_frame(Hello(PROTOCOL_VERSION, "again").to_wire(), PEER_MAX_FRAME),
    }


GARBAGE = _garbage_cases()


@pytest.mark.parametrize("case", list(GARBAGE))
async def test_garbage_closes_only_that_connection(world: World, case: str) -> None:
    with trio.fail_after(TEST_DEADLINE):
        async with as_hostile(world) as conn:
            ok = await ask(conn, "obj.stat", {"id": "0" * 64})  # the link works...
            assert isinstance(ok, Response), ok
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await send_raw(conn, GARBAGE[case])
            await closed_by_victim(conn)  # ...until the garbage
        await in_thread(wait_until, lambda: world.victim.sees_offline(world.hostile_id),
                        CLOSE_TIMEOUT, "the victim to list H offline")
        await in_thread(victim_status_ok, world)
        assert world.victim.sees_online(await in_thread(world.friend.device_id))
    if case in ("random bytes", "response never asked for", "second hello"):
        await in_thread(friend_can_get, world, MB)


# ------------------------------------------------------------------ 5: silence


async def test_silent_peer_holds_no_slot(world: World) -> None:
    """Hello, then nothing.  KEEPALIVE_TIMEOUT (90 s) is too long to wait for here, so
    this only checks that a silent link is kept (it is a legitimate idle peer) and that
    it does not stop the victim from serving the CLI and the friend meanwhile."""
    with trio.fail_after(TEST_DEADLINE):
        async with as_hostile(world) as conn:
            await trio.sleep(3.0)
            message: PeerMessage | None = None
            with trio.move_on_after(0.5):
                while True:
                    message = await conn.receive()  # EndOfChannel/Broken would fail
                    # The victim asks a new link which folders it shares: not a cut.
                    if isinstance(message, Request) and message.kind.startswith("folder."):
                        message = None
                        continue
                    break
            assert message is None, message
            assert await in_thread(world.victim.sees_online, world.hostile_id)
            await in_thread(victim_status_ok, world)
            await in_thread(friend_can_get, world)
            # Still open and still answering after all that.
            ok = await ask(conn, "obj.stat", {"id": "0" * 64})
            assert isinstance(ok, Response), ok
