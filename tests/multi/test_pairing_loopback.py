"""Pairing, reconnecting and unpairing between real daemon processes on loopback.

Every daemon runs with ``--no-mdns`` on 127.0.0.1: pairing goes through
``dizzy pair CODE --address HOST:PORT`` and nothing is ever multicast.  Nothing here
sleeps a fixed time: every wait polls against a deadline, and every daemon and
``dizzy pair`` process is stopped in a ``finally``.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dizzy.protocol.framing import encode_frame
from dizzy.protocol.pairing import PAIRING_MAX_FRAME, Joiner, LocalInfo
from dizzy.protocol.pairing_code import WORDS, PairingCode
from dizzy.protocol.pairing_code import parse as parse_code
from tests.daemons import STOP_TIMEOUT, DaemonProcess, dizzy_argv, run_cli
from tests.event_lines import popen, recent_events

#: a pairing between two idle loopback daemons takes well under a second via the CLI
PAIR_TIMEOUT = 20.0
#: paired daemons connect (or notice a loss) this soon
ONLINE_TIMEOUT = 8.0
#: B redials a restarted A with backoff 1, 2, 4 s (+-25%): well inside this
RECONNECT_TIMEOUT = 12.0


# ------------------------------------------------------------------------ helpers


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def one_error_line(proc: subprocess.CompletedProcess[bytes] | tuple[int, bytes]) -> str:
    """The stderr of a failed CLI run: exactly one line starting with ``dizzy: ``."""
    stderr = proc.stderr if isinstance(proc, subprocess.CompletedProcess) else proc[1]
    lines = stderr.decode(errors="replace").splitlines()
    assert len(lines) == 1, f"want one stderr line, got {lines!r}"
    assert lines[0].startswith("dizzy: "), lines
    return lines[0]


@dataclass
class Node:
    """One daemon on loopback, restartable on the port it first got."""

    home: Path
    name: str
    port: int = 0
    extra: list[str] = field(default_factory=list)
    daemon: DaemonProcess | None = None

    def start(self, *extra: str) -> Node:
        assert self.daemon is None or self.daemon.proc is None or \
            self.daemon.proc.poll() is not None
        self.extra = list(extra)
        self.daemon = DaemonProcess(self.home, [
            "--no-mdns", "--listen", f"127.0.0.1:{self.port}", "--name", self.name, *extra,
        ]).start()
        listen = self.status()["listen"]
        host, _, port = listen.rpartition(":")
        assert host == "127.0.0.1", listen
        if self.port:
            assert int(port) == self.port, listen
        self.port = int(port)
        return self

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()

    def restart(self, *extra: str) -> Node:
        self.stop()
        return self.start(*extra)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.daemon is not None and self.daemon.proc is not None and \
            self.daemon.proc.poll() is None

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
        return run_cli(self.home, *args, timeout=timeout)

    def status(self) -> dict[str, Any]:
        proc = self.cli("status", "--json")
        assert proc.returncode == 0, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def device_id(self) -> str:
        proc = self.cli("id")
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.decode().strip()

    def peers(self) -> list[dict[str, Any]]:
        proc = self.cli("peers", "--json")
        assert proc.returncode == 0, proc.stderr
        result: list[dict[str, Any]] = json.loads(proc.stdout)
        return result

    def peer(self, device_id: str) -> dict[str, Any] | None:
        return next((p for p in self.peers() if p["id"] == device_id), None)

    def sees_online(self, device_id: str) -> bool:
        peer = self.peer(device_id)
        return peer is not None and peer["online"] is True

    def sees_offline(self, device_id: str) -> bool:
        peer = self.peer(device_id)
        return peer is not None and peer["online"] is False

    def log(self) -> str:
        return self.daemon.log() if self.daemon is not None else ""


class Invitation:
    """A running ``dizzy pair`` (the inviter): its code, then its outcome."""

    def __init__(self, node: Node, timeout: float = PAIR_TIMEOUT) -> None:
        self.proc = subprocess.Popen(
            dizzy_argv("--home", str(node.home), "pair", "--timeout", f"{timeout:g}"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self._stdout = b""
        self.code = self._first_line(15.0)

    def _first_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._stdout:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("`dizzy pair` printed no code in time")
                if sel.select(left):
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        err = self.proc.stderr.read() if self.proc.stderr else b""
                        raise AssertionError(f"`dizzy pair` exited without a code: {err!r}")
                    self._stdout += chunk
        line, _, self._stdout = self._stdout.partition(b"\n")
        return line.decode().strip()

    def finish(self, timeout: float = PAIR_TIMEOUT) -> tuple[int, bytes, bytes]:
        """Wait for the inviter to exit: (returncode, rest of stdout, stderr)."""
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, self._stdout + out, err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=STOP_TIMEOUT)


def pair(inviter: Node, joiner: Node) -> tuple[str, str, float]:
    """Pair via the CLI; returns (ID the inviter printed, ID the joiner printed, seconds)."""
    started = time.monotonic()
    invitation = Invitation(inviter)
    try:
        joined = joiner.cli("pair", invitation.code, "--address", inviter.address,
                            "--timeout", "15", timeout=PAIR_TIMEOUT)
        rc, out, err = invitation.finish()
    finally:
        invitation.close()
    elapsed = time.monotonic() - started
    assert joined.returncode == 0, (joined.stderr, joiner.log(), inviter.log())
    assert rc == 0, (err, inviter.log())
    return out.decode().strip(), joined.stdout.decode().strip(), elapsed


def wrong_words(code: PairingCode) -> PairingCode:
    """The same nameplate with different words: reaches the inviter, fails SPAKE2."""
    others = [w for w in WORDS if w not in code.words][:3]
    return PairingCode(code.nameplate, (others[0], others[1], others[2]))


def raw_connect(node: Node) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=5.0)
    return sock


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True once the daemon has closed ``sock`` (EOF or reset) within ``timeout``."""
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


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    a = Node(tmp_path / "a", "alpha")
    b = Node(tmp_path / "b", "bravo")
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        # Stop both even if one ignores SIGTERM, then report that (it is a bug).
        errors: list[AssertionError] = []
        for node in (a, b):
            try:
                node.stop()
            except AssertionError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def paired(nodes: tuple[Node, Node]) -> tuple[Node, Node, str, str]:
    a, b = nodes
    a_id, b_id = a.device_id(), b.device_id()
    printed_by_a, printed_by_b, _ = pair(a, b)
    assert (printed_by_a, printed_by_b) == (b_id, a_id)
    wait_until(lambda: a.sees_online(b_id) and b.sees_online(a_id), ONLINE_TIMEOUT,
               "both daemons to list each other online")
    return a, b, a_id, b_id


# -------------------------------------------------------------------------- tests


def test_pair_then_online_and_reconnect_after_restart(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    a_id, b_id = a.device_id(), b.device_id()
    printed_by_a, printed_by_b, elapsed = pair(a, b)
    print(f"\npairing wall time via the CLI (invite + join + exits): {elapsed * 1000:.0f} ms")
    assert printed_by_a == b_id
    assert printed_by_b == a_id

    t0 = time.monotonic()
    wait_until(lambda: a.sees_online(b_id) and b.sees_online(a_id), ONLINE_TIMEOUT,
               "both daemons to list each other online")
    print(f"online on both sides {time.monotonic() - t0:.2f} s after pairing")
    (peer_of_a,) = a.peers()
    (peer_of_b,) = b.peers()
    assert peer_of_a["name"] == "bravo" and peer_of_b["name"] == "alpha"
    assert peer_of_b["address"] == a.address
    assert peer_of_a["paired_at"] and peer_of_b["paired_at"]

    # A goes away: B notices, then redials with backoff once A is back on its port.
    a.stop()
    wait_until(lambda: b.sees_offline(a_id), ONLINE_TIMEOUT, "B to see A offline")
    t0 = time.monotonic()
    a.start()
    wait_until(lambda: b.sees_online(a_id), RECONNECT_TIMEOUT, "B to see A online again")
    wait_until(lambda: a.sees_online(b_id), ONLINE_TIMEOUT, "A to see B online again")
    print(f"reconnected {time.monotonic() - t0:.2f} s after A restarted")
    # Trust survived the restart, pairing time and all.
    (again,) = a.peers()
    assert again["id"] == b_id and again["paired_at"] == peer_of_a["paired_at"]
    assert [p["id"] for p in b.peers()] == [a_id]


def test_wrong_code_fails_both_sides_and_burns_the_code(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    invitation = Invitation(a)
    try:
        code = parse_code(invitation.code)
        wrong = b.cli("pair", str(wrong_words(code)), "--address", a.address,
                      "--timeout", "10")
        rc, out, err = invitation.finish()
    finally:
        invitation.close()
    assert wrong.returncode != 0
    assert "wrong code" in one_error_line(wrong)
    assert wrong.stdout == b""
    # The inviter's `pair` fails too, with one line (which should say "wrong code":
    # see test_wrong_code_inviter_is_told_why).
    assert rc != 0
    one_error_line((rc, err))
    assert out == b""

    # The right code, now: single-use codes do not come back after a wrong guess.
    late = b.cli("pair", str(code), "--address", a.address, "--timeout", "10")
    assert late.returncode != 0
    line = one_error_line(late)
    assert "already used" in line or "expired" in line, line
    assert a.peers() == [] and b.peers() == []
    assert a.alive() and b.alive()
    # Both event streams say so; the words of the code never appear in one.
    for node, needle in ((a, "code burned"), (b, "wrong code")):
        watch = popen(node.home, "events", "--json", "--since", "0")
        try:
            watch.until(lambda s, n=needle: "pairing.failed" in s and n in s,
                        f"{node.name}'s pairing.failed")
        finally:
            watch.close()
        assert "-".join(code.words) not in "".join(watch.lines)
    (started,) = [e for e in recent_events(a.home) if e["type"] == "pairing.started"]
    assert started["data"]["nameplate"] == code.nameplate




def test_wrong_code_inviter_is_told_why(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    invitation = Invitation(a)
    try:
        code = parse_code(invitation.code)
        b.cli("pair", str(wrong_words(code)), "--address", a.address, "--timeout", "10")
        rc, _, err = invitation.finish()
    finally:
        invitation.close()
    assert rc != 0
    assert "wrong code" in one_error_line((rc, err))


def test_expired_code(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    t0 = time.monotonic()
    invitation = Invitation(a, timeout=1)
    try:
        rc, out, err = invitation.finish(timeout=15)
    finally:
        invitation.close()
    assert time.monotonic() - t0 < 10
    assert rc != 0 and out == b""
    assert "expired" in one_error_line((rc, err))
    late = b.cli("pair", invitation.code, "--address", a.address, "--timeout", "10")
    assert late.returncode != 0
    line = one_error_line(late)
    assert "expired" in line or "no pairing is waiting" in line, line
    assert a.peers() == [] and b.peers() == []


@pytest.mark.parametrize("text", ["42", "notacode", "42-zzzz-yyyy-xxxx", "0-a-b-c", "   "])
def test_malformed_code_is_a_usage_error(nodes: tuple[Node, Node], text: str) -> None:
    a, b = nodes
    proc = b.cli("pair", text, "--address", a.address, "--timeout", "5")
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc)
    assert "pairing code" in line or "code" in line, line
    assert len(line) < 300
    assert b.alive() and b.status()
    assert a.alive()


def test_malformed_code_messages_help(nodes: tuple[Node, Node]) -> None:
    _, b = nodes
    short = one_error_line(b.cli("pair", "42", "--address", "127.0.0.1:1"))
    assert "3 words" in short and "like" in short, short
    word = one_error_line(b.cli("pair", "42-zzzz-yyyy-xxxx", "--address", "127.0.0.1:1"))
    assert "'zzzz'" in word and "not a pairing-code word" in word, word
    # A word one typo away from a real one gets a suggestion.
    real = WORDS[100]
    typo = real[:-1] + ("x" if real[-1] != "x" else "y")
    hint = one_error_line(b.cli("pair", f"42-{typo}-{WORDS[1]}-{WORDS[2]}",
                                "--address", "127.0.0.1:1"))
    assert typo in hint, hint


def _joiner_identity(tmp_path: Path) -> LocalInfo:
    from dizzy.daemon.identity import load_or_create_identity

    home = tmp_path / "raw-joiner"
    home.mkdir()
    identity = load_or_create_identity(home)
    return LocalInfo(identity.public_key_raw, identity.cert_pem, "raw joiner")


def test_second_joiner_gets_in_use(nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, b = nodes
    invitation = Invitation(a)
    sock: socket.socket | None = None
    try:
        code = parse_code(invitation.code)
        # A joiner that says hello and then stalls, holding the nameplate's claim.
        joiner = Joiner(code, _joiner_identity(tmp_path), os.urandom)
        (hello,) = joiner.start()
        sock = raw_connect(a)
        sock.sendall(b"DZY1PAIR" + encode_frame(hello, PAIRING_MAX_FRAME))
        # The inviter answers the hello with its PAKE message: the claim is now held.
        sock.settimeout(5.0)
        assert sock.recv(4)  # frame header of the "pake" reply
        busy = b.cli("pair", str(code), "--address", a.address, "--timeout", "10")
        assert busy.returncode != 0
        line = one_error_line(busy)
        assert "in use" in line or "another device is pairing" in line, line
        assert b.peers() == []
    finally:
        if sock is not None:
            sock.close()
        try:
            # The stalled joiner hung up after the inviter spent its code: it fails.
            rc, _, err = invitation.finish()
            assert rc != 0
            one_error_line((rc, err))
        finally:
            invitation.close()
    assert a.peers() == [] and a.alive()


def test_in_use_message_says_in_use(nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, b = nodes
    invitation = Invitation(a)
    sock: socket.socket | None = None
    try:
        code = parse_code(invitation.code)
        (hello,) = Joiner(code, _joiner_identity(tmp_path), os.urandom).start()
        sock = raw_connect(a)
        sock.sendall(b"DZY1PAIR" + encode_frame(hello, PAIRING_MAX_FRAME))
        sock.settimeout(5.0)
        assert sock.recv(4)
        busy = b.cli("pair", str(code), "--address", a.address, "--timeout", "10")
        line = one_error_line(busy)
    finally:
        if sock is not None:
            sock.close()
        invitation.close()
    assert "in use" in line, line


def test_garbage_at_the_listen_port(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    a_id, b_id = a.device_id(), b.device_id()
    idle: list[socket.socket] = []
    try:
        # Nothing at all: connect and hang up; connect and stay silent (kept open).
        raw_connect(a).close()
        idle.append(raw_connect(a))
        # Random bytes (not starting with the magic's "D"): dropped at once.
        s = raw_connect(a)
        s.sendall(b"\x00" + os.urandom(4096))
        assert closed_by_peer(s, 5.0), "daemon kept a connection that sent random bytes"
        s.close()
        # An HTTP client.
        s = raw_connect(a)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_by_peer(s, 5.0)
        s.close()
        # A pairing preamble then a frame header announcing 2 GiB: refused before buffering.
        s = raw_connect(a)
        s.sendall(b"DZY1PAIR" + struct.pack(">I", 0x7FFF_FFFF) + b"\x00" * 64)
        assert closed_by_peer(s, 5.0), "daemon kept an oversized pairing frame"
        s.close()
        # A pairing preamble then a valid-size frame of msgpack garbage / a wrong message.
        for body in (b"\xc1" * 16, encode_frame({"t": "done", "mac": b"x" * 32})[4:],
                     encode_frame({"t": "hello", "v": 1, "np": 5000, "pake": b"p" * 33})[4:]):
            s = raw_connect(a)
            s.sendall(b"DZY1PAIR" + struct.pack(">I", len(body)) + body)
            assert closed_by_peer(s, 5.0)
            s.close()
        # A pairing preamble, then hang up half-way through a frame.
        s = raw_connect(a)
        s.sendall(b"DZY1PAIR\x00\x00\x01\x00abc")
        s.close()
        # The TLS preamble with a made-up device digest, then garbage instead of a ClientHello.
        s = raw_connect(a)
        s.sendall(b"DZY1TLS\n" + os.urandom(32) + os.urandom(2048))
        assert closed_by_peer(s, 15.0), "daemon kept a TLS connection that sent garbage"
        s.close()
        # An unknown preamble kind.
        s = raw_connect(a)
        s.sendall(b"DZY1HTTP")
        assert closed_by_peer(s, 5.0)
        s.close()

        assert a.alive(), a.log()
        assert a.status()["device_id"] == a_id
        assert "Traceback" not in a.log(), a.log()
        # A real pairing still works, with the silent connection still open.
        printed_by_a, printed_by_b, _ = pair(a, b)
        assert (printed_by_a, printed_by_b) == (b_id, a_id)
        wait_until(lambda: a.sees_online(b_id) and b.sees_online(a_id), ONLINE_TIMEOUT,
                   "both daemons online after the garbage")
        # With a device paired, TLS garbage reaches the TLS handshake itself; claiming to
        # be B does not help.  The real link to B is not disturbed.
        from dizzy.protocol.ids import DeviceId

        for payload in (os.urandom(2048), b"\x16\x03\x01\xff\xff" + os.urandom(100), b""):
            s = raw_connect(a)
            s.sendall(b"DZY1TLS\n" + DeviceId.parse(b_id).digest + payload)
            if not payload:
                s.shutdown(socket.SHUT_WR)
            assert closed_by_peer(s, 15.0), "daemon kept a TLS connection that sent garbage"
            s.close()
        assert a.sees_online(b_id) and b.sees_online(a_id)
    finally:
        for s in idle:
            s.close()
    assert a.alive() and b.alive()
    assert "Traceback" not in a.log(), a.log()


def test_unpair(paired: tuple[Node, Node, str, str]) -> None:
    a, b, a_id, b_id = paired
    done = a.cli("unpair", b_id)
    assert done.returncode == 0, done.stderr
    assert a.peers() == []
    # B still trusts A but can no longer get in: A refuses it, so B lists it offline.
    wait_until(lambda: b.sees_offline(a_id), ONLINE_TIMEOUT, "B to see A offline")
    watch = popen(a.home, "events", "--json", "--since", "0")
    try:
        refused = json.loads(watch.until(
            lambda s: '"peer.refused"' in s and b_id in s, "A's refusal of B",
            timeout=RECONNECT_TIMEOUT))
    finally:
        watch.close()
    assert refused["data"]["reason"] and refused["data"]["address"].startswith("127.0.0.1:")
    mine = [(e["type"], e["data"].get("reason")) for e in watch.events()
            if e["data"].get("device_id") == b_id]
    assert ("peer.unpaired", None) in mine and ("peer.offline", "unpaired") in mine, mine
    assert a.peers() == []
    assert a.status()["peers_online"] == 0

    # Unpairing again, or a device never paired: not found, exit 3.
    again = a.cli("unpair", b_id)
    assert again.returncode == 3, again.stderr
    assert "not paired" in one_error_line(again)
    stranger = run_cli(a.home, "unpair", a_id)
    assert stranger.returncode == 3
    one_error_line(stranger)
    # Not a device ID at all: usage error, exit 2.
    for bad in ("nonsense", b_id[:-1] + ("A" if b_id[-1] != "A" else "B"), "x" * 500):
        proc = a.cli("unpair", bad)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert "device ID" in one_error_line(proc)
    assert a.alive() and b.alive()


def test_static_peers_reconnect(paired: tuple[Node, Node, str, str]) -> None:
    a, b, a_id, b_id = paired
    b.stop()
    a.stop()
    t0 = time.monotonic()
    a.start()
    b.start("--peer", a.address)
    wait_until(lambda: a.sees_online(b_id) and b.sees_online(a_id), RECONNECT_TIMEOUT,
               "both daemons online after restarting with --peer")
    print(f"\nreconnected {time.monotonic() - t0:.2f} s after restarting both")


def test_static_peer_on_the_inviter(paired: tuple[Node, Node, str, str]) -> None:
    """The inviter never learns the joiner's address; ``--peer`` lets it dial first."""
    a, b, a_id, b_id = paired
    b.stop()
    wait_until(lambda: a.sees_offline(b_id), ONLINE_TIMEOUT, "A to see B offline")
    a.restart("--peer", b.address)
    # B comes back on its port; A's static dialer (not B's) may be the one that connects.
    b.start()
    wait_until(lambda: a.sees_online(b_id) and b.sees_online(a_id), RECONNECT_TIMEOUT,
               "both online with A dialing B statically")
    assert a.daemon is not None
    a.daemon.signal(signal.SIGTERM)
    wait_until(lambda: b.sees_offline(a_id), ONLINE_TIMEOUT, "B to see A offline")
