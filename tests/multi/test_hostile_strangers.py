"""Devices that are not (or no longer) paired, stalled connections, code guessing.

Real daemons on loopback (``--no-mdns``): the victim V, its paired friend F, and a
stranger S that was never paired with V.  The test process also dials V itself with
identities it loads from those homes, to say exactly what a hostile device would say.
The mDNS TXT spoof (an unpaired device advertising a paired device's ID) is played here
by its only effect on the wire: a dial whose preamble claims the paired device's ID.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from dizzy.daemon.identity import load_or_create_identity
from dizzy.daemon.tls import make_client_context
from dizzy.daemon.tls_stream import TlsStream
from dizzy.daemon.transport import dial_peer
from dizzy.protocol.errors import DizzyError
from dizzy.protocol.ids import DeviceId
from dizzy.protocol.peer_wire import PreambleKind, encode_preamble
from tests.multi.fetch_helpers import (
    Node,
    connect,
    file_blake3,
    full_log,
    make_random_file,
    pid,
    put,
    wait_until,
)
from tests.multi.test_pairing_loopback import (
    ONLINE_TIMEOUT,
    Invitation,
    one_error_line,
    wrong_words,
)
from tests.multi.test_pairing_loopback import parse_code as parse_code

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]

MB = 1024 * 1024
#: V's control clients must send a request within this (DIZZY_CONTROL_IDLE_TIMEOUT)
CONTROL_IDLE = 3.0
#: peer port: preamble within 10 s, then TLS within 10 s (transport.HANDSHAKE_TIMEOUT);
#: pairing: the whole exchange within 15 s (pairing_service.EXCHANGE_TIMEOUT)
PEER_STALL_BOUND = 10.0 + 10.0 + 8.0
PAIR_STALL_BOUND = 10.0 + 15.0 + 8.0
STALLED_PER_KIND = 60


@pytest.fixture(scope="module")
def trio_of_daemons(tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[tuple[Node, Node, Node, Path]]:
    tmp = tmp_path_factory.mktemp("strangers")
    victim = Node(tmp / "victim", "victim")
    friend = Node(tmp / "friend", "friend")
    stranger = Node(tmp / "stranger", "stranger")
    try:
        os.environ["DIZZY_CONTROL_IDLE_TIMEOUT"] = str(CONTROL_IDLE)
        try:
            victim.start()
        finally:
            del os.environ["DIZZY_CONTROL_IDLE_TIMEOUT"]
        friend.start()
        stranger.start()
        connect(victim, friend)
        connect(stranger, friend)  # S is somebody's peer, just not V's
        yield victim, friend, stranger, tmp
    finally:
        for node in (victim, friend, stranger):
            node.stop()


def victim_cert(victim: Node) -> bytes:
    return (victim.home / "device-cert.pem").read_bytes()


def friend_gets_fresh_object(victim: Node, friend: Node, tmp: Path, tag: str) -> None:
    src = make_random_file(tmp / f"fresh-{tag}", MB, seed=tag.encode())
    object_id = put(victim, src)
    out = tmp / f"got-{tag}"
    proc = friend.cli("get", object_id, "-o", str(out), timeout=40.0)
    assert proc.returncode == 0, (proc.stderr, victim.log())
    assert file_blake3(out) == object_id


async def _tls_dial(victim: Node, identity_home: Path, claimed: DeviceId) -> None:
    """Dial V with the identity in ``identity_home``, its preamble claiming ``claimed``."""
    identity = load_or_create_identity(identity_home)
    ctx = make_client_context(identity, [victim_cert(victim)])
    with trio.fail_after(15):
        tcp = await trio.open_tcp_stream("127.0.0.1", victim.port)
        stream = TlsStream(tcp, ctx, server_side=False)
        try:
            await tcp.send_all(encode_preamble(PreambleKind.TRANSPORT, claimed))
            await stream.do_handshake()
            # TLS 1.3: the client may finish before the server has checked its
            # certificate; the refusal then arrives as the first read.
            data = await stream.receive_some(1024)
            assert not data, "an unpaired device got data over TLS"
        finally:
            await trio.aclose_forcefully(stream)


def _refused_in_log(victim: Node, who: str) -> bool:
    return any(who in line and "refused" in line for line in full_log(victim).splitlines())


async def test_unpaired_device_is_refused_at_the_handshake(
        trio_of_daemons: tuple[Node, Node, Node, Path]) -> None:
    victim, friend, stranger, _ = trio_of_daemons
    stranger_id = DeviceId.parse(stranger.device_id())
    identity = load_or_create_identity(stranger.home)
    with pytest.raises((DizzyError, trio.BrokenResourceError)):
        conn = await dial_peer("127.0.0.1", victim.port, identity, [victim_cert(victim)],
                               name="stranger")
        await conn.aclose()
    with pytest.raises((DizzyError, trio.BrokenResourceError, AssertionError)):
        await _tls_dial(victim, stranger.home, stranger_id)
    await trio.to_thread.run_sync(lambda: wait_until(
        lambda: _refused_in_log(victim, str(stranger_id)), 10.0,
        "V to log the stranger's refusal"))
    assert [p["id"] for p in victim.peers()] == [friend.device_id()]
    assert victim.sees_online(friend.device_id())


async def test_unpaired_device_claiming_a_paired_id_is_refused(
        trio_of_daemons: tuple[Node, Node, Node, Path]) -> None:
    """The stranger advertises (here: claims in its preamble) the friend's device ID.
    Trust is the pinned certificate, not the claim: the handshake fails, the friend's
    own link is not disturbed, and the log names the claimed ID."""
    victim, friend, stranger, tmp = trio_of_daemons
    friend_id = DeviceId.parse(friend.device_id())
    links_before = full_log(victim).count("connected from")
    for _ in range(5):
        with pytest.raises((DizzyError, trio.BrokenResourceError, AssertionError)):
            await _tls_dial(victim, stranger.home, friend_id)
    await trio.to_thread.run_sync(lambda: wait_until(
        lambda: _refused_in_log(victim, str(friend_id)), 10.0,
        "V to log a refusal naming the claimed ID"))
    assert victim.sees_online(str(friend_id)) and friend.sees_online(victim.device_id())
    assert full_log(victim).count("connected from") == links_before
    await trio.to_thread.run_sync(friend_gets_fresh_object, victim, friend, tmp, "claim")


def test_revoked_device_is_refused_and_gets_nothing(
        trio_of_daemons: tuple[Node, Node, Node, Path]) -> None:
    victim, friend, _, tmp = trio_of_daemons
    revoked = Node(tmp / "revoked", "revoked")
    try:
        revoked.start()
        connect(victim, revoked)
        revoked_id = revoked.device_id()
        src = make_random_file(tmp / "secret", MB, seed=b"secret")
        object_id = put(victim, src)
        assert victim.cli("unpair", revoked_id).returncode == 0
        wait_until(lambda: revoked.sees_offline(victim.device_id()), ONLINE_TIMEOUT,
                   "the revoked device to lose its link")
        # It still trusts V and keeps dialling (with backoff): every dial is refused.
        time.sleep(3.0)
        assert revoked.sees_offline(victim.device_id())
        assert all(p["id"] != revoked_id for p in victim.peers())
        proc = revoked.cli("get", object_id, "-o", str(tmp / "stolen"), "--timeout", "3")
        assert proc.returncode != 0 and not (tmp / "stolen").exists()
        one_error_line(proc)
        assert _refused_in_log(victim, revoked_id)
        # Its old identity, dialled by hand, is refused too.
        identity = load_or_create_identity(revoked.home)

        async def dial() -> None:
            conn = await dial_peer("127.0.0.1", victim.port, identity, [victim_cert(victim)])
            await conn.aclose()

        with pytest.raises((DizzyError, trio.BrokenResourceError)):
            trio.run(dial)
    finally:
        revoked.stop()
    assert victim.sees_online(friend.device_id())


def _open_fds(process_id: int) -> int:
    return len(os.listdir(f"/proc/{process_id}/fd"))


def _closed_within(sock: socket.socket, deadline: float) -> bool:
    """True if the daemon has closed ``sock`` by ``deadline`` (checked at least once)."""
    while True:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not sock.recv(4096):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        if time.monotonic() > deadline:
            return False


def _closed_now(sock: socket.socket) -> bool:
    """Whether the daemon has closed ``sock`` already (no waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        sock.setblocking(True)


def test_stalled_connections_are_cut_and_block_nobody(
        trio_of_daemons: tuple[Node, Node, Node, Path]) -> None:
    """Connections that send nothing, or a few bytes, and then stall: V keeps serving
    the CLI and the friend meanwhile, and cuts each stalled connection after its
    documented timeout, which frees its file descriptor."""
    victim, friend, _, tmp = trio_of_daemons
    victim_pid = pid(victim)
    fds_before = _open_fds(victim_pid)
    stalled: dict[str, list[socket.socket]] = {}
    starts = {
        "silent": b"", "half preamble": b"DZY1", "pairing, no frame": b"DZY1PAIR",
        "pairing, half frame": b"DZY1PAIR\x00\x00\x01\x00abc",
        "TLS, no handshake": b"DZY1TLS\n" + DeviceId.parse(friend.device_id()).digest,
    }
    control_starts = {"control silent": b"", "control half frame": b"\x00\x00\x00\x20\x84"}
    started = time.monotonic()
    try:
        for kind, data in starts.items():
            for _ in range(STALLED_PER_KIND):
                sock = socket.create_connection(("127.0.0.1", victim.port), 5.0)
                if data:
                    sock.sendall(data)
                stalled.setdefault(kind, []).append(sock)
        for kind, data in control_starts.items():
            for _ in range(STALLED_PER_KIND):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(victim.home / "control.sock"))
                if data:
                    sock.sendall(data)
                stalled.setdefault(kind, []).append(sock)
        total = sum(len(v) for v in stalled.values())
        # V accepts them as fast as it can: watch its descriptors climb for a moment.
        fds_stalled = max(_open_fds(victim_pid) for _ in range(10) if time.sleep(0.1) is None)
        # Meanwhile everyone legitimate is served.
        assert victim.status()["device_id"] == victim.device_id()
        friend_gets_fresh_object(victim, friend, tmp, "stall")
        # Then every stalled connection is cut within its bound.
        cut_after: dict[str, float] = {}
        for kind, socks in stalled.items():
            bound = PAIR_STALL_BOUND if kind.startswith("pairing") else \
                CONTROL_IDLE + 8.0 if kind.startswith("control") else PEER_STALL_BOUND
            for sock in socks:
                assert _closed_within(sock, started + bound), \
                    f"{kind}: still open {time.monotonic() - started:.0f} s after connecting"
            cut_after[kind] = time.monotonic() - started
    finally:
        for socks in stalled.values():
            for sock in socks:
                sock.close()
    wait_until(lambda: _open_fds(victim_pid) <= fds_before + 5, 10.0,
               "V's file descriptors to return to what they were")
    print(f"\n  {total} stalled connections; V fds {fds_before} -> {fds_stalled} -> "
          f"{_open_fds(victim_pid)}; all found closed when checked (s since opening): "
          + ", ".join(f"{k} {v:.0f}" for k, v in cut_after.items()))
    assert fds_stalled >= fds_before + total // 2  # they really were held, then freed
    assert victim.sees_online(friend.device_id())


def test_pairing_brute_force_burns_every_code(
        trio_of_daemons: tuple[Node, Node, Node, Path]) -> None:
    """An attacker who reaches the inviter guesses codes: the first wrong guess burns
    the invitation; later guesses, the right code included, are refused without another
    key exchange.  Over three invitations the attacker never pairs."""
    victim, friend, stranger, _ = trio_of_daemons
    attempts: list[str] = []
    for round_ in range(3):
        invitation = Invitation(victim)
        try:
            code = parse_code(invitation.code)
            guesses = [wrong_words(code), wrong_words(wrong_words(code)), code]
            for guess in guesses:
                proc = stranger.cli("pair", str(guess), "--address", victim.address,
                                    "--timeout", "10")
                assert proc.returncode != 0, (round_, guess)
                attempts.append(one_error_line(proc))
            rc, out, err = invitation.finish()
        finally:
            invitation.close()
        assert rc != 0 and out == b""
        assert "wrong code" in one_error_line((rc, err))
    print("\n  " + "\n  ".join(attempts))
    for first, second, right in zip(attempts[::3], attempts[1::3], attempts[2::3], strict=True):
        assert "wrong code" in first
        for later in (second, right):
            assert "already used" in later or "expired" in later, later
    assert full_log(victim).count("(code burned)") >= 3
    assert [p["id"] for p in victim.peers()] == [friend.device_id()]
    assert all(p["id"] != victim.device_id() for p in stranger.peers())


def test_a_flood_of_pending_connections_is_capped(
        trio_of_daemons: tuple[Node, Node, Node, Path]) -> None:
    """More unauthenticated connections than MAX_PENDING_CONNECTIONS at once: the extra
    ones are closed on arrival, so they cannot take every file descriptor V has; V's
    established link and its CLI keep working, and once the flood times out new
    connections are served again."""
    from dizzy.daemon.listener import MAX_PENDING_CONNECTIONS

    victim, friend, _, tmp = trio_of_daemons
    victim_pid = pid(victim)
    fds_before = _open_fds(victim_pid)
    extra = 200
    socks: list[socket.socket] = []
    started = time.monotonic()
    try:
        for _ in range(MAX_PENDING_CONNECTIONS + extra):
            socks.append(socket.create_connection(("127.0.0.1", victim.port), 5.0))
        time.sleep(1.0)
        peak = max(_open_fds(victim_pid) for _ in range(10) if time.sleep(0.1) is None)
        closed_at_once = sum(_closed_now(s) for s in socks)
        assert victim.status()["device_id"] == victim.device_id()
        friend_gets_fresh_object(victim, friend, tmp, "flood")
        print(f"\n  {len(socks)} silent connections: {closed_at_once} closed on arrival; "
              f"V fds {fds_before} -> peak {peak}")
        assert extra * 0.9 <= closed_at_once <= extra + 30, closed_at_once
        assert peak <= fds_before + MAX_PENDING_CONNECTIONS + 30, peak
        assert full_log(victim).count("connections are already waiting") >= 1
        # The rest time out (preamble: 10 s), and a new connection is served again.
        for s in socks:
            assert _closed_within(s, started + PEER_STALL_BOUND)
    finally:
        for s in socks:
            s.close()
    mark = len(full_log(victim))
    with socket.create_connection(("127.0.0.1", victim.port), 5.0) as probe:
        probe.sendall(b"DZY1HTTP")  # a bad preamble: refused at once, so it was read
        assert _closed_within(probe, time.monotonic() + 5.0)
    wait_until(lambda: "unknown connection kind" in full_log(victim)[mark:], 5.0,
               "V to read (and refuse) a new connection after the flood")
    wait_until(lambda: _open_fds(victim_pid) <= fds_before + 5, 10.0,
               "V's file descriptors to return to what they were")
