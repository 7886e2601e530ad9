"""Shared folders on this device: the registry, the scanning loop, and serving their
files in place by hash.

A folder is shared by name (``dizzy share NAME PATH``).  Its runner rescans the folder
(stat only for unchanged files) and records what it found in ``folder_files``, so any
file in a shared folder can be fetched by its BLAKE3 from this device without a second
copy in the object store.  A folder whose path has disappeared is paused with an error,
never taken as "everything was deleted".
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import trio

from dizzy.protocol.errors import DizzyError, NotFound, UsageError
from dizzy.protocol.paths import validate_name

from .index import Index
from .scanner import FolderMissing, ScannedFile, scan

log = logging.getLogger("dizzy.folders")

FolderMode = Literal["send-receive", "send-only", "receive-only"]
MODES: tuple[FolderMode, ...] = ("send-receive", "send-only", "receive-only")
#: a rescan with nothing changed costs only stat calls; this bounds how stale the
#: index can be where file-system events are missed
RESCAN_INTERVAL = 10.0


@dataclass
class FolderRunner:
    name: str
    path: Path
    mode: FolderMode
    index: Index
    state: str = "scanning"
    error: str | None = None
    files: dict[str, ScannedFile] = field(default_factory=dict)
    last_scan: float | None = None
    wake: trio.Event = field(default_factory=trio.Event)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def file_count(self) -> int:
        return sum(1 for f in self.files.values() if f.kind == "file")

    @property
    def byte_count(self) -> int:
        return sum(f.size for f in self.files.values() if f.kind == "file")

    async def run(self) -> None:
        with self.cancel_scope:
            self.files = await self.index.call(_load_files, self.name)
            while True:
                await self.scan_once()
                with trio.move_on_after(RESCAN_INTERVAL):
                    await self.wake.wait()
                self.wake = trio.Event()

    async def scan_once(self) -> None:
        self.state = "scanning"
        try:
            result = await trio.to_thread.run_sync(scan, self.path, self.files)
        except FolderMissing as exc:
            # An unmounted disk must never look like "everything was deleted".
            if self.state != "error" or self.error != exc.message:
                log.warning("folder %s paused: %s", self.name, exc.message)
            self.state, self.error = "error", exc.message
            return
        except OSError as exc:
            self.state, self.error = "error", f"cannot scan {self.path}: {exc.strerror}"
            log.warning("folder %s: %s", self.name, self.error)
            return
        changed = [*result.added, *result.changed, *result.refreshed]
        if changed or result.removed or self.last_scan is None:
            await self.index.call(_save_files, self.name, result.files, changed, result.removed)
            if self.last_scan is not None:
                log.info("folder %s: %d added, %d changed, %d removed", self.name,
                         len(result.added), len(result.changed), len(result.removed))
        self.files = dict(result.files)
        self.last_scan = time.time()
        self.state, self.error = "idle", None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "mode": self.mode,
            "state": self.state,
            "error": self.error,
            "files": self.file_count,
            "bytes": self.byte_count,
            "need_bytes": 0,
            "in_sync": self.state == "idle",
            "last_scan": self.last_scan,
            "peers": [],
        }


class FolderManager:
    def __init__(self, index: Index, home_root: Path) -> None:
        self.index = index
        self.home_root = home_root
        self.runners: dict[str, FolderRunner] = {}
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        rows = await self.index.execute("SELECT name, path, mode FROM folders ORDER BY name")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for name, path, mode in rows:
                self._start(FolderRunner(name, Path(path), mode, self.index))
            task_status.started()
            await trio.sleep_forever()  # the nursery must stay open for later shares

    def _start(self, runner: FolderRunner) -> None:
        assert self._nursery is not None
        self.runners[runner.name] = runner
        self._nursery.start_soon(runner.run)

    async def share(self, name: str, path: Path, mode: str) -> dict[str, Any]:
        try:
            validate_name(name)
        except DizzyError:
            raise UsageError(f"not a usable folder name: {name!r}") from None
        if mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}")
        if not path.is_absolute():
            raise UsageError("folder path must be absolute (the client resolves it)")
        if not path.is_dir():
            raise UsageError(f"not a directory: {path}")
        real = path.resolve()
        existing = self.runners.get(name)
        if existing is not None:
            if existing.path.resolve() == real and existing.mode == mode:
                return existing.describe()  # sharing again is a no-op
            raise UsageError(f"folder {name!r} is already shared at {existing.path}; "
                             "unshare it first")
        home = self.home_root.resolve()
        if real == home or home in real.parents or real in home.parents:
            raise UsageError(f"{path} overlaps dizzy's own home {self.home_root}")
        for other in self.runners.values():
            theirs = other.path.resolve()
            if theirs == real or theirs in real.parents or real in theirs.parents:
                raise UsageError(f"{path} overlaps folder {other.name!r} at {other.path}")
        await self.index.execute(
            "INSERT INTO folders (name, path, mode, created) VALUES (?, ?, ?, ?)",
            (name, str(real), mode, time.time()),
        )
        runner = FolderRunner(name, real, mode, self.index)
        self._start(runner)
        log.info("sharing folder %s at %s (%s)", name, real, mode)
        return runner.describe()

    async def unshare(self, name: str) -> None:
        runner = self.runners.pop(name, None)
        if runner is None:
            raise NotFound(f"no shared folder named {name!r}")
        runner.cancel_scope.cancel()
        await self.index.call(_forget_folder, name)
        log.info("stopped sharing folder %s (its files are untouched)", name)

    def describe(self) -> list[dict[str, Any]]:
        return [r.describe() for _, r in sorted(self.runners.items())]

    def rescan(self, name: str | None = None) -> None:
        for runner in self.runners.values():
            if name is None or runner.name == name:
                runner.wake.set()

    def sync_find_object(self, object_id: str) -> tuple[Path, int] | None:
        """A shared file with this content, still as scanned (size, mtime, inode)."""
        rows = self.index.call_sync(_files_with_object, object_id)
        for folder, relpath, size, mtime_ns, inode in rows:
            runner = self.runners.get(folder)
            if runner is None:
                continue
            path = runner.path.joinpath(*relpath.split("/"))
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if (st.st_size, st.st_mtime_ns, st.st_ino) == (size, mtime_ns, inode):
                return path, size
        return None


def _load_files(conn: sqlite3.Connection, folder: str) -> dict[str, ScannedFile]:
    out: dict[str, ScannedFile] = {}
    for row in conn.execute(
        "SELECT path, kind, size, mtime_ns, inode, mode, object_id, link_target "
        "FROM folder_files WHERE folder = ?", (folder,)
    ):
        out[row[0]] = ScannedFile(*row)
    return out


def _save_files(conn: sqlite3.Connection, folder: str, files: Mapping[str, ScannedFile],
                changed: list[str], removed: list[str]) -> None:
    with conn:
        if not changed and not removed:
            conn.execute("DELETE FROM folder_files WHERE folder = ?", (folder,))
            changed = list(files)
        conn.executemany("DELETE FROM folder_files WHERE folder = ? AND path = ?",
                         [(folder, p) for p in removed])
        conn.executemany(
            "INSERT OR REPLACE INTO folder_files (folder, path, kind, size, mtime_ns, inode, "
            "mode, object_id, link_target) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(folder, f.path, f.kind, f.size, f.mtime_ns, f.inode, f.mode, f.object_id,
              f.link_target) for f in (files[p] for p in changed if p in files)],
        )


def _forget_folder(conn: sqlite3.Connection, folder: str) -> None:
    with conn:
        conn.execute("DELETE FROM folder_files WHERE folder = ?", (folder,))
        conn.execute("DELETE FROM folders WHERE name = ?", (folder,))


def _files_with_object(conn: sqlite3.Connection, object_id: str
                       ) -> list[tuple[str, str, int, int, int]]:
    return conn.execute(
        "SELECT folder, path, size, mtime_ns, inode FROM folder_files "
        "WHERE object_id = ? AND kind = 'file'", (object_id,)
    ).fetchall()
