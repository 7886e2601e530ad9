"""A folder sync into a folder whose disk fills up: a clear error in ``folders --json``
and in the log, nothing half-written under a final name, nothing already synced
touched, and the sync finishes by itself once space is freed (no daemon restart).

The receiver's folder lives on a small tmpfs (root only; CI runs as root).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.fault_helpers import MB, History, leftover_partials
from tests.multi.fetch_helpers import cluster, connect, full_log, make_random_file
from tests.multi.folder_helpers import (
    folder,
    rescan,
    share,
    temp_files,
    tree_snapshot,
    wait_converged,
    wait_for,
    wait_idle,
)
from tests.multi.test_pairing_loopback import Node

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
    pytest.mark.timeout(120),
]

DISK = 32 * MB
SYNC_TIMEOUT = 40.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK // MB}m", "tmpfs",
                    str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_full_disk_on_the_receiver_then_space_is_freed(tmp_path: Path,
                                                       small_disk: Path) -> None:
    started = time.monotonic()
    fa, fb = tmp_path / "fa", small_disk / "fb"
    fa.mkdir()
    fb.mkdir()
    (fa / "docs").mkdir()
    for i in range(30):
        (fa / "docs" / f"note-{i:02}.txt").write_bytes(os.urandom(20_000))
    make_random_file(fa / "first.bin", 4 * MB, seed=b"first")
    history = History()
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "f", fa)
        share(b, "f", fb)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "the first sync")
        synced_before = tree_snapshot(fb)

        # Leave ~6 MiB free, then A adds 24 MiB of big files and a few small ones.
        filler = make_random_file(small_disk / "filler.bin",
                                  free_bytes(small_disk) - 6 * MB, seed=b"filler")
        for i in range(3):
            make_random_file(fa / f"big-{i}.bin", 8 * MB, seed=f"big{i}".encode())
        for i in range(10):
            (fa / "docs" / f"later-{i:02}.txt").write_bytes(os.urandom(10_000))
        history.record_tree(fa)
        rescan(a)

        info = wait_for(lambda: (lambda f: f if f["state"] == "error" else None)(
            folder(b, "f")), SYNC_TIMEOUT, "B to report the full disk", poke=(b,))
        print(f"\n  folders --json on B: state {info['state']!r}, error {info['error']!r}")
        assert "no space left on device" in info["error"], info
        assert info["in_sync"] is False and info["need_bytes"] > 0, info
        assert "no space left on device" in full_log(b)
        assert b.alive()
        # Nothing half-written under a final name, no temp file left, old files intact.
        assert history.foreign_files(fb) == []
        assert temp_files(fb) == []
        now = tree_snapshot(fb)
        assert {k: now.get(k) for k in synced_before} == synced_before
        missing = sorted(k for k in tree_snapshot(fa) if k not in now)
        print(f"  missing on B while the disk is full: {missing}")
        assert missing, "everything fitted: the disk was not full"

        filler.unlink()
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "the sync to finish after freeing")
        info = wait_idle(b, "f", SYNC_TIMEOUT)
        assert info["error"] is None and info["need_bytes"] == 0, info
        assert temp_files(fb) == [] and leftover_partials(b) == []
        files = [v for v in tree_snapshot(fb).values() if v[0] == "file"]
    print(f"FAULTS full-disk: runs 1, faults 1 (ENOSPC on {len(missing)} file(s)), files "
          f"checked {len(files)}, data lost 0, {time.monotonic() - started:.0f} s")


def test_full_disk_under_the_receivers_home_and_folder(tmp_path: Path,
                                                      small_disk: Path) -> None:
    """The receiver's home (index, partial transfers) shares the full disk with its
    folder: the daemon keeps running, says why, and finishes once space is freed."""
    fa, fb = tmp_path / "fa", small_disk / "fb"
    fa.mkdir()
    fb.mkdir()
    for i in range(20):
        (fa / f"note-{i:02}.txt").write_bytes(os.urandom(10_000))
    history = History()
    with cluster(tmp_path, ["a"], []) as nodes:
        a = nodes["a"]
        # the home on the small disk, through a link so the daemon's log stays outside
        (small_disk / "home-b").mkdir()
        (tmp_path / "home-b").symlink_to(small_disk / "home-b")
        b = Node(tmp_path / "home-b", "b")
        try:
            b.start()
            connect(a, b)
            share(a, "f", fa)
            share(b, "f", fb)
            wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "the first sync")
            filler = make_random_file(small_disk / "filler.bin",
                                      free_bytes(small_disk) - 3 * MB, seed=b"filler")
            for i in range(2):
                make_random_file(fa / f"big-{i}.bin", 8 * MB, seed=f"hbig{i}".encode())
            history.record_tree(fa)
            rescan(a)
            info = wait_for(lambda: (lambda f: f if f["state"] == "error" else None)(
                folder(b, "f")), SYNC_TIMEOUT, "B to report the full disk", poke=(b,))
            print(f"\n  home on the full disk: {info['error']!r}")
            assert "no space left on device" in info["error"], info
            assert b.alive(), b.log()
            assert history.foreign_files(fb) == [] and temp_files(fb) == []
            filler.unlink()
            wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "the sync after freeing space")
            info = wait_idle(b, "f", SYNC_TIMEOUT)
            assert info["error"] is None, info
            assert leftover_partials(b) == []
            assert "Traceback" not in full_log(b)
            files = [v for v in tree_snapshot(fb).values() if v[0] == "file"]
        finally:
            b.stop()
    print(f"FAULTS full-disk-home: runs 1, faults 1 (ENOSPC in the index, partials and "
          f"folder), files checked {len(files)}, daemon alive, data lost 0")
