"""A peer whose clock is an hour off (ahead, then behind), through libfaketime.

The skewed daemon runs under ``faketime`` (Debian package ``faketime``; CI installs
it): its own clock is shifted, the kernel's file timestamps are not, as if its files
came from a disk written by another machine.  Pairing, TLS (self-signed certificates
have validity windows), fetching, folder sync with preserved mtimes, conflicts with
sane names, and edits on both sides must all work; a rescan of an unchanged folder must
not read every file again.
"""

from __future__ import annotations

import datetime
import glob
import os
import re
import time
from pathlib import Path

import pytest

from dizzy.daemon.scanner import scan
from dizzy.protocol.ignore import NO_RULES
from tests.daemons import DaemonProcess
from tests.faults.fault_helpers import MB
from tests.multi.fetch_helpers import (
    connect,
    file_blake3,
    io_counter,
    make_random_file,
    pid,
    put,
)
from tests.multi.folder_helpers import (
    rescan,
    share,
    tree_snapshot,
    wait_converged,
    wait_for,
    wait_idle,
)
from tests.multi.test_pairing_loopback import Node

pytestmark = pytest.mark.timeout(120)

#: libfaketime, preloaded through `env` (which execs: the daemon keeps the pid we
#: signal; the `faketime` wrapper would fork, and stopping it would leave the daemon)
FAKETIME_LIBS = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
SYNC_TIMEOUT = 40.0
HOUR_NS = 3600 * 10**9


def faketime_or_skip() -> str:
    if not FAKETIME_LIBS:
        if os.environ.get("CI"):
            pytest.fail("libfaketime is missing on CI (.ci/run installs faketime)")
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    return FAKETIME_LIBS[0]


class SkewedNode(Node):
    """A loopback node whose daemon sees the time shifted by ``offset``."""

    offset: str = "+0"

    def start(self, *extra: str) -> Node:
        self.extra = list(extra)
        self.daemon = DaemonProcess(self.home, [
            "--no-mdns", "--listen", f"127.0.0.1:{self.port}", "--name", self.name, *extra,
        ], prefix=["env", f"LD_PRELOAD={faketime_or_skip()}", f"FAKETIME={self.offset}",
                   "FAKETIME_NO_CACHE=1"]).start()
        self.port = int(self.status()["listen"].rpartition(":")[2])
        return self


OFFSETS = {"+1h": 3600, "-1h": -3600, "-3d": -3 * 86400}


def assert_shifted(node: Node, offset: str) -> None:
    """The daemon really runs on the shifted clock: its log's timestamps say so."""
    first = node.log().splitlines()[0]
    logged = datetime.datetime.strptime(first[:19], "%Y-%m-%d %H:%M:%S").timestamp()
    assert abs(logged - time.time() - OFFSETS[offset]) < 120, (offset, first)


def put_file(path: Path, text: str, mtime_ns: int, staging: Path) -> None:
    staging.mkdir(exist_ok=True)
    tmp = staging / path.name
    tmp.write_text(text)
    os.utime(tmp, ns=(mtime_ns, mtime_ns))
    os.replace(tmp, path)


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and not p.is_symlink()}


# -3d: older than the certificates' one day of backdating (a board without a
# battery-backed clock, before NTP); regression: TLS refused every handshake
@pytest.mark.parametrize("offset", ["+1h", "-1h", "-3d"])
def test_a_peer_an_hour_off(tmp_path: Path, offset: str) -> None:
    started = time.monotonic()
    faketime_or_skip()
    a = SkewedNode(tmp_path / "a", "a")
    a.offset = offset
    b = Node(tmp_path / "b", "b")
    fa, fb, staging = tmp_path / "fa", tmp_path / "fb", tmp_path / "staging"
    fa.mkdir()
    fb.mkdir()
    try:
        a.start()
        b.start()
        assert_shifted(a, offset)
        connect(a, b)  # pairing + TLS both ways

        # fetch by hash, both directions
        for src_node, dst_node, name in ((a, b, "from-a"), (b, a, "from-b")):
            src = make_random_file(tmp_path / f"{name}.bin", 6 * MB, seed=name.encode())
            object_id = put(src_node, src)
            out = tmp_path / f"{name}.out"
            proc = dst_node.cli("get", object_id, "-o", str(out), "--timeout", "30",
                                timeout=40)
            assert proc.returncode == 0, (proc.stderr, a.log(), b.log())
            assert file_blake3(out) == object_id

        # folders: fresh files (kernel mtimes), files with old mtimes, a big one
        (fa / "docs").mkdir()
        for i in range(20):
            (fa / "docs" / f"fresh-{i}.txt").write_text(f"fresh {i}\n")
            put_file(fa / "docs" / f"old-{i}.txt", f"old {i}\n",
                     1_600_000_000_000_000_000 + i, staging)
        make_random_file(fa / "big.bin", 8 * MB, seed=b"skew-big")
        share(a, "f", fa)
        share(b, "f", fb)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "the first sync")
        assert mtimes(fa) == mtimes(fb), "mtimes not preserved as sent"

        # an unchanged folder: rescans read (almost) nothing on the skewed side
        wait_idle(a, "f", 20)
        before = io_counter(pid(a), "rchar")
        for _ in range(3):
            rescan(a)
            time.sleep(0.3)
            wait_idle(a, "f", 20)
        reread = io_counter(pid(a), "rchar") - before
        print(f"\n  {offset}: three rescans of an unchanged folder read {reread} bytes")
        assert reread < 1 * MB, f"rescans read every file again ({reread} bytes)"

        # edits on both sides converge
        (fa / "docs" / "fresh-1.txt").write_text("edited on A\n")
        (fb / "docs" / "fresh-2.txt").write_text("edited on B\n")
        (fb / "docs" / "old-3.txt").unlink()
        rescan(a, b)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "edits both ways")
        assert (fb / "docs" / "fresh-1.txt").read_text() == "edited on A\n"
        assert (fa / "docs" / "fresh-2.txt").read_text() == "edited on B\n"

        # a conflict: the later mtime wins everywhere, the loser's copy is named sanely
        put_file(fa / "plan.txt", "A's plan\n", 1_700_000_000_000_000_000, staging)
        rescan(a)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "plan.txt")
        put_file(fa / "plan.txt", "A's edit\n", 1_700_000_200_000_000_000, staging)
        put_file(fb / "plan.txt", "B's edit, later\n", 1_700_000_300_000_000_000, staging)
        rescan(a, b)

        def settled() -> bool:
            copies = [sorted(r.glob("plan.sync-conflict-*")) for r in (fa, fb)]
            return all(len(c) == 1 for c in copies) and tree_snapshot(fa) == tree_snapshot(fb)

        wait_for(settled, SYNC_TIMEOUT, "the conflict to settle", poke=(a, b))
        assert (fa / "plan.txt").read_text() == "B's edit, later\n"
        (copy,) = sorted(fa.glob("plan.sync-conflict-*"))
        assert copy.read_text() == "A's edit\n"
        a_short = a.device_id().split("-")[0]
        assert re.fullmatch(rf"plan\.sync-conflict-20231114-\d{{6}}-{a_short}\.txt",
                            copy.name), copy.name
        assert mtimes(fa) == mtimes(fb)
        assert "Traceback" not in a.log() + b.log()
        files = len(mtimes(fb))
    finally:
        for node in (a, b):
            node.stop()
    print(f"FAULTS clock-skew {offset}: runs 1, pairing + 2 gets + folder sync, files "
          f"checked {files}, mtimes equal, 1 conflict named by its mtime, data lost 0, "
          f"{time.monotonic() - started:.0f} s")


def test_a_file_with_a_future_mtime_is_not_rehashed_at_every_scan(tmp_path: Path) -> None:
    """Regression: a file whose mtime is ahead of this device's clock (it came from a
    device whose clock runs ahead, or this clock is behind) was taken as "racy" and
    hashed again at every rescan, every 10 s, for as long as the skew lasted."""
    path = tmp_path / "from-the-future.bin"
    path.write_bytes(os.urandom(100_000))
    future = time.time_ns() + HOUR_NS
    os.utime(path, ns=(future, future))
    first = scan(tmp_path, {}, NO_RULES)
    assert first.files[path.name].inode == os.lstat(path).st_ino
    second = scan(tmp_path, first.files, NO_RULES)
    assert second.hashed_files == 0
