"""Resident memory after large buffers in worker threads (daemon/memory.py).

Found by the soak (scripts/soak): each worker thread that hashed a file over 1 MiB
left the scanner's 16 MiB read buffer in its malloc arena, and the daemons' RSS
climbed past 300 MiB.  Each case runs in a fresh interpreter: the allocator's
settings are per process.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = """
import os, sys, threading
from dizzy.daemon.memory import return_large_blocks
from dizzy.daemon.scanner import hash_fd

if sys.argv[2] == "fixed":
    assert return_large_blocks()
path = sys.argv[1]

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) // 1024

def hash_three_times(barrier):
    barrier.wait()  # all threads alive at once: one arena each
    for _ in range(3):
        fd = os.open(path, os.O_RDONLY)
        try:
            hash_fd(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
    barrier.wait()

fd = os.open(path, os.O_RDONLY)
hash_fd(fd, os.fstat(fd).st_size)  # warm up: imports, first buffer
os.close(fd)
base = rss_mib()
barrier = threading.Barrier(8)
threads = [threading.Thread(target=hash_three_times, args=(barrier,)) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(rss_mib() - base)
"""


def _growth(path: Path, mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(path), mode],
                          capture_output=True, text=True, timeout=120, check=True)
    return int(done.stdout.strip())


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).mallopt  # noqa: B018
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not _glibc(), reason="glibc's allocator only")
def test_hash_buffers_go_back_to_the_system(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(8 * 1024 * 1024))
    fixed = _growth(big, "fixed")
    default = _growth(big, "default")
    print(f"RSS growth after 8 threads hashed an 8 MiB file: {fixed} MiB with the fixed "
          f"threshold, {default} MiB with glibc's default")
    assert fixed < 24, fixed
    # the control shows what the setting prevents (one 16 MiB buffer per arena)
    assert default > fixed + 48, (default, fixed)
