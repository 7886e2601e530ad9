"""The cable between two hosts pulled mid-transfer and plugged back: the transfer
resumes and completes with the right bytes, without starting over.

Two hosts in network namespaces (tests/netns.py), daemons with ``--no-mdns`` and
``--peer`` (static addresses: nothing here depends on multicast).  The control
sockets are Unix sockets, so the CLI runs from outside the namespaces.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.daemons import DaemonProcess, dizzy_argv, run_cli
from tests.faults.fault_helpers import MB
from tests.multi.fetch_helpers import (
    file_blake3,
    finish,
    has_outboard,
    io_counter,
    make_random_file,
    popen_cli,
    wait_until,
)
from tests.multi.folder_helpers import converged, tree_snapshot
from tests.multi.test_pairing_netns import Inviter
from tests.netns import Host, netns_hosts

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(180)]

PORT = 22070
#: how long the cable stays out: longer than a few TCP retransmissions
DOWN_SECONDS = 6.0
TRANSFER_TIMEOUT = 90.0


class NsNode:
    """A daemon on one test host, dialling the other host's address."""

    def __init__(self, host: Host, tmp_path: Path, name: str, peer: Host) -> None:
        self.host, self.name = host, name
        self.home = tmp_path / name
        self.daemon = DaemonProcess(self.home, [
            "--no-mdns", "--listen", f"{host.addr}:{PORT}", "--peer", f"{peer.addr}:{PORT}",
            "--name", name,
        ], prefix=host.argv([]))

    @property
    def pid(self) -> int:
        # `ip netns exec` execs the daemon: same process
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def cli(self, *args: str, timeout: float = 30.0) -> str:
        proc = run_cli(self.home, *args, timeout=timeout)
        assert proc.returncode == 0, (args, proc.stderr, self.daemon.log())
        return proc.stdout.decode()

    def online_with(self, other: NsNode) -> bool:
        import json

        return any(p["online"] for p in json.loads(self.cli("peers", "--json")))

    def log(self) -> str:
        return self.daemon.log()


@contextmanager
def two_hosts(tmp_path: Path) -> Iterator[tuple[NsNode, NsNode, Host, Host]]:
    with netns_hosts(2) as (ha, hb):
        a, b = NsNode(ha, tmp_path, "a", hb), NsNode(hb, tmp_path, "b", ha)
        a.daemon.start()
        b.daemon.start()
        try:
            invite = Inviter(a)  # type: ignore[arg-type]  # needs .host and .home only
            code = invite.line()
            joined = hb.check_output(dizzy_argv("--home", str(b.home), "pair", code,
                                                "--address", f"{ha.addr}:{PORT}",
                                                "--timeout", "15"), timeout=30)
            assert joined.strip(), joined
            assert invite.finish() == 0
            wait_until(lambda: a.online_with(b) and b.online_with(a), 15, "both online")
            yield a, b, ha, hb
        finally:
            for node in (a, b):
                node.daemon.stop()


def landed(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512  # sparse until filled
    except FileNotFoundError:
        return 0


def test_link_down_during_a_get_resumes(tmp_path: Path) -> None:
    started = time.monotonic()
    size = 200 * MB
    with two_hosts(tmp_path) as (a, b, _ha, hb):
        src = make_random_file(tmp_path / "src.bin", size, seed=b"link-down-get")
        object_id = a.cli("put", str(src)).strip()
        wait_until(lambda: has_outboard(a.home, object_id), 30, "A to chunk it")
        before = io_counter(a.pid, "rchar")
        out = tmp_path / "out.bin"
        getter = popen_cli(b.home, "get", object_id, "-o", str(out), "--timeout",
                           str(TRANSFER_TIMEOUT))
        try:
            partial = b.home / "partial" / object_id
            wait_until(lambda: landed(partial) > size // 4 or getter.poll() is not None,
                       30, "a quarter of the object to land", interval=0.005)
            assert getter.poll() is None, "the get finished before the cable was pulled"
            hb.link_down()
            at_cut = landed(partial)
            time.sleep(DOWN_SECONDS)
            stalled = landed(partial)
            assert getter.poll() is None, "the get gave up while the link was down"
            hb.link_up()
            rc, _, err = finish(getter, TRANSFER_TIMEOUT)
        finally:
            hb.link_up()
            if getter.poll() is None:
                getter.kill()
                getter.communicate()
        assert rc == 0, (rc, err, b.log())
        assert file_blake3(out) == object_id
        served = io_counter(a.pid, "rchar") - before
    resent = served - size
    print(f"\n  cut at {at_cut / MB:.0f} MiB landed ({stalled / MB:.0f} MiB after "
          f"{DOWN_SECONDS:g} s down); A read {served / MB:.1f} MiB for {size / MB:.0f} MiB")
    print(f"FAULTS link-down-get: runs 1, faults 1 ({DOWN_SECONDS:g} s down), bytes "
          f"compared {size}, re-sent {max(resent, 0) / MB:.1f} MiB, data lost 0, "
          f"{time.monotonic() - started:.0f} s")
    assert served < size + 32 * MB, "the transfer started over after the link came back"


def test_link_down_during_a_folder_sync_resumes(tmp_path: Path) -> None:
    started = time.monotonic()
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    fa.mkdir()
    fb.mkdir()
    for i in range(3):
        make_random_file(fa / f"video-{i}.bin", 48 * MB, seed=f"video{i}".encode())
    (fa / "notes").mkdir()
    for i in range(100):
        (fa / "notes" / f"n{i:03}.txt").write_bytes(os.urandom(5000))
    with two_hosts(tmp_path) as (a, b, _ha, hb):
        a.cli("share", "f", str(fa))
        wait_until(lambda: '"idle"' in a.cli("folders", "--json"), 30, "A to scan")
        before = io_counter(a.pid, "rchar")
        b.cli("share", "f", str(fb))
        wait_until(lambda: any(landed(p) > 8 * MB for p in (b.home / "partial").glob("*"))
                   if (b.home / "partial").is_dir() else False, 30,
                   "B to be fetching a video", interval=0.005)
        hb.link_down()
        try:
            assert not converged(fa, fb), "the sync finished before the cable was pulled"
            time.sleep(DOWN_SECONDS)
        finally:
            hb.link_up()
        deadline = time.monotonic() + TRANSFER_TIMEOUT
        while not converged(fa, fb):
            assert time.monotonic() < deadline, (sorted(tree_snapshot(fb)), b.log())
            time.sleep(0.2)
        served = io_counter(a.pid, "rchar") - before
        total = sum(p.stat().st_size for p in fa.rglob("*") if p.is_file())
        videos = sum(p.stat().st_size for p in fa.glob("video-*"))
    # A reads each video twice: once to chunk it (on the first request), once to serve
    resent = served - total - videos
    print(f"FAULTS link-down-folder: runs 1, faults 1 ({DOWN_SECONDS:g} s down), files "
          f"checked 103, bytes compared {total}, re-sent about {max(resent, 0) / MB:.1f} "
          f"MiB, data lost 0, {time.monotonic() - started:.0f} s")
    assert resent < 32 * MB, "the sync started over after the link came back"
