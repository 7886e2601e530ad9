"""Pairing between real daemons in network namespaces, found by real mDNS.

Each host (tests/netns.py) runs a real ``dizzy daemon`` with mDNS on, listening on its
LAN address.  The CLI runs inside the host's namespace too, as a user would run it.
Only namespaces made by the harness ever see multicast.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.daemons import DaemonProcess, dizzy_argv
from tests.netns import NAME_PREFIX, Host, list_namespaces, netns_hosts

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PORT = 22070
#: bound on every "eventually" below; real latencies are around a second
POLL_DEADLINE = 20.0
POLL_INTERVAL = 0.1
#: a CLI call that does not hang
CLI_TIMEOUT = 30.0
#: `dizzy pair CODE` over mDNS on a quiet LAN takes well under 2 s
PAIR_LIMIT = 10.0
#: how long a refused device is watched to make sure it stays out
STAYS_OFFLINE = 5.0


class Node:
    """A host of the test LAN running one real daemon (mDNS on)."""

    def __init__(self, host: Host, tmp_path: Path, name: str, *extra: str) -> None:
        self.host = host
        self.name = name
        self.home = tmp_path / name
        self.daemon = DaemonProcess(
            self.home,
            ["--listen", f"{host.addr}:{PORT}", "--name", name, *extra],
            prefix=host.argv([]),
        )
        self.device_id = ""

    def start(self) -> Node:
        self.daemon.start(wait=False)
        return self

    def wait_ready(self) -> Node:
        self.daemon.wait_ready()
        self.device_id = self.cli_ok("id").strip()
        status = json.loads(self.cli_ok("status", "--json"))
        assert status["device_id"] == self.device_id, status
        return self

    def argv(self, *args: str) -> list[str]:
        return self.host.argv(dizzy_argv("--home", str(self.home), *args))

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False
        )

    def cli_ok(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        done = self.cli(*args, timeout=timeout)
        assert done.returncode == 0, (
            f"{self.name}: dizzy {' '.join(args)} -> {done.returncode}: {done.stderr}\n"
            f"{self.log()}"
        )
        return done.stdout

    def peers(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = json.loads(self.cli_ok("peers", "--json"))
        return result

    def peers_all(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cli_ok("peers", "--json", "--all"))
        return result

    def peer(self, other: Node) -> dict[str, Any] | None:
        return next((p for p in self.peers() if p["id"] == other.device_id), None)

    def log(self) -> str:
        return f"--- {self.name} daemon log ---\n{self.daemon.log()}"

    def stop(self) -> None:
        self.daemon.stop()


class Inviter:
    """A running ``dizzy pair`` (no code): its stdout lines arrive on a queue."""

    def __init__(self, node: Node, timeout: float = 30.0) -> None:
        self.node = node
        self.proc = node.host.run(
            dizzy_argv("--home", str(node.home), "pair", "--timeout", str(timeout)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self, timeout: float = 10.0) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"`dizzy pair` printed nothing in {timeout} s\n"
                                 f"{self.node.log()}") from None
        if line is None:
            raise AssertionError(f"`dizzy pair` ended early ({self.proc.wait()}): "
                                 f"{self.stderr()}\n{self.node.log()}")
        return line

    def finish(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read()


def poll(what: str, check: Callable[[], Any], logs: Callable[[], str],
         deadline: float = POLL_DEADLINE) -> tuple[Any, float]:
    """Call ``check`` until it returns something truthy; that and the time it took."""
    start = time.monotonic()
    while True:
        value = check()
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > deadline:
            raise AssertionError(f"{what}: not within {deadline} s (last: {value!r})\n{logs()}")
        time.sleep(POLL_INTERVAL)


def start_nodes(hosts: list[Host], tmp_path: Path, names: list[str]) -> list[Node]:
    """Start the daemons together, as machines boot independently on a LAN."""
    nodes = [Node(h, tmp_path, n).start() for h, n in zip(hosts, names, strict=True)]
    for node in nodes:
        node.wait_ready()
    return nodes


def all_logs(*nodes: Node) -> Callable[[], str]:
    return lambda: "\n".join(n.log() for n in nodes)


def stop_all(nodes: list[Node]) -> None:
    errors = []
    for node in nodes:
        try:
            node.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, errors


def pair(inviter: Node, joiner: Node) -> float:
    """Pair over mDNS with the real CLI on both sides; the joiner's time, in seconds."""
    invite = Inviter(inviter)
    code = invite.line()
    assert code.split("-")[0].isdigit() and len(code.split("-")) == 4, code
    started = time.monotonic()
    done = joiner.cli("pair", code, "--timeout", "15")
    elapsed = time.monotonic() - started
    logs = all_logs(inviter, joiner)
    assert done.returncode == 0, f"pair {code}: {done.returncode} {done.stderr}\n{logs()}"
    assert done.stdout.strip() == inviter.device_id, done.stdout
    rc = invite.finish()
    assert rc == 0, f"inviter exited {rc}: {invite.stderr()}\n{logs()}"
    assert invite.line() == joiner.device_id
    return elapsed


def online_with(node: Node, other: Node) -> Callable[[], bool]:
    def check() -> bool:
        peer = node.peer(other)
        return peer is not None and peer["online"] is True

    return check


@pytest.fixture(autouse=True)
def _no_leftover_namespaces() -> Iterator[None]:
    yield
    ours = [n for n in list_namespaces() if n.startswith(f"{NAME_PREFIX}{os.getpid()}-")]
    assert ours == [], f"namespaces left behind: {ours}"


def test_pair_over_mdns_then_online(tmp_path: Path) -> None:
    with netns_hosts(2) as hosts:
        nodes: list[Node] = []
        try:
            nodes = start_nodes(hosts, tmp_path, ["alice", "bob"])
            a, b = nodes
            logs = all_logs(a, b)
            assert a.device_id != b.device_id
            # discovery: each sees the other as nearby (not paired) first
            _, latency = poll(
                "bob sees alice nearby",
                lambda: any(p["id"] == a.device_id for p in b.peers_all()["nearby"]),
                logs,
            )
            print(f"discovery: bob saw alice {latency:.2f} s after both daemons were ready")
            assert a.peers() == [] and b.peers() == []

            elapsed = pair(a, b)
            print(f"pairing over mDNS: `dizzy pair CODE` took {elapsed:.2f} s")
            assert elapsed < PAIR_LIMIT, logs()

            _, t_a = poll("alice shows bob online", online_with(a, b), logs)
            _, t_b = poll("bob shows alice online", online_with(b, a), logs)
            print(f"online after pairing: alice {t_a:.2f} s, bob {t_a + t_b:.2f} s")
            peer_b, peer_a = a.peer(b), b.peer(a)
            assert peer_b is not None and peer_a is not None
            assert peer_b["name"] == "bob" and peer_a["name"] == "alice"
            assert peer_b["paired_at"] and peer_a["paired_at"]
            # a paired device is no longer "nearby"
            everything = a.peers_all()
            assert [p["id"] for p in everything["paired"]] == [b.device_id]
            assert all(p["id"] != b.device_id for p in everything["nearby"])
            status = json.loads(a.cli_ok("status", "--json"))
            assert (status["peers_paired"], status["peers_online"]) == (1, 1), status
        finally:
            stop_all(nodes)


def test_unpaired_device_is_nearby_but_refused(tmp_path: Path) -> None:
    with netns_hosts(3) as hosts:
        nodes: list[Node] = []
        try:
            nodes = start_nodes(hosts[:2], tmp_path, ["alice", "bob"])
            a, b = nodes
            pair(a, b)
            # carol knows alice's address, but was never paired with her
            c = Node(hosts[2], tmp_path, "carol", "--peer", f"{a.host.addr}:{PORT}")
            nodes.append(c.start())
            c.wait_ready()
            logs = all_logs(a, b, c)

            def carol_nearby() -> dict[str, Any] | None:
                info = a.peers_all()
                assert all(p["id"] != c.device_id for p in info["paired"]), info
                return next((p for p in info["nearby"] if p["id"] == c.device_id), None)

            seen, latency = poll("alice sees carol nearby", carol_nearby, logs)
            print(f"discovery: alice saw carol {latency:.2f} s after carol was ready")
            assert seen["name"] == "carol"
            assert seen["addresses"] == [f"{c.host.addr}:{PORT}"]
            assert seen["pairing"] is False

            # With nobody paired carol dials no one (no trust, no TLS context).  Paired
            # with bob, her static dialer tries alice, and the handshake must fail.
            pair(b, c)
            poll("carol shows bob online", online_with(c, b), logs)

            # Alice presents her certificate first and carol, who does not trust it,
            # aborts the handshake.  trio's SSLStream drops the TLS alert carol's
            # OpenSSL queued, so alice sees a bare EOF and logs a failed handshake
            # (not a "refusal") - with carol's claimed device ID either way.
            def refused_in_alice_log() -> bool:
                return any(
                    c.device_id in line and ("refused" in line or "TLS handshake" in line)
                    for line in a.daemon.log().splitlines()
                )

            def refused_in_carol_log() -> bool:
                return any(
                    f"{a.host.addr}:{PORT} presented a certificate of an unpaired device" in line
                    for line in c.daemon.log().splitlines()
                )

            poll("alice's log shows carol's handshake failing", refused_in_alice_log, logs)
            poll("carol's log shows alice refused", refused_in_carol_log, logs)
            deadline = time.monotonic() + STAYS_OFFLINE
            while time.monotonic() < deadline:
                assert [p["id"] for p in a.peers()] == [b.device_id], logs()
                assert all(p["id"] != a.device_id for p in c.peers()), logs()
                time.sleep(0.5)
            assert "connected from" not in "".join(
                line for line in a.daemon.log().splitlines() if c.device_id in line
            ), logs()
        finally:
            stop_all(nodes)


def wrong_code_scenario(tmp_path: Path) -> dict[str, str]:
    """Alice invites, bob joins over mDNS with one word wrong, then with the right code.

    Checks everything on bob's side and that the code is burned; returns the error
    lines of alice's ``dizzy pair`` ("inviter") and of bob's late right code ("late").
    """
    with netns_hosts(2) as hosts:
        nodes: list[Node] = []
        try:
            nodes = start_nodes(hosts, tmp_path, ["alice", "bob"])
            a, b = nodes
            logs = all_logs(a, b)
            invite = Inviter(a)
            code = invite.line()
            nameplate, *words = code.split("-")
            other = "apple" if words[0] != "apple" else "river"
            wrong = "-".join([nameplate, other, *words[1:]])
            done = b.cli("pair", wrong, "--timeout", "15")
            assert done.returncode != 0, done
            assert "wrong code" in done.stderr, f"{done.stderr}\n{logs()}"
            assert done.stderr.count("\n") == 1, done.stderr
            rc = invite.finish()
            err = invite.stderr()
            assert rc != 0, f"{rc}: {err}\n{logs()}"
            assert err.count("\n") == 1, err
            assert a.peers() == [] and b.peers() == []

            # the right code, now too late: spent by the wrong guess
            direct = b.cli("pair", code, "--address", f"{a.host.addr}:{PORT}", "--timeout", "10")
            assert direct.returncode != 0, direct
            print(f"right code after the wrong guess: {direct.stderr.strip()}")
            assert "expired" in direct.stderr or "already used" in direct.stderr, direct.stderr
            # over mDNS the withdrawn nameplate is not found at all (or found stale,
            # then refused): it fails either way
            mdns = b.cli("pair", code, "--timeout", "3")
            assert mdns.returncode != 0, mdns
            print(f"... and over mDNS: {mdns.stderr.strip()}")
            assert any(
                s in mdns.stderr for s in ("expired", "already used", "no device nearby")
            ), mdns.stderr
            assert a.peers() == [] and b.peers() == []
            return {"inviter": err, "late": direct.stderr}
        finally:
            stop_all(nodes)


def test_wrong_code_burns_the_invitation(tmp_path: Path) -> None:
    wrong_code_scenario(tmp_path)


def test_wrong_code_is_reported_by_the_inviter(tmp_path: Path) -> None:
    err = wrong_code_scenario(tmp_path)["inviter"]
    assert "wrong code" in err, err


def test_burned_code_is_reported_as_used(tmp_path: Path) -> None:
    err = wrong_code_scenario(tmp_path)["late"]
    assert "already used" in err, err


def test_unpair_cuts_and_keeps_out(tmp_path: Path) -> None:
    with netns_hosts(2) as hosts:
        nodes: list[Node] = []
        try:
            nodes = start_nodes(hosts, tmp_path, ["alice", "bob"])
            a, b = nodes
            logs = all_logs(a, b)
            pair(a, b)
            poll("bob shows alice online", online_with(b, a), logs)
            poll("alice shows bob online", online_with(a, b), logs)

            a.cli_ok("unpair", b.device_id)
            assert a.peers() == []
            _, took = poll("bob shows alice offline", lambda: not online_with(b, a)(), logs)
            print(f"bob saw alice offline {took:.2f} s after unpair")
            # bob still trusts alice and keeps dialing; alice refuses every attempt
            deadline = time.monotonic() + STAYS_OFFLINE
            while time.monotonic() < deadline:
                peer = b.peer(a)
                assert peer is not None and peer["online"] is False, f"{peer}\n{logs()}"
                assert a.peers() == [], logs()
                time.sleep(0.5)
            refusals = [
                line for line in a.daemon.log().splitlines()
                if "refused" in line and b.device_id in line
            ]
            assert refusals, logs()
            again = a.cli("unpair", b.device_id)
            assert again.returncode != 0 and "not paired" in again.stderr, again
        finally:
            stop_all(nodes)
