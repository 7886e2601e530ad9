"""Keep the daemon's resident memory from ratcheting up under glibc's allocator.

Scans, hashing and transfers run in worker threads, and each thread allocates from
its own malloc arena (up to 8 per core).  glibc serves a large block (the scanner's
16 MiB read buffer, an 8 MiB outboard read) with mmap at first, but freeing one
raises its *dynamic* mmap threshold, so later blocks of that size come from the
arenas, which keep them after they are freed.  Measured in the soak: every arena
held ~16.5 MiB of dead buffers, 200+ MiB in all, climbing for minutes.  A fixed
threshold turns the dynamic one off: blocks of 8 MiB and up are always mmapped and
go back to the system when freed, at the cost of one mmap/munmap per such block.

Fixing the mmap threshold also pins the *trim* threshold at glibc's 128 KiB: every
free at the top of a heap gave its pages back and the next 1 MiB chunk buffer faulted
them in again (zeroed), a page at a time.  A 32 MiB trim threshold keeps a few chunks'
worth of freed memory per arena: a 1 GiB get went from 3.4-4.8 s to 2.9 s (fsync off,
to see the CPU alone) for ~10 MiB more RSS.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("dizzy.daemon")

#: glibc's mallopt parameter number (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1
#: blocks at least this large are mmapped (and unmapped when freed).  Above every
#: chunk (CHUNK_MAX is 4 MiB, a 1 MiB average): at 1 MiB each received or served chunk
#: was a fresh mmap, page-faulted and zeroed, and a 1 GiB get took 6.9 s instead of
#: 3.6 s.  The buffers that ratcheted RSS up (the scanner's 16 MiB, outboards' 8 MiB
#: reads) stay above it.
MMAP_THRESHOLD = 8 * 1024 * 1024
#: free memory at the top of a heap kept for reuse rather than returned
TRIM_THRESHOLD = 32 * 1024 * 1024


def return_large_blocks() -> bool:
    """Fix glibc's mmap threshold; False (and nothing changed) on other C libraries."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): their allocators behave differently
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")
        return False
    if mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        log.debug("mallopt(M_TRIM_THRESHOLD) refused")
    return True
