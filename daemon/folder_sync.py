"""The folder sync engine: signed change logs in, replicated between peers, folded,
and applied to the disk.

Per folder, this device appends its own changes (from scans) to its signed,
hash-chained log.  Peers pull each other's logs from the last sequence they hold
(``folder.heads`` then ``folder.log``), verify chains and signatures against the
paired devices' keys, and fold every log into one ``FolderState``.  ``plan`` (pure,
protocol/folder_state.py) says what to do; this module does it: fetch content
(reusing local copies first, then peers), write temp + fsync + rename, keep conflict
copies, delete, make directories and links.  Nothing is ever written through a
symlink, and no path leaves the folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dizzy.protocol.changelog import (
    MAX_BATCH_ENTRIES,
    ZERO_HASH,
    LogEntry,
    LogReplica,
    LogWriter,
    SignedHead,
    sign_head,
)
from dizzy.protocol.errors import (
    DizzyError,
    NotFound,
    RemoteProtocolError,
    StorageError,
    UsageError,
)
from dizzy.protocol.folder_state import (
    Adopt,
    Delete,
    Fetch,
    FolderState,
    KeepConflict,
    LocalFileInfo,
    MakeDir,
    MakeLink,
    conflict_path_for,
    plan,
)
from dizzy.protocol.ids import DeviceId
from dizzy.protocol.paths import validate_relpath
from dizzy.protocol.versions import VersionVector

from .events import EventBus
from .fsutil import finish_file, fsync_dir, remove_quietly, storage_error, temp_name_beside
from .index import Index
from .object_service import SMALL_OBJECT_MAX
from .scanner import ScannedFile
from .small_objects import BATCH_MAX_BYTES, BATCH_MAX_IDS

log = logging.getLogger("dizzy.sync")

#: files fetched at once while applying: many small files are round-trip bound, and
#: large ones share the links anyway
PARALLEL_TRANSFERS = 32
#: fetched files renamed into place per file-system sync
RENAME_BATCH = 500
#: obj.smalls batches in flight at once: enough to keep both ends busy (one batch
#: being served while the previous one is written), few enough to bound memory
#: (each batch holds up to BATCH_MAX_BYTES)
PARALLEL_BATCHES = 3


@dataclass
class SyncState:
    """Everything the engine keeps for one folder."""

    folder: str
    me: bytes
    writer: LogWriter
    merged: FolderState = field(default_factory=FolderState)
    versions: dict[str, VersionVector] = field(default_factory=dict)
    replicas: dict[bytes, LogReplica] = field(default_factory=dict)
    #: devices that answered for this folder: they share it
    peers: set[bytes] = field(default_factory=set)
    need_bytes: int = 0
    #: versions a scan took over from the fold without logging a change (see
    #: ``log_local_changes``), waiting for ``persist_local``; None: forget the path
    adopted: dict[str, VersionVector | None] = field(default_factory=dict)
    #: set when the merged state changed and the disk may need work
    dirty: trio.Event = field(default_factory=trio.Event)


# -- persistence ----------------------------------------------------------------------


def load_state(conn: sqlite3.Connection, folder: str, me: bytes, key: Ed25519PrivateKey,
               public_keys: dict[bytes, bytes]) -> SyncState:
    """Rebuild a folder's sync state from the index (every log, replayed in order)."""
    merged = FolderState()
    last: dict[bytes, LogEntry] = {}
    for device, _seq, data in conn.execute(
        "SELECT device, seq, data FROM log_entries WHERE folder = ? ORDER BY device, seq",
        (folder,),
    ):
        entry = LogEntry.decode(bytes(data))
        merged.apply(entry)
        last[bytes(device)] = entry
    mine = last.get(me)
    writer = LogWriter(folder, me, key, last_seq=mine.seq if mine else 0,
                       last_hash=mine.entry_hash if mine else ZERO_HASH)
    state = SyncState(folder, me, writer, merged)
    for device, entry in last.items():
        if device == me or device not in public_keys:
            continue
        row = conn.execute(
            "SELECT data FROM log_heads WHERE folder = ? AND device = ? ORDER BY seq DESC "
            "LIMIT 1", (folder, device)).fetchone()
        head = SignedHead.decode(bytes(row[0])) if row else None
        if head is not None and head.seq == entry.seq:
            state.replicas[device] = LogReplica(folder, device, public_keys[device],
                                                known_seq=entry.seq,
                                                known_hash=entry.entry_hash, head=head)
    for path, data in conn.execute(
        "SELECT path, version FROM folder_versions WHERE folder = ?", (folder,)
    ):
        state.versions[path] = VersionVector.decode(bytes(data))
    return state


def _save_entries(conn: sqlite3.Connection, entries: list[LogEntry],
                  head: SignedHead | None) -> None:
    with conn:
        conn.executemany(
            "INSERT OR IGNORE INTO log_entries (folder, device, seq, data) VALUES (?, ?, ?, ?)",
            [(e.folder, e.device, e.seq, e.encode()) for e in entries],
        )
        if head is not None:
            conn.execute(
                "INSERT OR REPLACE INTO log_heads (folder, device, seq, data) "
                "VALUES (?, ?, ?, ?)", (head.folder, head.device, head.seq, head.encode()))


def _save_versions(conn: sqlite3.Connection, folder: str,
                   versions: dict[str, VersionVector | None]) -> None:
    gone = [(folder, path) for path, version in versions.items() if version is None]
    kept = [(folder, path, version.encode()) for path, version in versions.items()
            if version is not None]
    with conn:
        conn.executemany("DELETE FROM folder_versions WHERE folder = ? AND path = ?", gone)
        conn.executemany("INSERT OR REPLACE INTO folder_versions (folder, path, version) "
                         "VALUES (?, ?, ?)", kept)


def forget_folder_logs(conn: sqlite3.Connection, folder: str) -> None:
    with conn:
        for table in ("log_entries", "log_heads", "folder_versions"):
            conn.execute(f"DELETE FROM {table} WHERE folder = ?", (folder,))


# -- logging local changes ------------------------------------------------------------


def log_local_changes(state: SyncState, files: dict[str, ScannedFile],
                      previous: dict[str, ScannedFile], changed: Iterable[str],
                      removed: Iterable[str]) -> list[LogEntry]:
    """Append this device's log entries for what a scan found changed or removed.

    A path that is now exactly what the fold says it should be is no change of ours:
    an apply put it there and was killed before it recorded that.  Logging it would
    make a spurious conflict with the next edit from the device that made it.  Such a
    path takes the fold's version instead (``state.adopted``).
    """
    entries: list[LogEntry] = []
    for path in sorted(changed):
        f = files[path]
        winner = state.merged.get(path)
        if winner is not None and _is_the_winner(f, winner):
            state.versions[path] = winner.version
            state.adopted[path] = winner.version
            continue
        base = state.versions.get(path)
        if base is None:
            # Made here, not fetched: it descends from no other device's content, so
            # an entry another device made at this path meanwhile is concurrent (a
            # conflict, both kept).  Claiming the winner's version would silently
            # supersede bytes this device never saw.  Only a deletion is safe to
            # descend from: it holds nothing to lose.
            winner = state.merged.get(path)
            base = winner.version if winner is not None and winner.deleted \
                else VersionVector()
        # Always past every entry this device made at the path: our own entries then
        # supersede each other by their vectors alone, as the fold needs.
        own = state.merged.counter(path, state.me)
        if own > base.get(state.me, 0):
            base = base.merge(VersionVector({state.me: own}))
        version = base.bump(state.me)
        entries.append(state.writer.append(
            path, f.kind, False, f.object_id if f.kind == "file" else None,
            f.size if f.kind == "file" else 0, f.mtime_ns, f.mode,
            f.link_target if f.kind == "link" else None, version))
        state.versions[path] = version
    for path in sorted(removed, key=lambda p: -p.count("/")):
        winner = state.merged.get(path)
        if winner is not None and winner.deleted:
            state.versions.pop(path, None)  # an apply deleted it: the fold's deletion
            state.adopted[path] = None
            continue
        old = previous.get(path)
        base = state.versions.get(path) or VersionVector()
        own = state.merged.counter(path, state.me)  # past our own entries, as above
        if own > base.get(state.me, 0):
            base = base.merge(VersionVector({state.me: own}))
        version = base.bump(state.me)
        entries.append(state.writer.append(
            path, old.kind if old is not None else "file", True, None, 0,
            old.mtime_ns if old is not None else 0, old.mode if old is not None else 0,
            None, version))
        state.versions[path] = version
    for entry in entries:
        state.merged.apply(entry)
    return entries


def _is_the_winner(f: ScannedFile, winner: LogEntry) -> bool:
    """Whether the scanned entry is exactly the fold's live entry for its path."""
    if winner.deleted or f.kind != winner.kind or f.mode != winner.mode:
        return False
    if f.kind == "dir":
        return True
    if f.kind == "link":
        return f.link_target == winner.link_target
    return (f.object_id, f.size, f.mtime_ns) == (winner.object_id, winner.size,
                                                 winner.mtime_ns)


async def persist_local(index: Index, state: SyncState, entries: list[LogEntry]) -> None:
    versions: dict[str, VersionVector | None] = dict(state.adopted)
    state.adopted.clear()
    versions.update({e.path: state.versions.get(e.path) for e in entries})
    if entries:
        await index.call(_save_entries, entries, state.writer.head())
    if versions:
        await index.call(_save_versions, state.folder, versions)


# -- serving our logs to peers --------------------------------------------------------


def heads_for(conn: sqlite3.Connection, state: SyncState, key: Ed25519PrivateKey) -> list[bytes]:
    heads = [state.writer.head().encode()]
    for (data,) in conn.execute(
        "SELECT h.data FROM log_heads h WHERE h.folder = ? AND h.device != ? AND h.seq = "
        "(SELECT MAX(seq) FROM log_heads WHERE folder = h.folder AND device = h.device)",
        (state.folder, state.me),
    ):
        heads.append(bytes(data))
    return heads


def log_batch(conn: sqlite3.Connection, state: SyncState, device: bytes, after: int,
              key: Ed25519PrivateKey) -> tuple[list[bytes], bytes]:
    """Entries of ``device``'s log after ``after``, ending at a signed head."""
    if device == state.me:
        end = min(after + MAX_BATCH_ENTRIES, state.writer.last_seq)
        if end <= after:
            return [], state.writer.head().encode()
        rows = conn.execute(
            "SELECT data FROM log_entries WHERE folder = ? AND device = ? AND seq > ? AND "
            "seq <= ? ORDER BY seq", (state.folder, device, after, end)).fetchall()
        entries = [bytes(r[0]) for r in rows]
        if not entries:
            raise NotFound("those entries are still being stored; ask again")
        # The writer runs ahead of the index while new entries are being saved: sign
        # the head of what is stored (a true prefix of the log), not of the writer,
        # or the batch ends short of its head and the peer refuses it.
        last = LogEntry.decode(entries[-1])
        return entries, sign_head(state.folder, device, last.seq, last.entry_hash,
                                  key).encode()
    row = conn.execute(
        "SELECT seq, data FROM log_heads WHERE folder = ? AND device = ? AND seq > ? "
        "ORDER BY seq LIMIT 1", (state.folder, device, after)).fetchone()
    if row is None:
        raise NotFound("no newer entries of that log here")
    end, head = row
    rows = conn.execute(
        "SELECT data FROM log_entries WHERE folder = ? AND device = ? AND seq > ? AND seq <= ? "
        "ORDER BY seq LIMIT ?", (state.folder, device, after, end, MAX_BATCH_ENTRIES)).fetchall()
    return [bytes(r[0]) for r in rows], bytes(head)


# -- pulling peers' logs --------------------------------------------------------------


async def pull(link: Any, state: SyncState, index: Index,
               public_keys: dict[bytes, bytes]) -> int:
    """Replicate every log ``link``'s device holds for this folder; returns new entries."""
    try:
        reply = await link.request("folder.heads", {"folder": state.folder})
    except DizzyError as exc:
        log.debug("%s does not share %s: %s", link.device_id.short, state.folder, exc)
        state.peers.discard(link.device_id.digest)
        return 0
    state.peers.add(link.device_id.digest)
    heads = reply.get("heads")
    if not isinstance(heads, list):
        raise RemoteProtocolError("folder.heads reply without heads")
    added = 0
    for raw in heads[:1024]:
        if not isinstance(raw, bytes):
            continue
        head = SignedHead.decode(raw)
        if head.folder != state.folder or head.device == state.me:
            continue
        public = public_keys.get(head.device)
        if public is None:
            continue  # a device we are not paired with: we cannot verify its log
        replica = state.replicas.get(head.device)
        if replica is None:
            replica = LogReplica(state.folder, head.device, public)
        while replica.known_seq < head.seq:
            batch = await link.request("folder.log", {
                "folder": state.folder, "device": head.device, "after": replica.known_seq})
            raw_entries = batch.get("entries")
            raw_head = batch.get("head")
            if not isinstance(raw_entries, list) or not isinstance(raw_head, bytes) or \
                    not all(isinstance(e, bytes) for e in raw_entries) or not raw_entries:
                raise RemoteProtocolError("malformed folder.log reply")
            entries = [LogEntry.decode(e) for e in raw_entries]
            batch_head = SignedHead.decode(raw_head)
            new = replica.accept(entries, batch_head)  # Forged/Rollback/Fork/BrokenChain
            await index.call(_save_entries, new, batch_head)
            state.replicas[head.device] = replica
            for entry in new:
                state.merged.apply(entry)
            added += len(new)
    if added:
        log.info("folder %s: %d new change(s) from %s", state.folder, added,
                 link.device_id.short)
        state.dirty.set()
    return added


# -- applying the plan ----------------------------------------------------------------


class Applier:
    """Carries out ``plan``'s actions on one folder's disk."""

    def __init__(self, root: Path, state: SyncState, files: dict[str, ScannedFile],
                 index: Index, obtain: Any, events: EventBus,
                 obtain_small_batch: Any = None) -> None:
        self.root = root
        self.events = events
        self.state = state
        self.files = files
        self.index = index
        #: async (object_id, size, temp_path, sharing, what, folder=) -> None: puts the
        #: content at temp_path (``what``, the final path, names it in transfer events)
        self.obtain = obtain
        #: async ([(object_id, temp_path)], sharing) -> set of temp paths written; None
        #: where every file goes alone
        self.obtain_small_batch = obtain_small_batch
        self.changed_versions: dict[str, VersionVector | None] = {}
        #: directories whose entries changed: fsynced once at the end of the run (a
        #: crash before that loses a rename, never a file's content)
        self.dirs_to_sync: set[Path] = set()
        #: fetched files waiting to be renamed into place: (temp, final, action)
        self.ready: list[tuple[Path, Path, Fetch]] = []
        #: fetched files that could not be renamed into place (retried later)
        self.flush_failures = 0
        #: entries this apply added to our own log (the caller announces them)
        self.logged: list[LogEntry] = []
        #: conflicts closed here: path -> our entry naming the winner's content
        self._closed: dict[str, LogEntry] = {}
        self._flush_lock = trio.Lock()
        #: why actions failed for want of disk (full, read-only, denied): the folder
        #: shows the first as its error until an apply succeeds
        self.storage_errors: list[str] = []

    def local_view(self) -> dict[str, LocalFileInfo]:
        out = {}
        for path, f in self.files.items():
            version = self.state.versions.get(path) or VersionVector()
            out[path] = LocalFileInfo(f.kind, f.object_id, f.size, f.mtime_ns, f.mode, version,
                                      f.link_target)
        return out

    async def run(self, receive_only: bool) -> int:
        """Carry out the plan; returns how many actions failed (to retry later)."""
        actions = plan(self.local_view(), self.state.merged, receive_only)
        for action in actions:
            if isinstance(action, Adopt):
                self.state.versions[action.path] = action.version
                self.changed_versions[action.path] = action.version
        todo = [a for a in actions if isinstance(a, (Fetch, Delete, MakeDir, MakeLink,
                                                     KeepConflict))]
        self.state.need_bytes = sum(a.entry.size for a in todo if isinstance(a, Fetch))
        failed = 0

        async def one(action: Any) -> None:
            nonlocal failed
            try:
                await self._one(action)
            except (DizzyError, OSError) as exc:
                failed += 1
                self.events.publish("error", where=f"folder {self.state.folder}",
                                    message=f"{type(action).__name__} {action.path} failed: "
                                            f"{exc}")
                if isinstance(exc, OSError):
                    exc = storage_error(exc, f"writing {action.path}")
                if isinstance(exc, StorageError):
                    self.storage_errors.append(f"{action.path}: {exc}")
                return  # its bytes are still needed
            if isinstance(action, Fetch):
                self.state.need_bytes -= action.entry.size

        # Conflict copies, directories and deletions in plan order (parents and
        # children matter); files and links, whose parents exist by then, in parallel.
        # Small files go in batches (one round trip and two thread hops per batch).
        parallel = [a for a in todo if isinstance(a, (Fetch, MakeLink))]
        batches: list[list[Fetch]] = []
        if self.obtain_small_batch is not None:
            small = [a for a in parallel if isinstance(a, Fetch) and a.entry.object_id
                     and 0 < a.entry.size <= SMALL_OBJECT_MAX]
            batches = small_batches(small)
            batched = {id(a) for a in small}
            parallel = [a for a in parallel if id(a) not in batched]
        for action in todo:
            if isinstance(action, (KeepConflict, MakeDir)):
                await one(action)
        limiter = trio.CapacityLimiter(PARALLEL_TRANSFERS)
        batch_limiter = trio.CapacityLimiter(PARALLEL_BATCHES)

        async def limited(action: Any) -> None:
            async with limiter:
                await one(action)

        async def limited_batch(batch: list[Fetch]) -> None:
            async with batch_limiter:
                leftovers = await self._fetch_small_batch(batch, one)
            for action in leftovers:  # alone: other sources, the fetcher, its error
                await limited(action)

        try:
            async with trio.open_nursery() as nursery:
                for batch in batches:
                    nursery.start_soon(limited_batch, batch)
                for action in parallel:
                    nursery.start_soon(limited, action)
        finally:
            with trio.CancelScope(shield=True):
                await self._flush()
        for action in todo:
            if isinstance(action, Delete):
                await one(action)
        dirs, self.dirs_to_sync = self.dirs_to_sync, set()
        await trio.to_thread.run_sync(_fsync_dirs, dirs)
        for relpath, closed in self._closed.items():
            here = self.files.get(relpath)
            if here is not None and here.object_id == closed.object_id:
                # the winner's content arrived: it is here at the closing version
                self.state.versions[relpath] = closed.version
                self.changed_versions[relpath] = closed.version
        if self.changed_versions:
            await self.index.call(_save_versions, self.state.folder, self.changed_versions)
        self.state.need_bytes = max(self.state.need_bytes, 0)
        return failed + self.flush_failures

    def _target(self, relpath: str) -> Path:
        made: list[Path] = []
        try:
            return _checked_target(self.root, relpath, made)
        finally:
            for directory in made:
                self._record(directory)

    def _unchanged(self, relpath: str, path: Path) -> bool:
        """The path is still as the last scan saw it (or absent, as it saw)."""
        known = self.files.get(relpath)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return known is None
        if known is None:
            return False
        return (st.st_size, st.st_mtime_ns, st.st_ino) == (known.size, known.mtime_ns,
                                                           known.inode) or known.kind == "dir"

    def _record(self, path: Path, object_id: str | None = None,
                version: VersionVector | None = None,
                st: os.stat_result | None = None) -> None:
        relpath = path.relative_to(self.root).as_posix()
        if st is None:
            st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            kind, target = "link", os.readlink(path)
        elif stat.S_ISDIR(st.st_mode):
            kind, target = "dir", None
        else:
            kind, target = "file", None
        self.files[relpath] = ScannedFile(
            relpath, kind, st.st_size if kind == "file" else (len(target or "")),  # type: ignore[arg-type]
            st.st_mtime_ns, st.st_ino, stat.S_IMODE(st.st_mode), object_id, target)
        if version is not None:
            self.state.versions[relpath] = version
            self.changed_versions[relpath] = version

    async def _one(self, action: Any) -> None:
        path = self._target(action.path)
        if isinstance(action, KeepConflict):
            if self._unchanged(action.path, path):
                copy = self._keep_copy(action, path)
                fsync_dir(path.parent)
                self.files.pop(action.path, None)
                self.events.publish(
                    "conflict", folder=self.state.folder, path=action.path,
                    conflict_path=copy.relative_to(self.root).as_posix(),
                    device_id=str(DeviceId(action.loser.device)))
                await self._close_conflict(action)
        elif isinstance(action, MakeDir):
            entry = action.entry
            try:
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):
                    raise UsageError(f"{action.path} exists and is not a directory")
                os.chmod(path, entry.mode or 0o755)
            except FileNotFoundError:
                os.mkdir(path, entry.mode or 0o755)
            self._record(path, version=entry.version)
        elif isinstance(action, MakeLink):
            entry = action.entry
            if not self._unchanged(action.path, path):
                raise UsageError(f"{action.path} changed here; rescanning first")
            tmp = temp_name_beside(path)
            os.symlink(entry.link_target or "", tmp)  # a link is created, never followed
            os.rename(tmp, path)
            self._record(path, version=entry.version)
        elif isinstance(action, Fetch):
            await self._fetch(action, path)
        elif isinstance(action, Delete):
            if not self._unchanged(action.path, path):
                raise UsageError(f"{action.path} changed here; not deleting it")
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    os.rmdir(path)
                else:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            fsync_dir(path.parent)
            relpath = action.path
            self.files.pop(relpath, None)
            self.state.versions.pop(relpath, None)
            self.changed_versions[relpath] = None

    def _keep_copy(self, action: KeepConflict, path: Path) -> Path:
        """Move the losing version to its conflict name, never over another file: two
        conflicts at one path can share a name (same losing device, same second), and
        a plain rename would silently destroy the earlier copy."""
        for attempt in range(1, 1000):
            copy = self._target(conflict_path_for(action.path, action.loser, attempt))
            try:
                os.link(path, copy)  # fails if the name is taken, unlike rename
            except FileExistsError:
                continue
            except OSError:
                if os.path.lexists(copy):  # no hard links here: check, then rename
                    continue
                os.rename(path, copy)
                return copy
            os.unlink(path)
            return copy
        raise UsageError(f"{action.path}: no free name for a conflict copy")

    async def _close_conflict(self, action: KeepConflict) -> None:
        """The losing version here is now a conflict copy: log the path as holding the
        winner's content at a version past both.  Otherwise the loser stays a head
        forever, and wins again (with content nobody has any more) as soon as the
        winner is deleted.  Only a device that kept a copy may close the conflict."""
        winner = self.state.merged.get(action.path)
        if winner is None or winner.deleted:
            return
        me = self.state.me
        version = winner.version.merge(action.loser.version)
        own = self.state.merged.counter(action.path, me)
        if own > version.get(me, 0):
            version = version.merge(VersionVector({me: own}))
        entry = self.state.writer.append(
            action.path, winner.kind, False, winner.object_id, winner.size, winner.mtime_ns,
            winner.mode, winner.link_target, version.bump(me))
        self.state.merged.apply(entry)
        self._closed[action.path] = entry
        self.logged.append(entry)
        await self.index.call(_save_entries, [entry], self.state.writer.head())

    async def _fetch(self, action: Fetch, path: Path) -> None:
        entry = action.entry
        if not self._unchanged(action.path, path):
            raise UsageError(f"{action.path} changed here while syncing; rescanning first")
        tmp = temp_name_beside(path)
        try:
            if entry.size == 0:
                tmp.touch(mode=0o600)
            else:
                assert entry.object_id is not None
                await self.obtain(entry.object_id, entry.size, tmp, self.state.peers,
                                  str(path), folder=self.state.folder)
            await trio.to_thread.run_sync(finish_file, tmp, entry.mode, entry.mtime_ns)
        except BaseException:
            remove_quietly(tmp)
            raise
        # Renamed into place in batches after one file-system sync (see _flush): one
        # flush for hundreds of small files instead of an fsync each.
        self.ready.append((tmp, path, action))
        if len(self.ready) >= RENAME_BATCH:
            await self._flush()

    async def _fetch_small_batch(self, batch: list[Fetch], one: Any) -> list[Fetch]:
        """Fetch small files together; returns the actions left to do one by one."""
        # The checks cost a few system calls a file: in a worker thread, one trip per
        # batch, so the trio thread keeps the network moving meanwhile.
        made: list[Path] = []
        prepared, refused = await trio.to_thread.run_sync(self._prepare_batch, batch, made)
        for directory in made:
            self._record(directory)
        for action in refused:
            await one(action)  # counts and logs the failure like any other
        queued: set[Path] = set()
        try:
            written = await self.obtain_small_batch(
                [(a.entry.object_id, tmp) for a, tmp, _ in prepared], self.state.peers,
                {tmp: (a.entry.mode, a.entry.mtime_ns) for a, tmp, _ in prepared})
            for action, tmp, path in prepared:
                if tmp in written:  # with its mode and mtime
                    self.ready.append((tmp, path, action))
                    queued.add(tmp)
                    self.state.need_bytes -= action.entry.size
        finally:
            for _action, tmp, _path in prepared:
                if tmp not in queued:
                    remove_quietly(tmp)
        if len(self.ready) >= RENAME_BATCH:
            await self._flush()
        return [a for a, tmp, _ in prepared if tmp not in queued]

    def _prepare_batch(self, batch: list[Fetch], made: list[Path]
                       ) -> tuple[list[tuple[Fetch, Path, Path]], list[Fetch]]:
        """(action, temp, final) for each file of ``batch`` that may be written, and
        the refused actions.  A worker thread: directories it creates go to ``made``
        for the trio thread to record."""
        prepared: list[tuple[Fetch, Path, Path]] = []
        refused: list[Fetch] = []
        for action in batch:
            try:
                path = _checked_target(self.root, action.path, made)
                if not self._unchanged(action.path, path):
                    raise UsageError(f"{action.path} changed here while syncing; "
                                     "rescanning first")
            except (DizzyError, OSError):
                refused.append(action)
                continue
            prepared.append((action, temp_name_beside(path), path))
        return prepared, refused

    async def _flush(self) -> None:
        """Make every finished temp file durable at once, then rename each into place."""
        async with self._flush_lock:
            batch, self.ready = self.ready, []
            if not batch:
                return
            await trio.to_thread.run_sync(_sync_file_system, self.root)
            outcomes = await trio.to_thread.run_sync(self._rename_batch, batch)
            for (_tmp, path, action), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, os.stat_result):
                    self._record(path, object_id=action.entry.object_id,
                                 version=action.entry.version, st=outcome)
                    self.dirs_to_sync.add(path.parent)
                elif outcome is None:
                    log.warning("folder %s: %s changed here while syncing; kept as is",
                                self.state.folder, action.path)
                else:
                    self.flush_failures += 1
                    log.warning("folder %s: Fetch %s failed: %s", self.state.folder,
                                action.path, outcome)

    def _rename_batch(self, batch: list[tuple[Path, Path, Fetch]]
                      ) -> list[os.stat_result | OSError | None]:
        """Rename each temp file into place (a worker thread): its stat when it was
        renamed, None when the destination changed here meanwhile (the temp file is
        dropped), or the OSError that stopped it."""
        outcomes: list[os.stat_result | OSError | None] = []
        for tmp, path, action in batch:
            if not self._unchanged(action.path, path):
                remove_quietly(tmp)
                outcomes.append(None)
                continue
            try:
                # The temp file's own stat, taken before the rename: a program may
                # write into the file the moment it has its final name, and a stat
                # taken after would record that edit as our content (the scanner
                # would then never see it, and it would be lost).
                st = os.lstat(tmp)
                os.rename(tmp, path)
            except OSError as exc:
                # Its directory was renamed or deleted here meanwhile.  One file's
                # failure must not strand the rest of the batch as temp files.
                remove_quietly(tmp)
                outcomes.append(exc)
                continue
            outcomes.append(st)
        return outcomes


def small_batches(actions: list[Fetch]) -> list[list[Fetch]]:
    """Split small-file fetches into obj.smalls-sized batches, in plan order."""
    batches: list[list[Fetch]] = []
    current: list[Fetch] = []
    size = 0
    for action in actions:
        if current and (len(current) >= BATCH_MAX_IDS
                        or size + action.entry.size > BATCH_MAX_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(action)
        size += action.entry.size
    if current:
        batches.append(current)
    return batches


def _checked_target(root: Path, relpath: str, made: list[Path]) -> Path:
    """Where ``relpath`` (from a peer: untrusted) goes under ``root``; creates missing
    parent directories (appended to ``made``).  Blocking; any thread."""
    parts = validate_relpath(relpath)  # no "..", no absolute, no NUL
    path = root.joinpath(*parts)
    # Every ancestor must be a real directory inside the folder (never a symlink).
    current = root
    for part in parts[:-1]:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o755)
            made.append(current)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{relpath}: {current} is not a directory")
    return path


def _load_syncfs() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    return fn


_SYNCFS = _load_syncfs()


def _sync_file_system(root: Path) -> None:
    """Flush every dirty file of the folder's file system (Linux syncfs; else sync)."""
    if _SYNCFS is None:
        os.sync()
        return
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _SYNCFS(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _fsync_dirs(dirs: Iterable[Path]) -> None:
    for directory in dirs:
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(directory)


def device_short(device: bytes) -> str:
    return DeviceId(device).short


def now() -> float:
    return time.time()
