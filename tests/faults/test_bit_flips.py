"""Bytes flipped on the sender's disk after it indexed them.

* In a shared file, with size and mtime restored (the scanner's stat check cannot see
  it): the receiver must never write bytes that do not match their ID, and the sender
  must notice (rehash, announce the new content) instead of serving bad data forever.
* In the object store: a ``get`` from that peer fails as corrupt (exit code 7), logged,
  with nothing written at the destination.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from pathlib import Path

import pytest

from dizzy.protocol.ids import DeviceId
from tests.faults.fault_helpers import MB
from tests.multi.fetch_helpers import (
    cluster,
    file_blake3,
    full_log,
    has_outboard,
    make_random_file,
    put,
    stored_path,
    wait_until,
)
from tests.multi.folder_helpers import rescan, share, wait_converged, wait_idle
from tests.multi.test_pairing_loopback import one_error_line

pytestmark = pytest.mark.timeout(120)

SYNC_TIMEOUT = 40.0


def flip(path: Path, offsets: list[int], *, keep_stat: bool = True) -> None:
    """Invert one byte at each offset, in place; restore atime/mtime afterwards."""
    before = path.stat()
    writable = before.st_mode | 0o200
    os.chmod(path, writable)
    fd = os.open(path, os.O_RDWR)
    try:
        for offset in offsets:
            old = os.pread(fd, 1, offset)
            os.pwrite(fd, bytes([old[0] ^ 0xFF]), offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, before.st_mode)
    if keep_stat:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size, before.st_mtime_ns, before.st_ino)


def indexed_ids(home: Path, folder: str) -> dict[str, str]:
    with sqlite3.connect(f"file:{home / 'index.sqlite'}?mode=ro", uri=True) as conn:
        return {p: o for p, o in conn.execute(
            "SELECT path, object_id FROM folder_files WHERE folder = ? AND kind = 'file'",
            (folder,))}


def test_flipped_shared_file_is_caught_and_rehashed(tmp_path: Path) -> None:
    started = time.monotonic()
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    fa.mkdir()
    fb.mkdir()
    make_random_file(fa / "big.bin", 12 * MB, seed=b"big")
    (fa / "small.txt").write_bytes(os.urandom(20_000))
    (fa / "witness.txt").write_text("untouched\n")
    good = {name: file_blake3(fa / name) for name in ("big.bin", "small.txt")}
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "f", fa)
        wait_idle(a, "f", 30)
        # B fetches big.bin by hash once, so A has chunked it (cached its chunk list):
        # the flip below is then met chunk by chunk, not when A chunks the file.
        proc = b.cli("get", good["big.bin"], "-o", str(tmp_path / "warm.bin"), timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert has_outboard(a.home, good["big.bin"])
        flip(fa / "big.bin", [5 * MB + 17])
        flip(fa / "small.txt", [1234])
        flipped = {name: file_blake3(fa / name) for name in good}
        rescan(a)
        wait_idle(a, "f", 30)
        assert indexed_ids(a.home, "f")["big.bin"] == good["big.bin"], "the scanner saw it"

        share(b, "f", fb)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "B to get A's (flipped) files")
        wait_idle(a, "f", 30)
        wait_idle(b, "f", 30)
        # A noticed and announced the new content; B holds bytes matching their IDs.
        on_a, on_b = indexed_ids(a.home, "f"), indexed_ids(b.home, "f")
        for name in good:
            assert on_a[name] == flipped[name] == on_b[name] == file_blake3(fb / name)
        assert re.search(r"big\.bin.* changed on disk", full_log(a)), full_log(a)[-3000:]
        # and B never took the bad chunks as big.bin's old ID (only the warm-up got it)
        assert full_log(b).count(f"fetched {good['big.bin']}") == 1
    print(f"FAULTS bit-flip-shared: runs 1, faults 2 (1 byte in a 12 MiB and a 20 kB "
          f"file), files checked 3, bad bytes accepted 0, {time.monotonic() - started:.0f} s")


def test_flipped_store_object_is_refused_as_corrupt(tmp_path: Path) -> None:
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        a_short = DeviceId.parse(a.device_id()).short
        src = make_random_file(tmp_path / "src.bin", 24 * MB, seed=b"store")
        object_id = put(a, src)
        wait_until(lambda: has_outboard(a.home, object_id), 30, "A to chunk the object")
        flip(stored_path(a, object_id), [17 * MB + 3])
        out = tmp_path / "out.bin"
        proc = b.cli("get", object_id, "-o", str(out), "--timeout", "40", timeout=60)
        assert proc.returncode == 7, (proc.returncode, proc.stderr, b.log())
        assert "corrupt" in one_error_line(proc)
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.bin")]
        assert re.search(rf"peer {a_short}\S* sent corrupt data for chunk \d+ of {object_id}",
                         full_log(b)), full_log(b)[-3000:]
        assert a.alive() and b.alive()
    print("FAULTS bit-flip-store: runs 1, faults 1 (1 byte in 24 MiB), exit 7, "
          "bad bytes written 0")
