"""Real mDNS discovery between hosts in network namespaces (tests/netns.py).

Each host runs a small driver (``DRIVER`` below) that starts ``open_discovery`` with a
fresh random device ID, prints every event as a JSON line and obeys commands on stdin
(``np 42``, ``np -``, ``find 42``, ``quit``).  The test reads those lines with bounded waits.
The pure helpers of the module (TXT parsing, the peer table) are tested at the end.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from dizzy.daemon.discovery import (
    MalformedAdvert,
    PeerGone,
    PeerSeen,
    PeerTable,
    build_txt,
    instance_name,
    parse_txt,
)
from dizzy.protocol.ids import DeviceId
from tests.netns import NAME_PREFIX, Host, list_namespaces, netns_hosts

#: first sight on a quiet LAN takes about a second (probing + announcement);
#: the margin covers a loaded CI machine without hiding a real failure
DISCOVERY_TIMEOUT = 10.0
#: a TXT update or a goodbye is one multicast packet away
UPDATE_TIMEOUT = 5.0
#: driver shutdown: goodbyes + zeroconf close, bounded by SHUTDOWN_TIMEOUT in the module
EXIT_TIMEOUT = 8.0
PORT = 22000

DRIVER = r"""
import json, logging, os, signal, sys, time
import trio
from dizzy.daemon.discovery import PeerGone, PeerSeen, open_discovery
from dizzy.protocol.ids import DeviceId

def emit(**fields):
    fields["t"] = time.monotonic()
    print(json.dumps(fields), flush=True)

logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
logging.getLogger("dizzy.daemon.discovery").setLevel(logging.DEBUG)

async def main():
    device_id = DeviceId(os.urandom(32))
    port, name = int(sys.argv[1]), sys.argv[2]
    # installed first, so a SIGTERM during startup still ends in a clean goodbye
    with trio.open_signal_receiver(signal.SIGTERM) as sigs:
        await run(device_id, port, name, sigs)
    emit(ev="stopped")

async def run(device_id, port, name, sigs):
    async with open_discovery(device_id, port=port, version=1, name=name) as disc:
        emit(ev="ready", id=str(device_id), service=disc.service_name)
        async with trio.open_nursery() as nursery:
            async def events():
                async for e in disc.events:
                    if isinstance(e, PeerSeen):
                        emit(ev="seen", id=str(e.device_id), addresses=e.addresses,
                             version=e.version, name=e.name, np=e.nameplate)
                    else:
                        emit(ev="gone", id=str(e.device_id))
            async def commands():
                # FdStream, not wrap_file: a read blocked in a thread cannot be
                # cancelled, and SIGTERM must end the driver promptly
                stdin, buf = trio.lowlevel.FdStream(os.dup(0)), b""
                while chunk := await stdin.receive_some():
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if await command(line.decode().split()):
                            nursery.cancel_scope.cancel()
                            return
                nursery.cancel_scope.cancel()
            async def find(nameplate):
                with trio.fail_after(10):
                    peer = await disc.wait_nameplate(nameplate)
                emit(ev="found", id=str(peer.device_id), addresses=peer.addresses)
            async def command(cmd):
                if cmd[:1] == ["find"]:
                    nursery.start_soon(find, int(cmd[1]))
                if cmd[:1] == ["np"]:
                    await disc.set_nameplate(None if cmd[1] == "-" else int(cmd[1]))
                    emit(ev="np_set", np=disc.nameplate)
                return cmd[:1] == ["quit"]
            async def signals():
                async for _ in sigs:
                    nursery.cancel_scope.cancel()
            nursery.start_soon(events)
            nursery.start_soon(commands)
            nursery.start_soon(signals)
        emit(ev="stopping", dropped=disc.dropped_events)

trio.run(main)
"""

#: a foreign responder advertising our service type with a TXT record we must ignore
BAD_ADVERT = r"""
import sys, time
from zeroconf import ServiceInfo, Zeroconf
zc = Zeroconf()
for i, txt in enumerate([{"id": "NOT-A-DEVICE-ID", "v": "1"}, {"v": "x"}, {}]):
    # cooperating_responders: skip probing, these names are unique on this LAN anyway
    zc.register_service(ServiceInfo("_dizzy._tcp.local.", f"bogus{i}._dizzy._tcp.local.",
        port=1, properties=txt, server=f"bogus{i}.local.", parsed_addresses=[sys.argv[1]]),
        cooperating_responders=True)
print("registered", flush=True)
time.sleep(20)
"""


class Driver:
    """One discovery process on a host, with its JSON events collected in a thread."""

    def __init__(self, host: Host, name: str, log_dir: Path) -> None:
        self.host = host
        self.name = name
        self.stderr_path = log_dir / f"{name}.stderr"
        self.started = time.monotonic()
        with self.stderr_path.open("w") as stderr:
            self.proc = host.run(
                [sys.executable, "-u", "-c", DRIVER, str(PORT), name],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.history: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        self.ready: dict[str, Any] = {}
        self.device_id = ""

    def wait_ready(self) -> Driver:
        """Wait until registered (probing done, first announcements sent)."""
        self.ready = self.expect(lambda e: e["ev"] == "ready", DISCOVERY_TIMEOUT)
        self.device_id = self.ready["id"]
        return self

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(json.loads(line))

    def expect(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The oldest not yet expected event that matches, waiting up to ``timeout``.

        Events skipped on the way stay pending for later ``expect`` calls: peers may
        be reported in any order.
        """
        for i, event in enumerate(self._pending):
            if match(event):
                return self._pending.pop(i)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self._lines.get(timeout=left)
            except queue.Empty:
                break
            self.history.append(event)
            if match(event):
                return event
            self._pending.append(event)
        raise AssertionError(
            f"{self.name}: no matching event in {timeout} s; saw {self.history}; "
            f"stderr: {self.stderr_path.read_text()[-2000:]}"
        )

    def seen(self, other: Driver, timeout: float, **fields: Any) -> dict[str, Any]:
        return self.expect(
            lambda e: (
                e["ev"] == "seen"
                and e["id"] == other.device_id
                and all(e[k] == v for k, v in fields.items())
            ),
            timeout,
        )

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()


@pytest.fixture(autouse=True)
def _no_leftover_namespaces() -> Iterator[None]:
    yield
    ours = [n for n in list_namespaces() if n.startswith(f"{NAME_PREFIX}{os.getpid()}-")]
    assert ours == [], f"namespaces left behind: {ours}"


@pytest.mark.netns
def test_three_hosts_see_each_other(tmp_path: Path) -> None:
    with netns_hosts(3) as hosts:
        # all spawned at once, as on a LAN where machines boot independently
        drivers = [Driver(h, f"host{h.index}", tmp_path) for h in hosts]
        for d in drivers:
            d.wait_ready()
            print(f"{d.name} registered {d.ready['t'] - d.started:.2f} s after spawn")
        for d in drivers:
            for other in drivers:
                if other is d:
                    continue
                event = d.seen(other, DISCOVERY_TIMEOUT)
                assert event["addresses"] == [[other.host.addr, PORT]]
                assert event["version"] == 1
                assert event["name"] == other.name
                assert event["np"] is None
                since_spawn = event["t"] - max(d.started, other.started)
                print(f"{d.name} saw {other.name} {since_spawn:.2f} s after both were spawned")
        # nobody reports itself
        for d in drivers:
            assert all(e.get("id") != d.device_id for e in d.history if e["ev"] == "seen")


@pytest.mark.netns
def test_nameplate_appears_and_clears(tmp_path: Path) -> None:
    with netns_hosts(2) as (host_a, host_b):
        a, b = Driver(host_a, "alice", tmp_path), Driver(host_b, "bob", tmp_path)
        for d in (a, b):
            d.wait_ready()
        b.seen(a, DISCOVERY_TIMEOUT, np=None)
        b.send("find 42")  # how `dizzy pair CODE` finds the inviter
        asked = time.monotonic()
        a.send("np 42")
        event = b.seen(a, UPDATE_TIMEOUT, np=42)
        found = b.expect(lambda e: e["ev"] == "found", UPDATE_TIMEOUT)
        assert (found["id"], found["addresses"]) == (a.device_id, [[host_a.addr, PORT]])
        print(f"nameplate visible {event['t'] - asked:.2f} s after set_nameplate was asked")
        a.expect(lambda e: e["ev"] == "np_set" and e["np"] == 42, UPDATE_TIMEOUT)
        a.send("np -")
        a.expect(lambda e: e["ev"] == "np_set" and e["np"] is None, UPDATE_TIMEOUT)
        b.seen(a, UPDATE_TIMEOUT, np=None)


@pytest.mark.netns
def test_peer_gone_when_one_stops(tmp_path: Path) -> None:
    with netns_hosts(2) as (host_a, host_b):
        a, b = Driver(host_a, "alice", tmp_path), Driver(host_b, "bob", tmp_path)
        for d in (a, b):
            d.wait_ready()
        b.seen(a, DISCOVERY_TIMEOUT)
        quit_at = time.monotonic()
        a.send("quit")
        gone = b.expect(lambda e: e["ev"] == "gone" and e["id"] == a.device_id, UPDATE_TIMEOUT)
        print(f"PeerGone {gone['t'] - quit_at:.2f} s after quit")
        a.expect(lambda e: e["ev"] == "stopped", EXIT_TIMEOUT)
        assert a.proc.wait(timeout=EXIT_TIMEOUT) == 0
        # SIGTERM (how the harness stops daemons) also ends with goodbyes
        c = Driver(host_a, "carol", tmp_path).wait_ready()
        b.seen(c, DISCOVERY_TIMEOUT)
        c.proc.terminate()
        b.expect(lambda e: e["ev"] == "gone" and e["id"] == c.device_id, UPDATE_TIMEOUT)
        assert c.proc.wait(timeout=EXIT_TIMEOUT) == 0


@pytest.mark.netns
def test_malformed_adverts_are_ignored(tmp_path: Path) -> None:
    with netns_hosts(3) as (host_a, host_b, host_c):
        bad = host_c.run(
            [sys.executable, "-u", "-c", BAD_ADVERT, host_c.addr],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert bad.stdout is not None and bad.stdout.readline().strip() == "registered"
        b = Driver(host_b, "bob", tmp_path).wait_ready()
        a = Driver(host_a, "alice", tmp_path).wait_ready()
        b.seen(a, DISCOVERY_TIMEOUT)
        # still alive and still processing events after meeting the bogus adverts
        a.send("np 7")
        b.seen(a, UPDATE_TIMEOUT, np=7)
        assert b.proc.poll() is None
        assert {e["id"] for e in b.history if e["ev"] == "seen"} == {a.device_id}
        # the bogus adverts did reach bob, and were dropped for the right reasons
        log = b.stderr_path.read_text()
        assert "Traceback" not in log
        assert "ignoring 'bogus0._dizzy._tcp.local.': not a device ID" in log
        assert "ignoring 'bogus1._dizzy._tcp.local.': TXT lacks id or v" in log
        assert "ignoring 'bogus2._dizzy._tcp.local.': TXT lacks id or v" in log


# --------------------------------------------------------------- pure helpers

DEV = DeviceId(bytes(range(32)))


def test_txt_round_trip() -> None:
    txt = build_txt(DEV, 1, "laptop", 42, serial=7)
    assert txt == {"id": str(DEV), "v": "1", "s": "7", "n": "laptop", "np": "42"}
    props = {k.encode(): v.encode() for k, v in txt.items()}
    assert parse_txt(props) == (DEV, 1, "laptop", 42)
    assert parse_txt({b"id": str(DEV).encode(), b"v": b"3"}) == (DEV, 3, None, None)


def test_long_names_are_cut_on_a_character_boundary() -> None:
    name = "é" * 100
    cut = build_txt(DEV, 1, name, None)["n"]
    assert len(cut.encode()) <= 63 and name.startswith(cut)


@pytest.mark.parametrize(
    "props",
    [
        {},
        {b"v": b"1"},
        {b"id": str(DEV).encode()},
        {b"id": b"MLM2HGZ-ODEIG7X", b"v": b"1"},
        {b"id": str(DEV).encode()[:-1] + b"A", b"v": b"1"},
        {b"id": str(DEV).encode(), b"v": b"one"},
        {b"id": str(DEV).encode(), b"v": None},
        {b"id": str(DEV).encode(), b"v": b"1", b"np": b"-3"},
        {b"id": str(DEV).encode(), b"v": b"1", b"np": b"9999999"},
        {b"id": b"\xff\xfe", b"v": b"1"},
    ],
)
def test_malformed_txt_is_refused(props: dict[bytes, bytes | None]) -> None:
    with pytest.raises(MalformedAdvert):
        parse_txt(props)


def test_instance_name_is_stable_and_readable() -> None:
    assert instance_name(DEV) == instance_name(DeviceId(bytes(range(32))))
    assert instance_name(DEV).startswith(f"dizzy-{DEV.short}-")


def test_peer_table_tracks_nameplates() -> None:
    other = DeviceId(bytes(32))
    table = PeerTable()
    seen = PeerSeen(DEV, [("10.0.0.1", 1)], 1, None, None)
    assert table.apply(seen)
    assert not table.apply(PeerSeen(DEV, [("10.0.0.1", 1)], 1, None, None))
    assert table.find_nameplate(5) is None
    assert table.apply(PeerSeen(DEV, [("10.0.0.1", 1)], 1, None, 5))
    assert table.apply(PeerSeen(other, [("10.0.0.2", 1)], 1, None, 6))
    found = table.find_nameplate(5)
    assert found is not None and found.device_id == DEV
    assert table.apply(PeerGone(DEV))
    assert not table.apply(PeerGone(DEV))
    assert table.find_nameplate(5) is None
    assert set(table.peers) == {other}
