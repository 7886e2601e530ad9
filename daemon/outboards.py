"""Chunk lists (outboards) of stored blobs: computed once, lazily, cached in the index.

``put`` stays as fast as a copy; the outboard is built in the background right after,
or on the first peer request, whichever comes first, and never twice at once.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import trio

from dizzy.protocol.errors import NotFound
from dizzy.protocol.outboard import Outboard, OutboardBuilder

from .store import ObjectStore

log = logging.getLogger("dizzy.outboards")

#: read size while chunking a stored file: large blocks keep the chunker near full speed
READ_BLOCK = 8 * 1024 * 1024
#: decoded outboards kept in memory (each ~40 bytes per MiB of object)
RECENT_OUTBOARDS = 64


class Outboards:
    def __init__(self, store: ObjectStore,
                 locate: Callable[[str], tuple[Path, int] | None] | None = None) -> None:
        self.store = store
        #: finds an object outside the store (a file in a shared folder), or None
        self.locate = locate
        self._building: dict[str, trio.Event] = {}
        # Decoded outboards of the objects being served right now: a chunk request must
        # not re-read and re-decode a 40 KiB outboard from SQLite every time.
        self._recent: collections.OrderedDict[str, Outboard] = collections.OrderedDict()
        # Building is CPU-bound: one at a time leaves the other core to the network.
        self._limiter = trio.CapacityLimiter(1)

    async def get(self, object_id: str) -> Outboard:
        hit = self._recent.get(object_id)
        if hit is not None:
            self._recent.move_to_end(object_id)
            return hit
        outboard = await self._get_uncached(object_id)
        self._recent[object_id] = outboard
        while len(self._recent) > RECENT_OUTBOARDS:
            self._recent.popitem(last=False)
        return outboard

    async def _get_uncached(self, object_id: str) -> Outboard:
        while True:
            cached = await self.store.index.call(_load, object_id)
            if cached is not None:
                return Outboard.decode(cached, expected_object_id=object_id)
            pending = self._building.get(object_id)
            if pending is None:
                break
            await pending.wait()
        done = trio.Event()
        self._building[object_id] = done
        try:
            outboard = await trio.to_thread.run_sync(
                self._build, object_id, limiter=self._limiter
            )
            await self.store.index.call(_save, object_id, outboard.encode())
            return outboard
        finally:
            del self._building[object_id]
            done.set()

    async def prepare(self, object_id: str) -> None:
        """``get`` for a background task: failures are logged, never raised."""
        try:
            await self.get(object_id)
        except Exception as exc:
            log.warning("could not chunk %s: %s", object_id, exc)

    def _build(self, object_id: str) -> Outboard:
        builder = OutboardBuilder()
        try:
            source: BinaryIO = self.store.sync_open_blob(object_id)
            where = "stored object"
        except NotFound:
            found = self.locate(object_id) if self.locate is not None else None
            if found is None:
                raise
            source = open(found[0], "rb")  # noqa: SIM115 - closed below
            where = f"shared file {found[0]}"
        with source:
            while block := source.read(READ_BLOCK):
                builder.feed(block)
        outboard = builder.finish()
        if outboard.object_id != object_id:
            # A shared file edited since its scan, or bit rot in the store.
            raise NotFound(f"{where} no longer holds {object_id}")
        return outboard

    async def save(self, outboard: Outboard) -> None:
        """Record an outboard received from a peer (verified by the whole-object hash)."""
        await self.store.index.call(_save, outboard.object_id, outboard.encode())


def _load(conn: sqlite3.Connection, object_id: str) -> bytes | None:
    row = conn.execute("SELECT data FROM outboards WHERE object_id = ?", (object_id,)).fetchone()
    return None if row is None else bytes(row[0])


def _save(conn: sqlite3.Connection, object_id: str, data: bytes) -> None:
    with conn:
        conn.execute(
            "INSERT OR REPLACE INTO outboards (object_id, data) VALUES (?, ?)", (object_id, data)
        )


def save_many(conn: sqlite3.Connection, outboards: dict[str, bytes]) -> None:
    """Record outboards a folder scan computed while hashing (content-addressed, so an
    existing row is the same outboard)."""
    with conn:
        conn.executemany(
            "INSERT OR IGNORE INTO outboards (object_id, data) VALUES (?, ?)",
            list(outboards.items()),
        )
