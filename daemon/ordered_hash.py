"""The whole-object BLAKE3, computed while the chunks land, so finishing a fetch
needs no second pass over the data.

Chunks arrive nearly in order (a few requests in flight per source).  The chunk that
continues the hashed prefix is hashed from the bytes just received; chunks that
landed ahead of it are read back from the partial file (the page cache) when the gap
closes, so memory stays bounded however out of order they come.  Chunks a previous
run left, and anything still unhashed at the end, are read back the same way.
"""

from __future__ import annotations

import os
import threading

import blake3

from dizzy.protocol.outboard import Outboard


class OrderedHasher:
    def __init__(self, outboard: Outboard, fd: int, already: set[int]) -> None:
        """``already``: the chunks in the file before this fetch started."""
        self._chunks = outboard.chunks
        self._fd = fd
        self._hasher = blake3.blake3()
        self._next = 0  # chunks before this one are hashed
        self._ahead = set(already)  # in the file, not yet hashed
        self._lock = threading.Lock()

    def landed(self, index: int, data: bytes | memoryview) -> None:
        """Chunk ``index`` was verified and written; any thread."""
        with self._lock:
            if index == self._next:
                self._hasher.update(data)
                self._next += 1
            elif index > self._next:
                self._ahead.add(index)
            self._catch_up(self._ahead)

    def hexdigest(self) -> str:
        """The object's ID as hashed; every chunk must be in the file by now."""
        with self._lock:
            self._catch_up(None)
            return self._hasher.hexdigest()

    def _catch_up(self, landed: set[int] | None) -> None:
        # landed None: every remaining chunk is in the file (the end of the fetch)
        while self._next < len(self._chunks) and (landed is None or self._next in landed):
            ref = self._chunks[self._next]
            data = os.pread(self._fd, ref.length, ref.offset)
            if len(data) != ref.length:
                raise OSError(f"partial file shorter than chunk {self._next}")
            self._hasher.update(data)
            if landed is not None:
                landed.discard(self._next)
            self._next += 1
