"""Hosts in network namespaces, for tests that run several real dizzy daemons.

``netns_hosts(n)`` builds a private LAN of ``n`` hosts and yields ``Host`` objects::

    switch ns  <prefix>-sw   : bridge br0 with ports p1..pn (no address, no IP traffic)
    host ns    <prefix>-h<i> : lo + eth0 (10.77.<run>.<i>/24, route 224.0.0.0/4 -> eth0)

Every interface is created *inside* those namespaces (``ip -n NS link add ... peer
... netns SW``), so nothing is ever added to the root namespace, and multicast sent
by a host reaches only the other test hosts.  Names carry the pid, so parallel runs
do not clash and leftovers of dead runs can be recognised and removed.

Usage in a test::

    from tests.netns import netns_hosts

    @pytest.mark.netns
    def test_two_daemons() -> None:
        with netns_hosts(2) as (a, b):
            proc = a.run(["dizzy", "--home", str(tmp / "a"), "daemon"])
            b.check_output(["ping", "-c1", "-W1", a.addr], timeout=5)
            a.link_down()   # pull the cable; a.link_up() plugs it back

``netns_hosts`` calls ``pytest.skip`` when not root or when ``ip netns`` does not work.
On exit (also on an exception or KeyboardInterrupt) it kills whatever runs in the
namespaces and deletes them.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

#: every namespace this harness creates starts with this (then the creating pid)
NAME_PREFIX = "dz"
#: a /16 reserved for these tests; the hosts never route anywhere, so any private
#: range works, but one fixed prefix makes them easy to spot in `ip netns exec` output
SUBNET_PREFIX = "10.77"
#: one `ip` invocation; they take milliseconds, a hang means a broken system
IP_TIMEOUT = 10.0
#: SIGTERM grace before SIGKILL at cleanup; daemons need a moment to say goodbye
STOP_GRACE = 3.0
#: the namespace name limit is generous, but keep them short for readable `ip` output
_LEFTOVER = re.compile(rf"^{NAME_PREFIX}(\d+)-\d+-(?:sw|h\d+)$")

_run_counter = itertools.count(1)
#: namespaces this process created and has not deleted yet; the atexit hook sweeps
#: them if a test run dies without reaching its `finally`
_live_namespaces: set[str] = set()


class NetnsError(RuntimeError):
    """An `ip` command failed while building or changing the test network."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def netns_unavailable_reason() -> str | None:
    """Why netns tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespace tests need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    try:
        proc = _ip("netns", "list", check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns` does not work: {exc}"
    if proc.returncode != 0:
        return f"`ip netns` does not work: {proc.stderr.strip()}"
    return None


def list_namespaces() -> list[str]:
    # `ip netns list` prints "name (id: 3)" once an id is assigned
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line]


def _delete_namespace(name: str) -> None:
    """Kill everything inside, then delete; best effort, never raises."""
    with contextlib.suppress(Exception):
        pids = _ip("netns", "pids", name, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    with contextlib.suppress(Exception):
        _ip("netns", "del", name, check=False)
    _live_namespaces.discard(name)


def remove_leftovers() -> list[str]:
    """Delete namespaces left by harness runs whose process no longer exists."""
    removed = []
    for name in list_namespaces():
        match = _LEFTOVER.match(name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            _delete_namespace(name)
            removed.append(name)
    return removed


@atexit.register
def _sweep_at_exit() -> None:
    for name in list(_live_namespaces):
        _delete_namespace(name)


@dataclass
class Host:
    """One machine of the test LAN: a namespace with one interface on the switch."""

    name: str
    addr: str
    index: int
    switch: str
    iface: str = "eth0"
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process in this host; it is killed when the network is torn down.

        A new session by default, so a terminal's Ctrl-C reaches pytest (which then
        cleans up) and the whole process group can be signalled at once.
        """
        popen_kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(argv), **popen_kwargs)
        self.processes.append(proc)
        return proc

    def check_output(self, argv: Sequence[str], timeout: float = 10.0, **kwargs: Any) -> str:
        """Run to completion in this host; its stdout, or CalledProcessError."""
        done: subprocess.CompletedProcess[str] = subprocess.run(
            self.argv(argv), capture_output=True, text=True, timeout=timeout, check=True, **kwargs
        )
        return done.stdout

    def link_down(self) -> None:
        """Pull the cable: the switch port goes down and this host loses carrier."""
        _ip("-n", self.switch, "link", "set", f"p{self.index}", "down")

    def link_up(self) -> None:
        _ip("-n", self.switch, "link", "set", f"p{self.index}", "up")

    def stop_processes(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM every process started with ``run``, SIGKILL what outlives ``grace``."""
        for proc in self.processes:
            _signal_group(proc, signal.SIGTERM)
        # one deadline for all: they shut down in parallel
        deadline = time.monotonic() + grace
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace)
        self.processes.clear()


def _signal_group(proc: subprocess.Popen[Any], sig: signal.Signals) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _build(run_prefix: str, subnet: str, n: int, ipv6: bool) -> list[Host]:
    switch = f"{run_prefix}-sw"
    _ip("netns", "add", switch)
    _live_namespaces.add(switch)
    # Snooping off: with no querier on this LAN the bridge could otherwise stop
    # forwarding multicast to ports it has not seen join.
    _ip("-n", switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
    _ip("-n", switch, "link", "set", "br0", "up")
    hosts = []
    for i in range(1, n + 1):
        host = Host(name=f"{run_prefix}-h{i}", addr=f"{subnet}.{i}", index=i, switch=switch)
        _ip("netns", "add", host.name)
        _live_namespaces.add(host.name)
        if not ipv6:
            # No IPv6 noise (router solicitations, DAD, link-local mDNS) unless asked.
            for scope in ("all", "default"):
                write_sysctl(host.name, f"net/ipv6/conf/{scope}/disable_ipv6", "1")
        _ip("-n", host.name, "link", "set", "lo", "up")
        _ip(
            "-n", host.name, "link", "add", host.iface, "type", "veth",
            "peer", "name", f"p{i}", "netns", switch,
        )  # fmt: skip
        _ip("-n", switch, "link", "set", f"p{i}", "master", "br0")
        _ip("-n", switch, "link", "set", f"p{i}", "up")
        _ip("-n", host.name, "addr", "add", f"{host.addr}/24", "dev", host.iface)
        _ip("-n", host.name, "link", "set", host.iface, "up")
        # mDNS goes to 224.0.0.251; the namespace has no default route, so say where.
        _ip("-n", host.name, "route", "add", "224.0.0.0/4", "dev", host.iface)
        hosts.append(host)
    return hosts


def write_sysctl(namespace: str, key: str, value: str) -> None:
    """Set a sysctl inside ``namespace`` (the /proc/sys/net view follows the netns)."""
    subprocess.run(
        ["ip", "netns", "exec", namespace, "sh", "-c", f"echo {value} > /proc/sys/{key}"],
        check=True,
        timeout=IP_TIMEOUT,
        capture_output=True,
    )


@contextlib.contextmanager
def netns_hosts(n: int, *, ipv6: bool = False) -> Iterator[list[Host]]:
    """A fresh private LAN of ``n`` hosts; everything is removed on exit."""
    if not 1 <= n <= 250:
        raise ValueError("1 to 250 hosts per test network")
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    remove_leftovers()
    seq = next(_run_counter)
    run_prefix = f"{NAME_PREFIX}{os.getpid()}-{seq}"
    # the subnet only has to be unique on this bridge; varying it per run keeps
    # addresses in logs of parallel runs apart
    subnet = f"{SUBNET_PREFIX}.{(os.getpid() + seq) % 250 + 1}"
    created_before = set(_live_namespaces)
    hosts: list[Host] = []
    try:
        hosts = _build(run_prefix, subnet, n, ipv6)
        yield hosts
    finally:
        for host in hosts:
            with contextlib.suppress(Exception):
                host.stop_processes()
        for name in sorted(_live_namespaces - created_before, key=lambda s: s.endswith("-sw")):
            if name.startswith(run_prefix + "-"):
                _delete_namespace(name)


@pytest.fixture
def netns_factory() -> Iterator[Callable[[int], list[Host]]]:
    """Fixture form: ``hosts = netns_factory(3)``; torn down after the test.

    Import it into a test module or conftest (``from tests.netns import netns_factory``)
    to make it available.
    """
    with contextlib.ExitStack() as stack:
        yield lambda n: stack.enter_context(netns_hosts(n))
