"""Write-behind: a fetched object is usable the moment it is verified; its bytes
reach the disk a moment later, in the background, and a crash in between is caught.

Waiting for ``fsync`` before answering ``get`` made a 1 GiB fetch as slow as this
machine's disk (3.4 s to flush 1 GiB here, against ~1 s to receive and verify it),
while ``cp``, ``rsync`` and ``curl`` answer once the bytes are in the page cache.  A
killed daemon loses nothing that reached the page cache; only a crash of the whole
machine (power cut, kernel panic) can.  So:

- a finished object is renamed into the store at once and recorded in
  ``unsynced_objects`` with this boot's ID; a background task fsyncs it (and its
  directory) and deletes the row, usually within a second or two;
- at start-up, rows from *this* boot (the daemon was killed, the machine was not)
  are simply synced; rows from an *earlier* boot name objects that may have been
  lost in a crash: each is rehashed, and a damaged one is dropped from the store
  (it is fetched again when next needed) instead of being served;
- ``get -o PATH`` deliveries are fsynced the same way, untracked (they are the
  user's files, not the store's), like any file a program writes.

Without a boot ID (not Linux) there is no way to tell the two kinds of restart
apart, and every fetch fsyncs before it answers, as before.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import blake3
import trio

from .fsutil import fsync_dir, remove_quietly
from .index import Index

log = logging.getLogger("dizzy.write_behind")

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
#: tests set this to stand for another boot of the machine (a crash and restart)
BOOT_ID_OVERRIDE = "DIZZY_TEST_BOOT_ID"


def read_boot_id(path: Path = BOOT_ID_PATH) -> str | None:
    """This boot's random ID (Linux), or None where there is none."""
    override = os.environ.get(BOOT_ID_OVERRIDE)
    if override:
        return override
    try:
        value = path.read_text().strip()
    except OSError:
        return None
    return value or None


@dataclass(frozen=True)
class _Pending:
    path: Path
    object_id: str | None  # None: not the store's (a `get -o` delivery)


class WriteBehind:
    def __init__(self, index: Index, objects_dir: Path, boot_id: str | None) -> None:
        self.index = index
        self.objects_dir = objects_dir
        self.boot_id = boot_id
        self._queue: list[_Pending] = []
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()

    @property
    def enabled(self) -> bool:
        return self.boot_id is not None

    def submit(self, path: Path, object_id: str | None = None) -> None:
        """Queue ``path`` (already renamed into place) for fsync; trio thread only."""
        self._queue.append(_Pending(path, object_id))
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._wake.set()

    async def wait_idle(self) -> None:
        """Until everything submitted so far is on disk (tests, shutdown)."""
        await self._idle.wait()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            batch, self._queue = self._queue, []
            synced = await trio.to_thread.run_sync(_sync_all, batch)
            done = [p.object_id for p in batch if p.object_id is not None and p.path in synced]
            if done:
                await self.index.call(_forget, done)
            if not self._queue:
                self._idle.set()

    async def recover(self) -> None:
        """At start-up: sync what this boot left unsynced, check what a crash may have
        cost (see the module docstring)."""
        rows = await self.index.execute("SELECT object_id, boot_id FROM unsynced_objects")
        doubtful = [oid for oid, boot in rows if boot != self.boot_id]
        for oid, boot in rows:
            if boot == self.boot_id:
                self.submit(self._path(oid), oid)
        if not doubtful:
            return
        log.info("checking %d object(s) that had not reached the disk before the machine "
                 "restarted", len(doubtful))
        lost = await trio.to_thread.run_sync(self._check, doubtful)
        await self.index.call(_drop_lost, lost)
        await self.index.call(_forget, [oid for oid in doubtful if oid not in lost])
        for oid in lost:
            log.warning("object %s was damaged by a crash before it reached the disk; "
                        "dropped it (it is fetched again when next needed)", oid)

    def _path(self, object_id: str) -> Path:
        return self.objects_dir / object_id[:2] / object_id

    def _check(self, object_ids: list[str]) -> set[str]:
        lost: set[str] = set()
        for oid in object_ids:
            path = self._path(oid)
            try:
                hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
                hasher.update_mmap(path)
                good = hasher.hexdigest() == oid
            except (OSError, ValueError):
                good = False
            if not good:
                remove_quietly(path)
                lost.add(oid)
        return lost


def _sync_all(batch: list[_Pending]) -> set[Path]:
    """fsync each file, then each directory once; the paths that made it."""
    synced: set[Path] = set()
    dirs: set[Path] = set()
    for item in batch:
        try:
            fd = os.open(item.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # deleted or replaced meanwhile: nothing of ours to make durable
        try:
            os.fsync(fd)
        except OSError as exc:
            log.warning("could not flush %s to disk: %s", item.path, exc)
            continue
        finally:
            os.close(fd)
        synced.add(item.path)
        dirs.add(item.path.parent)
    for directory in dirs:
        try:
            fsync_dir(directory)
        except OSError as exc:
            log.warning("could not flush directory %s: %s", directory, exc)
    return synced


def record_unsynced(conn: sqlite3.Connection, object_id: str, boot_id: str) -> None:
    """Inside the transaction that adds the object (see fetch._finish_partial)."""
    conn.execute("INSERT OR REPLACE INTO unsynced_objects (object_id, boot_id) VALUES (?, ?)",
                 (object_id, boot_id))


def _forget(conn: sqlite3.Connection, object_ids: list[str]) -> None:
    with conn:
        conn.executemany("DELETE FROM unsynced_objects WHERE object_id = ?",
                         [(oid,) for oid in object_ids])


def _drop_lost(conn: sqlite3.Connection, object_ids: set[str]) -> None:
    with conn:
        for oid in object_ids:
            conn.execute("DELETE FROM objects WHERE id = ?", (oid,))
            conn.execute("DELETE FROM outboards WHERE object_id = ?", (oid,))
            conn.execute("DELETE FROM unsynced_objects WHERE object_id = ?", (oid,))
