"""Live fuzzing: random and mutated bytes into a real daemon's sockets.

A real daemon V (loopback, ``--no-mdns``), paired with a real friend F so that its
listener runs real TLS handshakes, takes a few hundred hostile connections on its peer
port (bad preambles, TLS garbage and mutated ClientHellos, pairing frames) and on its
control socket (garbage, mutated frames, requests with random parameters).  Each may
cost its own connection only: afterwards V still answers ``status``, F still fetches a
fresh object from V, V's memory stayed bounded and its log has no traceback.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dizzy.protocol.control import Request as ControlRequest
from dizzy.protocol.framing import CONTROL_MAX_FRAME, NEED_DATA, FrameDecoder, encode_frame
from dizzy.protocol.pairing import PAIRING_MAX_FRAME, Joiner, LocalInfo
from dizzy.protocol.pairing_code import PairingCode
from dizzy.protocol.pairing_code import parse as parse_code
from tests.fuzz.strategies import rand_mutate_bytes, rand_mutate_value, rand_value
from tests.fuzz.test_fuzz_pairing import BAD_VERSION, BOB
from tests.fuzz_counter import tick
from tests.multi.fetch_helpers import (
    Node,
    connect,
    file_blake3,
    full_log,
    make_random_file,
    pid,
    put,
)
from tests.multi.test_pairing_loopback import Invitation, one_error_line

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

MB = 1024 * 1024
PEER_CONNECTIONS = 2000
CONTROL_CONNECTIONS = 1000
#: the daemon closes a hostile connection this soon once the client has sent its bytes
#: and shut down its side (a TLS handshake cut short is the slowest case)
CLOSE_TIMEOUT = 20.0
#: V's resident memory may not pass this at any point (it idles near 60 MB)
RSS_LIMIT = 250 * MB
WORKERS = 8


@pytest.fixture(scope="module")
def pair_of_daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node]]:
    tmp = tmp_path_factory.mktemp("live-fuzz")
    victim, friend = Node(tmp / "victim", "victim"), Node(tmp / "friend", "friend")
    try:
        victim.start()
        friend.start()
        connect(victim, friend)
        yield victim, friend
    finally:
        for node in (victim, friend):
            node.stop()


def vm_rss(process_id: int) -> int:
    with open(f"/proc/{process_id}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _client_hello(rng: random.Random) -> bytes:
    """A real TLS 1.3 ClientHello, as OpenSSL writes it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_side=False)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _peer_payload(rng: random.Random, friend_digest: bytes) -> tuple[str, bytes]:
    kind = rng.choice(["random", "preamble", "tls-garbage", "client-hello", "pairing",
                       "pairing-frame", "oversized"])
    claimed = rng.choice([friend_digest, rng.randbytes(32)])
    if kind == "random":
        data = rng.randbytes(rng.choice([1, 7, 40, 300, 5000]))
    elif kind == "preamble":
        data = rand_mutate_bytes(rng, b"DZY1TLS\n" + claimed)
    elif kind == "tls-garbage":
        data = b"DZY1TLS\n" + claimed + rng.randbytes(rng.choice([1, 5, 100, 3000]))
    elif kind == "client-hello":
        data = b"DZY1TLS\n" + claimed + rand_mutate_bytes(rng, _client_hello(rng))
    elif kind == "pairing":
        data = b"DZY1PAIR" + rng.randbytes(rng.choice([0, 3, 4, 50, 2000]))
    elif kind == "pairing-frame":
        code = PairingCode(rng.randint(1, 999), ("four", "eager", "race"))
        (hello,) = Joiner(code, _LOCAL_INFO, rng.randbytes).start()
        hello["np"] = 1000 + rng.randrange(1000)  # no invitation has this number
        value = rand_mutate_value(rng, hello) if rng.random() < 0.7 else rand_value(rng)
        try:
            data = b"DZY1PAIR" + encode_frame(value, PAIRING_MAX_FRAME)
        except Exception:
            data = b"DZY1PAIR" + struct.pack(">I", 3) + b"\xc1\xc1\xc1"
    else:
        data = b"DZY1PAIR" + struct.pack(">I", rng.choice([PAIRING_MAX_FRAME + 1, 1 << 31]))
        data += rng.randbytes(1000)
    return kind, data


_LOCAL_INFO = BOB


def _closed_by_daemon(sock: socket.socket, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def _hit(open_socket: Callable[[], socket.socket], data: bytes) -> bool:
    """Send ``data``, hang up our side; True if the daemon then closed the connection."""
    with open_socket() as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # EPIPE, ECONNRESET, ENOTCONN: it hung up before we finished
            return True
        return _closed_by_daemon(sock, CLOSE_TIMEOUT)


class RssSampler:
    def __init__(self, process_id: int) -> None:
        self.process_id = process_id
        self.peak = vm_rss(process_id)

    def sample(self) -> None:
        self.peak = max(self.peak, vm_rss(self.process_id))


def _still_serving(victim: Node, friend: Node, tmp: Path, seed: int) -> None:
    status = victim.status()
    assert status["listen"] == victim.address, status
    assert friend.sees_online(victim.device_id())
    src = make_random_file(tmp / f"fresh-{seed}", 2 * MB, seed=b"live%d" % seed)
    object_id = put(victim, src)
    out = tmp / f"got-{seed}"
    proc = friend.cli("get", object_id, "-o", str(out), timeout=40.0)
    assert proc.returncode == 0, (proc.stderr, victim.log())
    assert file_blake3(out) == object_id
    log = full_log(victim)
    assert "Traceback" not in log, log[-5000:]


def test_peer_port_survives_fuzzed_connections(pair_of_daemons: tuple[Node, Node],
                                               tmp_path: Path) -> None:
    victim, friend = pair_of_daemons
    from dizzy.protocol.ids import DeviceId

    friend_digest = DeviceId.parse(friend.device_id()).digest
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    seed = rng.randrange(1 << 32)
    print(f"\n  live peer-port fuzz seed {seed}")
    rng = random.Random(seed)
    payloads = [_peer_payload(rng, friend_digest) for _ in range(PEER_CONNECTIONS)]
    rss = RssSampler(pid(victim))

    def one(item: tuple[str, bytes]) -> tuple[str, bool]:
        kind, data = item
        closed = _hit(lambda: socket.create_connection(("127.0.0.1", victim.port), 5.0), data)
        rss.sample()
        return kind, closed

    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(one, payloads))
    tick(len(results))
    kinds: dict[str, int] = {}
    for kind, _ in results:
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"  {len(results)} connections in {time.monotonic() - started:.1f} s: {kinds}; "
          f"victim peak VmRSS {rss.peak / MB:.0f} MB")
    kept_open = [kind for kind, closed in results if not closed]
    assert not kept_open, f"the daemon kept {len(kept_open)} hostile connections: {kept_open}"
    assert rss.peak < RSS_LIMIT
    _still_serving(victim, friend, tmp_path, seed)


SAFE_METHODS = ["status", "peers", "folders", "stat", "get", "cat", "unpair", "unshare",
                "rescan", "no-such-method", ""]


def _control_payload(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["random", "mutated-frame", "random-params", "random-params",
                       "random-params", "oversized"])
    if kind == "random":
        return kind, rng.randbytes(rng.choice([1, 3, 4, 9, 500]))
    if kind == "oversized":
        return kind, struct.pack(">I", CONTROL_MAX_FRAME + rng.randint(1, 1 << 20))
    method = rng.choice(SAFE_METHODS)
    params = {k: rand_value(rng) for k in rng.sample(
        ["id", "timeout", "wait", "path", "name", "device", "all", "offset", "x"],
        rng.randint(0, 4))}
    if method in ("get", "cat"):
        params["timeout"] = 0.2  # never wait for peers long: nobody has random IDs
        params.pop("wait", None)
    wire = ControlRequest(method, params).to_wire()
    if kind == "mutated-frame":
        try:
            return kind, rand_mutate_bytes(rng, encode_frame(wire))
        except Exception:
            return kind, b"\x00\x00\x00\x01\xc1"
    try:
        return kind, encode_frame(wire)
    except Exception:
        return kind, encode_frame(ControlRequest(method, {}).to_wire())


def _control_exchange(path: Path, data: bytes, hang_up: bool) -> tuple[bool, list[Any]]:
    """Send one payload; (closed by the daemon, the frames it answered).

    ``hang_up`` shuts our sending side after the bytes (a half frame is then an error,
    not a wait); a well-formed request keeps it open, as hanging up cancels a request.
    """
    frames: list[Any] = []
    decoder = FrameDecoder(CONTROL_MAX_FRAME)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10.0)
        sock.connect(str(path))
        try:
            sock.sendall(data)
            if hang_up:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # EPIPE, ECONNRESET, ENOTCONN: it hung up before we finished
            return True, frames
        deadline = time.monotonic() + CLOSE_TIMEOUT
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return True, frames
            except TimeoutError:
                break
            if not chunk:
                return True, frames
            decoder.receive_data(chunk)
            while isinstance(frame := decoder.next_frame(), dict):
                frames.append(frame)
            if frames and frames[-1].get("t") in ("ok", "err"):
                return True, frames  # answered: the request is over
    return False, frames


def test_control_socket_survives_fuzzed_clients(pair_of_daemons: tuple[Node, Node],
                                                tmp_path: Path) -> None:
    victim, friend = pair_of_daemons
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"\n  live control fuzz seed {seed}")
    rng = random.Random(seed)
    payloads = [_control_payload(rng) for _ in range(CONTROL_CONNECTIONS)]
    rss = RssSampler(pid(victim))
    path = victim.home / "control.sock"

    def one(item: tuple[str, bytes]) -> tuple[str, bool, list[Any]]:
        kind, data = item
        closed, frames = _control_exchange(path, data, hang_up=kind != "random-params")
        rss.sample()
        return kind, closed, frames

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(one, payloads))
    tick(len(results))
    internal = [frames[-1] for _, _, frames in results
                if frames and frames[-1].get("t") == "err" and frames[-1].get("c") == "internal"]
    codes: dict[str, int] = {}
    for _, _, frames in results:
        if frames:
            key = str(frames[-1].get("c", frames[-1].get("t")))
            codes[key] = codes.get(key, 0) + 1
    print(f"  {len(results)} control clients; replies {codes}; peak VmRSS "
          f"{rss.peak / MB:.0f} MB")
    # A well-formed request with bad parameters is a usage error, never a crash inside.
    assert not internal, internal
    kept = [kind for kind, closed, _ in results if not closed]
    assert not kept, kept
    assert rss.peak < RSS_LIMIT
    _still_serving(victim, friend, tmp_path, seed)


def _receive_frame(sock: socket.socket, decoder: FrameDecoder) -> Any:
    sock.settimeout(10.0)
    while (frame := decoder.next_frame()) is NEED_DATA:
        data = sock.recv(65536)
        decoder.receive_data(data)
    return frame


def test_joiner_with_a_malformed_certificate_fails_only_that_pairing(
        pair_of_daemons: tuple[Node, Node], tmp_path: Path) -> None:
    """Regression (found by fuzzing _check_identity): a joiner holding the right code
    whose sealed certificate has an invalid X.509 version made cryptography raise
    InvalidVersion in the inviter, which escaped and stopped the whole daemon."""
    victim, friend = pair_of_daemons
    bad = LocalInfo(BOB.public_key, BOB.cert_pem, BOB.name)
    object.__setattr__(bad, "cert_pem", BAD_VERSION)  # past LocalInfo's own check
    invitation = Invitation(victim)
    try:
        code = parse_code(invitation.code)
        joiner = Joiner(code, bad, os.urandom)
        decoder = FrameDecoder(PAIRING_MAX_FRAME)
        with socket.create_connection(("127.0.0.1", victim.port), 5.0) as sock:
            (hello,) = joiner.start()
            sock.sendall(b"DZY1PAIR" + encode_frame(hello, PAIRING_MAX_FRAME))
            (confirm,) = joiner.receive(_receive_frame(sock, decoder))
            sock.sendall(encode_frame(confirm, PAIRING_MAX_FRAME))
            reply = _receive_frame(sock, decoder)
        tick()
        assert reply["t"] == "error", reply
        rc, out, err = invitation.finish()
    finally:
        invitation.close()
    assert rc != 0 and out == b""
    assert "certificate" in one_error_line((rc, err))
    assert victim.alive()
    _still_serving(victim, friend, tmp_path, 7)
