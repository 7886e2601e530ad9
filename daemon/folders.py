"""Shared folders on this device: the registry, the scanning loop, and serving their
files in place by hash.

A folder is shared by name (``dizzy share NAME PATH``).  Its runner rescans the folder
(stat only for unchanged files) and records what it found in ``folder_files``, so any
file in a shared folder can be fetched by its BLAKE3 from this device without a second
copy in the object store.  A folder whose path has disappeared is paused with an error,
never taken as "everything was deleted".
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import blake3
import trio
import watchfiles

from dizzy.protocol.errors import (
    DizzyError,
    NotFound,
    RemoteProtocolError,
    StorageError,
    UsageError,
)
from dizzy.protocol.ids import DeviceId
from dizzy.protocol.paths import validate_name
from dizzy.protocol.peer_wire import Notice, Request

from .events import EventBus
from .fetch import Fetcher
from .folder_sync import (
    Applier,
    SyncState,
    heads_for,
    load_state,
    log_batch,
    log_local_changes,
    persist_local,
    pull,
)
from .fsutil import storage_error
from .identity import Identity, public_key_of_cert
from .index import Index
from .object_service import SMALL_OBJECT_MAX, locate_content
from .outboards import save_many as save_outboards
from .peers import PeerLink, PeerManager
from .progress import CancelFlag, ProgressCounter
from .scanner import FolderMissing, ScannedFile, scan
from .small_objects import Finish, obtain_batch, write_new
from .store import ObjectStore
from .trust import TrustStore

log = logging.getLogger("dizzy.folders")

FolderMode = Literal["send-receive", "send-only", "receive-only"]
MODES: tuple[FolderMode, ...] = ("send-receive", "send-only", "receive-only")
#: a rescan with nothing changed costs only stat calls; this bounds how stale the
#: index can be where file-system events are missed
RESCAN_INTERVAL = 10.0
#: file-system events are gathered this long before a rescan: a burst of writes (an
#: unpacked archive) costs one scan, not thousands
WATCH_DEBOUNCE_MS = 200
#: how stale describe()'s file and byte counts may be while a folder is busy
COUNT_MAX_AGE = 0.25


@dataclass
class FolderRunner:
    name: str
    path: Path
    mode: FolderMode
    index: Index
    manager: FolderManager
    state: str = "scanning"
    error: str | None = None
    files: dict[str, ScannedFile] = field(default_factory=dict)
    last_scan: float | None = None
    wake: trio.Event = field(default_factory=trio.Event)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    sync: SyncState | None = None
    #: scans and applies take turns: a scan must not see a half-applied folder
    lock: trio.Lock = field(default_factory=trio.Lock)
    pull_lock: trio.Lock = field(default_factory=trio.Lock)
    failures: int = 0
    #: the (state, error) subscribers last heard of: repeats are not news
    published: tuple[str, str | None] | None = None
    #: the last apply could not write for want of disk (full, read-only): shown as the
    #: folder's error until an apply succeeds
    apply_error: str | None = None
    #: paths whose bytes were found not to match their recorded ID: the next scan
    #: hashes them whatever their stat says
    rehash: set[str] = field(default_factory=set)

    #: (what the counts were taken of, when, files, bytes): see _counts
    _count_cache: tuple[tuple[object, ...], float, int, int] | None = field(
        default=None, init=False, repr=False, compare=False)

    @property
    def file_count(self) -> int:
        return self._counts()[0]

    @property
    def byte_count(self) -> int:
        return self._counts()[1]

    def _counts(self) -> tuple[int, int]:
        """(files, bytes) of the file table, recounted at most every COUNT_MAX_AGE
        while nothing a reader waits on changed: a status poll every 20 ms during a
        sync of 100,000 files paid a full count (~10 ms) each time.  A new scan, a
        change of state or of the bytes still needed recounts at once, so a caller
        waiting for "idle with N files" never sees a stale N."""
        key = (id(self.files), self.state, self.last_scan,
               self.sync.need_bytes if self.sync else 0)
        now = time.monotonic()
        cached = self._count_cache
        if cached is None or cached[0] != key or now - cached[1] > COUNT_MAX_AGE:
            files = size = 0
            for f in self.files.values():
                if f.kind == "file":
                    files += 1
                    size += f.size
            cached = self._count_cache = (key, now, files, size)
        return cached[2], cached[3]

    def set_state(self, state: str, error: str | None = None, *, publish: bool = True) -> None:
        self.state, self.error = state, error
        if publish and (state, error) != self.published:
            previous = self.published[0] if self.published else None
            self.published = (state, error)
            self.manager.events.publish("folder.state", folder=self.name, state=state,
                                        error=error, previous=previous)

    def report_error(self, message: str) -> None:
        self.manager.events.publish("error", where=f"folder {self.name}", message=message)

    async def run(self) -> None:
        with self.cancel_scope:
            removed = await trio.to_thread.run_sync(_remove_stale_temps, self.path)
            if removed:
                log.info("folder %s: removed %d temp file(s) an interrupted sync left",
                         self.name, removed)
            self.files = await self.index.call(_load_files, self.name)
            self.sync = await self.index.call(
                load_state, self.name, self.manager.me, self.manager.key,
                self.manager.public_keys(),
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._apply_loop)
                nursery.start_soon(self._watch)
                # Tell the peers we are here: those sharing the name pull from us (and
                # so list us) even before we have a change of our own.
                nursery.start_soon(self.manager.announce, self.name)
                for link in list(self.manager.links()):
                    nursery.start_soon(self.manager.pull_folder, link, self)
                quiet = False
                while True:
                    await self.scan_once(quiet=quiet)
                    with trio.move_on_after(RESCAN_INTERVAL) as timer:
                        await self.wake.wait()
                    self.wake = trio.Event()
                    # A periodic rescan that finds nothing is no news: its scanning/idle
                    # flip every 10 s would drown the events worth seeing.
                    quiet = timer.cancelled_caught

    async def _watch(self) -> None:
        """Rescan soon after the file system says something changed (inotify through
        watchfiles); the periodic rescan covers whatever a watch misses."""
        # watchfiles waits in a thread that only a stop event ends early (it listens
        # for asyncio's cancellation, not trio's): without this, every shared folder
        # held up the daemon's shutdown by watchfiles' 5 s timeout.
        stop = trio.Event()  # its is_set() is a plain flag read: fine from that thread

        async def stop_on_cancel() -> None:
            try:
                await trio.sleep_forever()
            finally:
                stop.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_cancel)
            while True:
                try:
                    async for _changes in watchfiles.awatch(
                        self.path, debounce=WATCH_DEBOUNCE_MS, step=50, recursive=True,
                        watch_filter=_not_our_temp_file, ignore_permission_denied=True,
                        stop_event=stop,
                    ):
                        self.wake.set()
                except Exception as exc:  # the folder vanished, too many watches...
                    log.debug("watching %s stopped: %s", self.path, exc)
                await trio.sleep(RESCAN_INTERVAL)

    async def _apply_loop(self) -> None:
        assert self.sync is not None
        while True:
            await self.sync.dirty.wait()
            self.sync.dirty = trio.Event()
            if self.mode == "send-only" or self.state == "error":
                continue
            if not self.sync.replicas:
                # Only our own log: the fold is what the disk already holds.
                continue
            async with self.lock:
                self.set_state("syncing")
                applier = Applier(self.path, self.sync, self.files, self.index,
                                  self.manager.obtain, self.manager.events,
                                  self.manager.obtain_small_batch)
                before = dict(self.files)
                failed = 0
                try:
                    failed = await applier.run(self.mode == "receive-only")
                except (DizzyError, OSError) as exc:
                    self.report_error(f"applying changes failed: {exc}")
                    failed = 1
                    if isinstance(exc, OSError):
                        exc = storage_error(exc, f"syncing folder {self.name}")
                    if isinstance(exc, StorageError):
                        applier.storage_errors.append(str(exc))
                finally:
                    if failed:
                        # A directory renamed here mid-fetch takes our temp file with
                        # it, out of the applier's reach.  No apply runs now (we hold
                        # the lock), so every temp file of ours in the folder is stale.
                        await trio.to_thread.run_sync(_remove_stale_temps, self.path)
                    touched = [p for p in self.files if before.get(p) != self.files[p]]
                    gone = [p for p in before if p not in self.files]
                    try:
                        await self.index.call(_save_files, self.name, self.files, touched,
                                              gone)
                    except StorageError as exc:  # the disk is right; the next run saves
                        applier.storage_errors.append(str(exc))
                    self.set_state("idle")
            if applier.storage_errors:
                failed = max(failed, 1)
                error = (f"{len(applier.storage_errors)} change(s) not written: "
                         f"{applier.storage_errors[0]}")
                if self.apply_error is None:  # once, not at every retry
                    self.report_error(error)
                self.apply_error = error
            elif not failed:
                self.apply_error = None
            if applier.logged:
                await self.manager.announce(self.name)  # conflicts we closed
            if failed:
                # Content no online peer could give yet, or a file that changed under
                # us: rescan, and try again soon, then less often.
                self.failures += 1
                self.wake.set()
                await trio.sleep(min(2.0 * self.failures, 30.0))
                self.sync.dirty.set()
            else:
                self.failures = 0
                # In sync: partial data of versions that were replaced before they
                # arrived (or of a transfer a kill cut off) will never be needed.
                dropped = await self.manager.fetcher.drop_folder_partials(self.name)
                if dropped:
                    log.info("folder %s: dropped %d unfinished transfer(s) of replaced "
                             "versions", self.name, dropped)

    async def scan_once(self, *, quiet: bool = False) -> None:
        """Rescan; ``quiet``: announce the scanning state only if the scan finds news."""
        # Scans and applies take strict turns: a scan running beside an apply would
        # take the files it is writing for local edits.
        async with self.lock:
            # A paused folder's retries are no news until they succeed.
            self.set_state("scanning", publish=not quiet and self.state != "error")
            started = time.monotonic()
            for path in self.rehash & self.files.keys():
                # inode 0 never matches a stat: the scanner hashes the file again
                self.files[path] = dataclasses.replace(self.files[path], inode=0)
            self.rehash.clear()
            try:
                result = await trio.to_thread.run_sync(scan, self.path, self.files)
            except FolderMissing as exc:
                # An unmounted disk must never look like "everything was deleted".
                self.set_state("error", exc.message)  # logged and shown once per error
                return
            except OSError as exc:
                self.set_state("error", f"cannot scan {self.path}: {exc.strerror}")
                return
            try:
                await self._record_scan(result, time.monotonic() - started)
            except StorageError as exc:
                # The index is full: what this scan logged in memory was not saved.  Back
                # to what the index holds, so our log never skips a sequence number; the
                # next scan after space is freed finds the same changes again.
                await self._reload_sync_state()
                self.set_state("error", f"cannot record the scan: {exc}")

    async def _reload_sync_state(self) -> None:
        old = self.sync
        assert old is not None
        fresh = await self.index.call(load_state, self.name, self.manager.me,
                                      self.manager.key, self.manager.public_keys())
        fresh.peers, fresh.dirty = old.peers, old.dirty
        self.sync = fresh

    async def _record_scan(self, result: Any, seconds: float) -> None:
        assert self.sync is not None
        changed = [*result.added, *result.changed]
        if (changed or result.removed) and self.mode != "receive-only":
            # Our changes go into our signed log (receive-only folders send nothing).
            entries = log_local_changes(self.sync, result.files, self.files, changed,
                                        result.removed)
            await persist_local(self.index, self.sync, entries)
            if entries:
                await self.manager.announce(self.name)
        if result.outboards:
            await self.index.call(save_outboards, result.outboards)
        saved = [*changed, *result.refreshed]
        if saved or result.removed or self.last_scan is None:
            await self.index.call(_save_files, self.name, result.files, saved, result.removed)
        first = self.last_scan is None
        self.files = dict(result.files)
        self.last_scan = time.time()
        if first or changed or result.removed:
            self.manager.events.publish(
                "folder.scanned", folder=self.name, files=self.file_count,
                bytes=self.byte_count, changed=len(changed) + len(result.removed),
                added=len(result.added), modified=len(result.changed),
                removed=len(result.removed), seconds=round(seconds, 3))
        self.set_state("idle")
        if first or changed or result.removed:
            self.sync.dirty.set()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "mode": self.mode,
            # a scan error (the folder is gone) first, then one from writing to it
            "state": "error" if self.apply_error and self.state == "idle" else self.state,
            "error": self.error or self.apply_error,
            "files": self.file_count,
            "bytes": self.byte_count,
            "need_bytes": self.sync.need_bytes if self.sync else 0,
            "in_sync": self.state == "idle" and self.failures == 0 and not self.apply_error
            and (self.sync is None or self.sync.need_bytes == 0),
            "last_scan": self.last_scan,
            "peers": sorted(str(DeviceId(d)) for d in (self.sync.peers if self.sync else ())),
        }


class FolderManager:
    def __init__(self, index: Index, home_root: Path, identity: Identity, trust: TrustStore,
                 peers: PeerManager, store: ObjectStore, fetcher: Fetcher, *,
                 events: EventBus) -> None:
        self.index = index
        self.events = events
        self.home_root = home_root
        self.identity = identity
        self.me = identity.device_id.digest
        self.key = identity.private_key
        self.trust = trust
        self.peers = peers
        self.store = store
        self.fetcher = fetcher
        self.runners: dict[str, FolderRunner] = {}
        #: folder names paired devices share that this device has not joined
        self.offered: dict[str, set[bytes]] = {}
        self._nursery: trio.Nursery | None = None
        peers.handlers["folder.list"] = self._serve_list
        peers.handlers["folder.heads"] = self._serve_heads
        peers.handlers["folder.log"] = self._serve_log
        peers.notice_handlers["folder.changed"] = self._on_changed
        peers.on_link_up.append(self._on_link_up)

    # -- peers -----------------------------------------------------------------------

    def public_keys(self) -> dict[bytes, bytes]:
        return {p.device_id.digest: public_key_of_cert(p.cert_pem) for p in self.trust.all()}

    def links(self) -> list[PeerLink]:
        return list(self.peers.links.values())

    async def announce(self, name: str) -> None:
        await self.peers.broadcast("folder.changed", {"folder": name})

    async def pull_folder(self, link: PeerLink, runner: FolderRunner) -> None:
        if runner.sync is None:
            return
        async with runner.pull_lock:
            try:
                await pull(link, runner.sync, self.index, self.public_keys())
            except (DizzyError, RemoteProtocolError) as exc:
                runner.report_error(f"refused the log from {link.device_id.short}: {exc}")

    async def _on_link_up(self, link: PeerLink) -> None:
        try:
            reply = await link.request("folder.list", {})
            names = reply.get("folders")
            if isinstance(names, list):
                for name in names:
                    if isinstance(name, str) and len(name) <= 255:
                        self.offered.setdefault(name, set()).add(link.device_id.digest)
        except DizzyError as exc:
            log.debug("folder.list from %s failed: %s", link.device_id.short, exc)
        for runner in list(self.runners.values()):
            await self.pull_folder(link, runner)

    async def _on_changed(self, link: PeerLink, notice: Notice) -> None:
        name = notice.body.get("folder")
        if isinstance(name, str):
            self.offered.setdefault(name, set()).add(link.device_id.digest)
            runner = self.runners.get(name)
            if runner is not None:
                await self.pull_folder(link, runner)

    def _runner_for(self, request: Request) -> FolderRunner:
        name = request.body.get("folder")
        runner = self.runners.get(name) if isinstance(name, str) else None
        if runner is None or runner.sync is None:
            raise NotFound(f"folder {name!r} is not shared here")
        return runner

    async def _serve_list(self, link: PeerLink, request: Request) -> dict[str, Any]:
        return {"folders": sorted(self.runners)}

    async def _serve_heads(self, link: PeerLink, request: Request) -> dict[str, Any]:
        runner = self._runner_for(request)
        assert runner.sync is not None
        runner.sync.peers.add(link.device_id.digest)  # it asks: it shares this folder
        return {"heads": await self.index.call(heads_for, runner.sync, self.key)}

    async def _serve_log(self, link: PeerLink, request: Request) -> dict[str, Any]:
        runner = self._runner_for(request)
        device = request.body.get("device")
        after = request.body.get("after")
        if not isinstance(device, bytes) or len(device) != 32 or not isinstance(after, int) \
                or isinstance(after, bool) or after < 0:
            raise UsageError("folder.log needs device (32 bytes) and after (>= 0)")
        assert runner.sync is not None
        entries, head = await self.index.call(log_batch, runner.sync, device, after, self.key)
        return {"entries": entries, "head": head}

    # -- content ---------------------------------------------------------------------

    async def _obtain_small(self, object_id: str, dest: Path, sharing: set[bytes]) -> bool:
        """One round trip for a small object: ask the peers sharing the folder first."""
        links = sorted(self.links(), key=lambda link: link.device_id.digest not in sharing)
        for link in links:
            try:
                reply = await link.request("obj.small", {"id": object_id})
            except DizzyError:
                continue
            data = reply.get("data")
            if not isinstance(data, bytes) or blake3.blake3(data).hexdigest() != object_id:
                self.events.publish("error", where="folder sync", message=(
                    f"peer {link.device_id.short} sent corrupt data for {object_id}"))
                continue
            await trio.to_thread.run_sync(write_new, dest, data)
            return True
        return False

    async def obtain_small_batch(self, items: list[tuple[str, Path]], sharing: set[bytes],
                                 finish: Mapping[Path, Finish]) -> set[Path]:
        """Many small objects, each to its own dest, in one round trip per batch (peers
        sharing the folder asked first); returns the dests written, each with the mode
        and mtime ``finish`` gives it."""
        links = sorted(self.links(), key=lambda link: link.device_id.digest not in sharing)
        return await obtain_batch(self.store, self.sync_find_object, links, items, finish)

    async def obtain(self, object_id: str, size: int, dest: Path,
                     sharing: set[bytes] | None = None, what: str = "",
                     folder: str | None = None) -> None:
        """Put ``object_id``'s bytes at ``dest``: from a local copy if there is one
        (renames and duplicates cost no transfer), else from peers.  ``what`` names
        the file in transfer events."""
        source = await trio.to_thread.run_sync(
            locate_content, self.store, self.sync_find_object, object_id
        )
        counter = ProgressCounter()
        if source is not None:
            try:
                await trio.to_thread.run_sync(self.store.sync_export_from, source, object_id,
                                              dest, counter, CancelFlag())
                return
            except DizzyError:
                pass  # changed since it was scanned: fetch it instead
        if size <= SMALL_OBJECT_MAX and await self._obtain_small(object_id, dest,
                                                                 sharing or set()):
            return
        kind = await self.fetcher.ensure_local(object_id, wait=False, progress=counter,
                                               deliver_to=dest, what=what, folder=folder)
        if kind != "delivered":
            await trio.to_thread.run_sync(self.store.sync_export, object_id, dest, counter,
                                          CancelFlag())

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        rows = await self.index.execute("SELECT name, path, mode FROM folders ORDER BY name")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for name, path, mode in rows:
                self._start(FolderRunner(name, Path(path), mode, self.index, self))
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
        runner = FolderRunner(name, real, mode, self.index, self)
        self._start(runner)
        self.events.publish("folder.shared", folder=name, path=str(real), mode=mode)
        return runner.describe()

    async def unshare(self, name: str) -> None:
        runner = self.runners.pop(name, None)
        if runner is None:
            raise NotFound(f"no shared folder named {name!r}")
        runner.cancel_scope.cancel()
        await self.index.call(_forget_folder, name)
        self.events.publish("folder.unshared", folder=name, path=str(runner.path))
        await self.fetcher.drop_folder_partials(name)

    def describe(self) -> list[dict[str, Any]]:
        out = [r.describe() for _, r in sorted(self.runners.items())]
        for name, devices in sorted(self.offered.items()):
            if name not in self.runners:
                out.append({
                    "name": name, "path": None, "mode": None, "state": "pending",
                    "error": None, "files": 0, "bytes": 0, "need_bytes": 0,
                    "in_sync": False, "last_scan": None,
                    "peers": sorted(str(DeviceId(d)) for d in devices),
                })
        return out

    def rescan(self, name: str | None = None) -> None:
        for runner in self.runners.values():
            if name is None or runner.name == name:
                runner.wake.set()

    async def rehash_object(self, object_id: str) -> None:
        """Shared files recorded as ``object_id`` hold other bytes now, although their
        size, mtime and inode did not change: have the next scan hash them again (and
        stop serving them under that ID meanwhile)."""
        await self.index.call(_forget_inode_of_object, object_id)
        for runner in self.runners.values():
            stale = [p for p, f in runner.files.items()
                     if f.object_id == object_id and p not in runner.rehash]
            for path in stale:
                runner.rehash.add(path)
                log.warning("folder %s: %s changed on disk since it was scanned (it no "
                            "longer holds %s); rehashing it", runner.name, path, object_id)
            if stale:
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


_OUR_TEMP = re.compile(r"\..+\.dizzy-[0-9a-f]{8}\.tmp")


def _remove_stale_temps(root: Path) -> int:
    """Temp files of ours that a killed daemon left in the folder (never a final name)."""
    removed = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if _OUR_TEMP.fullmatch(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    return removed


def _not_our_temp_file(change: Any, path: str) -> bool:
    # Our own temp files (".name.dizzy-xxxx.tmp") come and go while we apply changes.
    name = os.path.basename(path)
    return not (name.startswith(".") and ".dizzy-" in name and name.endswith(".tmp"))


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


def _forget_inode_of_object(conn: sqlite3.Connection, object_id: str) -> None:
    with conn:
        conn.execute("UPDATE folder_files SET inode = 0 WHERE object_id = ?", (object_id,))


def _files_with_object(conn: sqlite3.Connection, object_id: str
                       ) -> list[tuple[str, str, int, int, int]]:
    return conn.execute(
        "SELECT folder, path, size, mtime_ns, inode FROM folder_files "
        "WHERE object_id = ? AND kind = 'file'", (object_id,)
    ).fetchall()
