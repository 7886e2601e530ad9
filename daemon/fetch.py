"""Fetching objects from paired peers: verified, multi-source, resumable.

A blob is fetched chunk by chunk (its outboard names every chunk's hash) into a partial
file under ``<home>/partial``.  Every chunk is checked against the outboard before it
is written and recorded as it lands (see ``_DurableRecorder``), so a killed daemon
resumes where it stopped without rehashing anything.  Chunks come from every online
peer that has the object at once, several requests in flight per peer.  A peer that
sends a bad chunk is logged and that chunk is fetched from another source.  The whole
object is checked against its ID (hashed as the chunks land, see ordered_hash.py)
before it is renamed into the store; its bytes then reach the disk in the background
(write_behind.py).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import trio

from dizzy.protocol.errors import (
    CorruptData,
    DizzyError,
    NotFound,
    RemoteProtocolError,
    StorageError,
)
from dizzy.protocol.manifest import TreeManifest
from dizzy.protocol.outboard import Outboard

from .events import EventBus
from .fsutil import fsync_dir, remove_quietly, storage_error
from .home import Home
from .index import Index
from .nurseries import open_helper_nursery
from .ordered_hash import OrderedHasher
from .outboards import Outboards
from .peers import PeerGone, PeerLink, PeerManager, RemoteError
from .progress import ProgressCounter
from .store import UMASK, ObjectStore, start_writeback
from .transfer_events import TransferReport
from .write_behind import WriteBehind, record_unsynced

log = logging.getLogger("dizzy.fetch")

#: chunk requests in flight per source: enough to hide a round trip behind ~6 MiB of
#: data on a LAN; few enough that a killed receiver loses little in flight (measured
#: resend after kill -9 at half of 1 GiB: 8 -> ~1.1%, 6 -> 0.4-0.8%)
IN_FLIGHT_PER_SOURCE = 6
#: received chunks are made durable (fdatasync + index row) at least this often...
DURABLE_EVERY_BYTES = 32 * 1024 * 1024
#: ...or this many seconds, whichever first: a kill loses at most this much work
DURABLE_EVERY_SECONDS = 0.5
#: a peer asked "do you have it?" must answer this soon
STAT_TIMEOUT = 10.0
#: without --wait, how long a transfer whose sources all vanished waits for one to return
SOURCE_RETURN_WAIT = 30.0
#: a source that sent this many bad chunks is not asked again for this object
MAX_BAD_CHUNKS = 3
#: subtrees and files of a tree fetched at once
TREE_PARALLELISM = 8


@dataclass
class _Source:
    link: PeerLink
    bad_chunks: int = 0
    gone: bool = False
    #: it answered that it cannot serve the object (not a dropped link): waiting for
    #: it to come back is pointless
    refused: bool = False

    @property
    def name(self) -> str:
        return self.link.device_id.short


@dataclass
class Transfer:
    """One blob being fetched; ``cat`` follows ``received`` to stream in order."""

    object_id: str
    outboard: Outboard
    path: Path
    fd: int
    received: set[int]
    hasher: OrderedHasher
    #: ask the kernel to write each chunk to disk at once: for a folder, whose files
    #: are flushed before they get their names, so the disk works during the transfer
    early_writeback: bool = False
    landed: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    error: DizzyError | None = None
    #: bytes of the object on disk so far (received now or before a restart)
    done_bytes: int = 0
    #: one chunk written at a time: the file system serialises writes to one file
    #: anyway (the inode lock), and writers queued here sleep instead of spinning on it
    write_lock: threading.Lock = field(default_factory=threading.Lock)

    def notify(self) -> None:
        self.landed.set()
        self.landed = trio.Event()


class Fetcher:
    def __init__(self, home: Home, index: Index, store: ObjectStore, outboards: Outboards,
                 peers: PeerManager, *, events: EventBus, write_behind: WriteBehind) -> None:
        self.home = home
        self.write_behind = write_behind
        self.events = events
        self.index = index
        self.store = store
        self.outboards = outboards
        self.peers = peers
        self.transfers: dict[str, Transfer] = {}
        self._active: dict[str, trio.Event] = {}
        #: a ``get -o`` that found its object already being fetched without a
        #: destination (resumed at start-up, or for a plain ``get``) names its output
        #: here: the running transfer renames the finished file there, instead of into
        #: the store for the get to copy out again (a second write of every byte)
        self._claims: dict[str, Path] = {}
        #: the claims a transfer honoured: object ID -> the path it delivered to
        self._delivered_claims: dict[str, Path] = {}

    # -- entry points ----------------------------------------------------------------

    async def ensure_local(self, object_id: str, *, wait: bool,
                           progress: ProgressCounter | None = None,
                           deliver_to: Path | None = None, what: str = "",
                           folder: str | None = None, resuming: bool = False) -> str:
        """Make ``object_id`` (blob or whole tree) local; returns its kind.

        ``what`` names it in transfer events (the path it is fetched for, or "").

        With ``deliver_to`` (a blob fetched for ``get -o``), the finished file is renamed
        straight to that path when it is on the same file system, instead of into the
        store and then copied out: one write of the data instead of two.  The kind is
        then ``"delivered"``.  ``folder`` names the shared folder a blob is fetched
        for: its partial data is then the folder's to resume or drop (see
        ``drop_folder_partials``).
        """
        progress = progress or ProgressCounter()
        found = await trio.to_thread.run_sync(self.store.sync_lookup, object_id)
        if found is not None:
            if found[0] == "tree":
                await self._ensure_tree_contents(object_id, wait, progress, what)
            return found[0]
        sources, kind, size = await self._find_sources(object_id, wait=wait)
        if kind == "tree":
            await self._fetch_tree_manifest(object_id, sources)
            await self._ensure_tree_contents(object_id, wait, progress, what)
            return "tree"
        if progress.total is None:
            progress.total = size
        delivered = await self._fetch_blob_once(object_id, sources, wait, progress, deliver_to,
                                                what, folder, resuming)
        return "delivered" if delivered else "blob"

    async def resume_all(self) -> None:
        """At start-up: continue every transfer a previous run left unfinished, each
        waiting on its own for a device that has it.

        Not those of shared folders: a folder asks again for what it still needs (and
        resumes from the same partial data), and drops what a newer version replaced;
        resumed here, a replaced version would be waited for forever.
        """
        rows = await self.index.execute("SELECT object_id FROM partials WHERE folder IS NULL")

        async def resume(object_id: str) -> None:
            try:
                await self.ensure_local(object_id, wait=True, resuming=True)
                log.info("resumed and finished fetching %s", object_id)
            except Exception as exc:  # one transfer's trouble must not stop the daemon
                log.warning("could not resume fetching %s: %s", object_id, exc)

        async with trio.open_nursery() as nursery:
            for (object_id,) in rows:
                nursery.start_soon(resume, object_id)

    # -- sources ---------------------------------------------------------------------

    async def _find_sources(self, object_id: str, *, wait: bool,
                            exclude: Iterable[PeerLink] = ()) -> tuple[list[_Source], str, int]:
        skip = set(id(link) for link in exclude)
        while True:
            links = [link for link in self.peers.links.values() if id(link) not in skip]
            answers: list[tuple[PeerLink, dict[str, Any]]] = []

            async def ask(link: PeerLink, answers: list[tuple[PeerLink, dict[str, Any]]]
                          ) -> None:
                try:
                    with trio.move_on_after(STAT_TIMEOUT):
                        reply = await link.request("obj.stat", {"id": object_id},
                                                   timeout=STAT_TIMEOUT)
                        if reply.get("have") and reply.get("kind") in ("blob", "tree") and \
                                isinstance(reply.get("size"), int):
                            answers.append((link, reply))
                except DizzyError as exc:
                    log.debug("asking %s for %s failed: %s", link.device_id.short, object_id, exc)

            changed = self.peers.link_changed
            async with trio.open_nursery() as nursery:
                for link in links:
                    nursery.start_soon(ask, link, answers)
            if answers:
                kind = answers[0][1]["kind"]
                size = answers[0][1]["size"]
                agreeing = [_Source(link) for link, reply in answers
                            if reply["kind"] == kind and reply["size"] == size]
                return agreeing, kind, size
            if not wait:
                if not self.peers.links:
                    raise NotFound(
                        f"object {object_id} is not here and no paired device is online "
                        "(use --wait to wait for one)"
                    )
                raise NotFound(f"nobody has object {object_id} (asked {len(links)} online "
                               "device(s))")
            log.info("waiting for a device that has %s", object_id)
            await changed.wait()

    # -- trees -----------------------------------------------------------------------

    async def _fetch_tree_manifest(self, tree_id: str, sources: list[_Source]) -> None:
        for source in sources:
            try:
                reply = await source.link.request("obj.tree", {"id": tree_id})
                data = reply.get("data")
                if not isinstance(data, bytes) or blake3.blake3(data).hexdigest() != tree_id:
                    log.warning("peer %s sent a wrong manifest for tree %s", source.name, tree_id)
                    continue
                TreeManifest.decode(data)  # validates names, kinds, IDs before we keep it
                await trio.to_thread.run_sync(self.store.sync_put_bytes, data, "tree")
                return
            except (DizzyError, RemoteProtocolError) as exc:
                log.info("fetching tree %s from %s failed: %s", tree_id, source.name, exc)
        raise CorruptData(f"no source sent a valid manifest for tree {tree_id}")

    async def _ensure_tree_contents(self, tree_id: str, wait: bool,
                                    progress: ProgressCounter, what: str = "") -> None:
        manifest = await trio.to_thread.run_sync(self.store.sync_read_tree, tree_id)
        if progress.total is None:
            progress.total = sum(e.size for e in manifest.entries if e.kind != "link")
        limiter = trio.CapacityLimiter(TREE_PARALLELISM)
        failures: list[DizzyError] = []

        async def one(ref: str, name: str, scope: trio.CancelScope) -> None:
            async with limiter:
                try:
                    await self.ensure_local(ref, wait=wait, progress=progress,
                                            what=os.path.join(what, name) if what else "")
                except DizzyError as exc:
                    failures.append(exc)  # the first failure ends the whole tree
                    scope.cancel()

        async with trio.open_nursery() as nursery:
            for entry in manifest.entries:
                if entry.kind in ("file", "dir"):
                    nursery.start_soon(one, entry.ref, entry.name, nursery.cancel_scope)
        if failures:
            raise failures[0]

    # -- blobs -----------------------------------------------------------------------

    async def drop_folder_partials(self, folder: str) -> int:
        """Forget the partial transfers started for ``folder`` that no fetch is using
        now; the folder calls this when it is in sync (nothing it needs is missing)."""
        rows = await self.index.execute("SELECT object_id FROM partials WHERE folder = ?",
                                        (folder,))
        stale = [oid for (oid,) in rows if oid not in self._active]
        for object_id in stale:
            await self.index.call(_drop_partial, object_id)
            await trio.to_thread.run_sync(remove_quietly, self.home.partial / object_id)
        return len(stale)

    async def _fetch_blob_once(self, object_id: str, sources: list[_Source], wait: bool,
                               progress: ProgressCounter, deliver_to: Path | None,
                               what: str, folder: str | None = None,
                               resuming: bool = False) -> bool:
        """``resuming``: only to finish the partial data a previous run left; done as
        soon as another transfer (a ``get -o`` that got there first) finished it."""
        # Two `get`s of one object share one transfer.
        while True:
            active = self._active.get(object_id)
            if active is None:
                if not resuming:
                    break
                if not await self.index.call(_has_partial, object_id):
                    return False  # another transfer finished it, wherever it went
                if self._active.get(object_id) is None:  # (none started meanwhile)
                    break
                continue
            claimed = (deliver_to is not None and folder is None
                       and object_id not in self._claims)
            if claimed:
                assert deliver_to is not None
                self._claims[object_id] = deliver_to
            try:
                await active.wait()
            except BaseException:
                if claimed:  # cancelled (--timeout, the client left): nobody wants it now
                    if self._claims.get(object_id) == deliver_to:
                        del self._claims[object_id]
                    if self._delivered_claims.get(object_id) == deliver_to:
                        del self._delivered_claims[object_id]
                raise
            if claimed and self._delivered_claims.get(object_id) == deliver_to:
                del self._delivered_claims[object_id]
                return True
            if await trio.to_thread.run_sync(self.store.sync_lookup, object_id) is not None:
                return False
        done = trio.Event()
        self._active[object_id] = done
        try:
            return await self._fetch_blob(object_id, sources, wait, progress, deliver_to,
                                          what, folder)
        finally:
            del self._active[object_id]
            self._claims.pop(object_id, None)  # unhonoured: its get fetches or copies
            done.set()

    async def _load_or_start(self, object_id: str, sources: list[_Source],
                             folder: str | None) -> tuple[Outboard, set[int]]:
        boot = self.write_behind.boot_id
        row = await self.index.call(_load_partial, object_id)
        if row is not None:
            outboard = Outboard.decode(row[0], expected_object_id=object_id)
            received, unsynced, written_in = row[1], row[2], row[3]
            if unsynced and boot is not None and written_in == boot:
                # The daemon was killed, the machine was not: the page cache still
                # holds every chunk it recorded.
                received |= unsynced
            elif unsynced:
                good = await trio.to_thread.run_sync(
                    _check_unsynced, self.home.partial / object_id, outboard, unsynced
                )
                lost = sorted(unsynced - good)
                if lost:
                    await self.index.call(_forget_chunks, object_id, lost)
                # they survived a restart of the machine: they are on disk
                await self.index.call(_mark_synced, object_id, sorted(good))
                received |= good
            if written_in != boot:
                await self.index.call(_set_partial_boot, object_id, boot)
            return outboard, received
        last: Exception | None = None
        for source in sources:
            try:
                reply = await source.link.request("obj.outboard", {"id": object_id})
                data = reply.get("data")
                if not isinstance(data, bytes):
                    raise RemoteProtocolError("outboard reply without data")
                outboard = Outboard.decode(data, expected_object_id=object_id)
            except (DizzyError, RemoteProtocolError) as exc:
                log.warning("peer %s: no usable outboard for %s: %s", source.name, object_id, exc)
                last = exc
                continue
            # outside the try: our own index failing (a full disk) is not the peer's fault
            await self.index.call(_start_partial, object_id, outboard.size, data, folder,
                                  boot)
            return outboard, set()
        raise CorruptData(f"no source sent a valid chunk list for {object_id}: {last}")

    async def _fetch_blob(self, object_id: str, sources: list[_Source], wait: bool,
                          progress: ProgressCounter, deliver_to: Path | None,
                          what: str, folder: str | None) -> bool:
        outboard, received = await self._load_or_start(object_id, sources, folder)
        path = self.home.partial / object_id
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise storage_error(exc, f"creating {path}") from exc
        transfer = Transfer(object_id, outboard, path, fd, received,
                            OrderedHasher(outboard, fd, received),
                            early_writeback=folder is not None or not self.write_behind.enabled)
        self.transfers[object_id] = transfer
        progress.total = outboard.size
        already = sum(outboard.chunks[i].length for i in received)
        progress.done += already
        transfer.done_bytes = already
        if received:
            log.info("resuming %s: %d of %d chunks already here", object_id, len(received),
                     len(outboard.chunks))
        report = TransferReport(self.events, object_id, outboard.size, already=already)
        report.start([str(s.link.device_id) for s in sources], what)
        try:
            try:
                if os.fstat(fd).st_size != outboard.size:
                    await trio.to_thread.run_sync(os.ftruncate, fd, outboard.size)
                await self._fill(transfer, sources, wait, progress, report)
                claimed = None
                if deliver_to is None and folder is None:
                    # a get -o that joined this transfer while it ran (see _claims)
                    deliver_to = claimed = self._claims.pop(object_id, None)
                delivered = await trio.to_thread.run_sync(self._complete, transfer, deliver_to,
                                                          folder is not None)
                if delivered and claimed is not None:
                    self._delivered_claims[object_id] = claimed
            except OSError as exc:
                raise storage_error(exc, f"writing {object_id} (partial data kept for a "
                                    "resume)") from exc
        except BaseException as exc:
            transfer.error = exc if isinstance(exc, DizzyError) else DizzyError(str(exc))
            report.failed(exc)
            raise
        finally:
            os.close(fd)
            del self.transfers[object_id]
            transfer.done.set()
            transfer.notify()
        if self.write_behind.enabled:
            if not delivered:
                self.write_behind.submit(self.store.object_path(object_id), object_id)
            elif folder is None:
                assert deliver_to is not None
                self.write_behind.submit(deliver_to)
            # (a folder flushes its files itself before it renames them into place)
        report.finished()  # logs "fetched ID: N bytes in S s, R MB/s"
        return delivered

    async def _fill(self, transfer: Transfer, sources: list[_Source], wait: bool,
                    progress: ProgressCounter, report: TransferReport) -> None:
        outboard = transfer.outboard
        missing = collections.deque(i for i in range(len(outboard.chunks))
                                    if i not in transfer.received)
        refused: dict[int, set[int]] = {}  # chunk -> ids of sources that sent it wrong
        recorder = _DurableRecorder(self.index, transfer)
        disk_errors: list[OSError | StorageError] = []
        try:
            async with open_helper_nursery() as background:
                background.start_soon(recorder.run, disk_errors, background.cancel_scope)
                await self._fill_loop(transfer, sources, wait, progress, missing, refused,
                                      recorder, disk_errors, report)
                background.cancel_scope.cancel()
            if disk_errors:
                raise disk_errors[0]
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(OSError, StorageError):
                # With write-behind the unsynced rows are trusted within this boot and
                # checked after a crash: no fdatasync on the way out.
                await recorder.flush(sync=not self.write_behind.enabled)

    async def _fill_loop(self, transfer: Transfer, sources: list[_Source], wait: bool,
                         progress: ProgressCounter, missing: collections.deque[int],
                         refused: dict[int, set[int]], recorder: _DurableRecorder,
                         disk_errors: list[OSError | StorageError],
                         report: TransferReport) -> None:
        while missing and not disk_errors:
            live = [s for s in sources if not s.gone and s.bad_chunks < MAX_BAD_CHUNKS]
            if not live or not any(_can_serve(missing, refused, id(s)) for s in live):
                if any(len(refused.get(i, ())) >= len(sources) for i in missing):
                    # Every source we have sent some chunk wrong: any other device?
                    others = await self._other_sources(transfer.object_id, sources)
                    if not others:
                        raise CorruptData(
                            f"every source sent corrupt data for {transfer.object_id}"
                        )
                    sources = sources + others
                elif not wait and all(s.refused for s in sources):
                    others = await self._other_sources(transfer.object_id, sources)
                    if not others:
                        raise NotFound(f"no online device can serve {transfer.object_id} "
                                       "any more")
                    sources = sources + others
                else:
                    sources = await self._replacement_sources(
                        transfer.object_id, sources, wait
                    )
                continue

            async def worker(source: _Source, scope: trio.CancelScope) -> None:
                while not source.gone and source.bad_chunks < MAX_BAD_CHUNKS:
                    index = _take(missing, refused, id(source))
                    if index is None:
                        return
                    try:
                        outcome = await self._one_chunk(transfer, source, index, recorder,
                                                        progress)
                        if outcome == "ok":
                            report.landed(transfer.done_bytes)
                    except OSError as exc:  # our disk (full?): stop every worker
                        missing.appendleft(index)
                        disk_errors.append(exc)
                        scope.cancel()
                        return
                    if outcome == "bad":
                        refused.setdefault(index, set()).add(id(source))
                    if outcome != "ok":
                        missing.appendleft(index)

            async with trio.open_nursery() as nursery:
                for source in live:
                    for _ in range(IN_FLIGHT_PER_SOURCE):
                        nursery.start_soon(worker, source, nursery.cancel_scope)

    async def _other_sources(self, object_id: str, known: list[_Source]) -> list[_Source]:
        try:
            found, _, _ = await self._find_sources(object_id, wait=False,
                                                   exclude=[s.link for s in known])
        except NotFound:
            return []
        return found

    async def _replacement_sources(self, object_id: str, old: list[_Source],
                                   wait: bool) -> list[_Source]:
        gone = [s.link for s in old]
        log.info("all sources of %s are gone or bad; looking for others", object_id)
        if wait:
            sources, _, _ = await self._find_sources(object_id, wait=True, exclude=())
            return sources
        with trio.move_on_after(SOURCE_RETURN_WAIT):
            sources, _, _ = await self._find_sources(object_id, wait=True, exclude=gone)
            return sources
        raise NotFound(
            f"every device that had {object_id} went away; partial data is kept, rerun "
            "`dizzy get` (or use --wait) to resume"
        )

    async def _one_chunk(self, transfer: Transfer, source: _Source, index: int,
                         recorder: _DurableRecorder, progress: ProgressCounter) -> str:
        """'ok', 'bad' (the source sent wrong bytes) or 'gone' (the source failed)."""
        ref = transfer.outboard.chunks[index]
        try:
            reply = await source.link.request(
                "obj.chunk", {"id": transfer.object_id, "i": index}
            )
        except RemoteError as exc:
            log.warning("peer %s could not serve chunk %d of %s: %s", source.name, index,
                        transfer.object_id, exc)
            source.gone = source.refused = True
            return "gone"
        except (PeerGone, DizzyError) as exc:
            log.info("peer %s dropped out of fetching %s: %s", source.name,
                     transfer.object_id, exc)
            source.gone = True
            return "gone"
        data = reply.get("data")
        good = isinstance(data, bytes) and await trio.to_thread.run_sync(
            _verify_and_write, transfer, index, ref.offset, ref.length, ref.hash, data
        )
        if not good:
            source.bad_chunks += 1
            self.events.publish("error", where="fetch", message=(
                f"peer {source.name} sent corrupt data for chunk {index} of "
                f"{transfer.object_id} (refetching elsewhere)"))
            return "bad"
        transfer.received.add(index)
        transfer.done_bytes += ref.length
        progress.done += ref.length
        transfer.notify()
        recorder.add(index, ref.length)
        return "ok"

    def _complete(self, transfer: Transfer, deliver_to: Path | None, for_folder: bool
                  ) -> bool:
        """Check the whole object, rename it into place, forget the partial.

        Without write-behind the file is fsynced first; with it, the caller queues it
        (or, for a folder, the folder flushes it before renaming it).  Returns True
        when it went to ``deliver_to`` rather than into the store.
        """
        object_id = transfer.object_id
        size = transfer.outboard.size
        if transfer.hasher.hexdigest() != object_id:
            # Every chunk matched the outboard, so the outboard itself lied: start over.
            self.index.call_sync(_drop_partial, object_id)
            remove_quietly(transfer.path)
            raise CorruptData(f"the chunk list for {object_id} did not add up to it; "
                              "fetch again")
        boot = self.write_behind.boot_id
        if boot is None:
            os.fsync(transfer.fd)
        if deliver_to is not None and _same_fs(transfer.path, deliver_to.parent) and \
                not deliver_to.is_dir():
            os.fchmod(transfer.fd, 0o644 & ~UMASK)
            os.rename(transfer.path, deliver_to)
            if boot is None and not for_folder:
                fsync_dir(deliver_to.parent)
            self.index.call_sync(_drop_partial, object_id)
            return True
        final = self.store.object_path(object_id)
        final.parent.mkdir(mode=0o700, exist_ok=True)
        os.chmod(transfer.path, 0o444)
        os.rename(transfer.path, final)
        if boot is None:
            fsync_dir(final.parent)
        now = time.time()
        self.index.call_sync(_finish_partial, object_id, size, now,
                             transfer.outboard.encode(), boot)
        return False


def _take(missing: collections.deque[int], refused: dict[int, set[int]],
          source_key: int) -> int | None:
    """The next missing chunk this source has not already sent us wrong."""
    for _ in range(len(missing)):
        index = missing.popleft()
        if source_key not in refused.get(index, ()):
            return index
        missing.append(index)
    return None


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def _can_serve(missing: collections.deque[int], refused: dict[int, set[int]],
               source_key: int) -> bool:
    return any(source_key not in refused.get(index, ()) for index in missing)


def _verify_and_write(transfer: Transfer, index: int, offset: int, length: int,
                      expected: bytes, data: bytes) -> bool:
    if len(data) != length or blake3.blake3(data).digest() != expected:
        return False
    fd = transfer.fd
    view = memoryview(data)
    written = 0
    with transfer.write_lock:
        while written < length:
            written += os.pwrite(fd, view[written:], offset + written)
    if transfer.early_writeback:
        start_writeback(fd, offset, length)  # so the final flush finds little to do
    transfer.hasher.landed(index, data)
    return True


class _DurableRecorder:
    """Records landed chunks in two steps, in the background, so the workers never wait
    for the disk, a kill loses almost nothing, and a power cut never leaves a record
    naming bytes that are not on disk.

    As soon as chunks land their rows are written with ``synced = 0`` (a WAL append).
    Every DURABLE_EVERY_BYTES or _SECONDS the partial file is fdatasync'ed and the rows
    written before that become ``synced = 1``.  At resume, synced chunks are trusted as
    they are, and so are unsynced ones written in this same boot (a killed daemon
    leaves them in the page cache); after a restart of the machine the few unsynced
    ones (at most one batch) are checked by hash.
    """

    def __init__(self, index: Index, transfer: Transfer) -> None:
        self.index = index
        self.transfer = transfer
        self.unrecorded: list[tuple[int, int]] = []  # (chunk, length)
        self.recorded_unsynced: list[int] = []
        self.unsynced_bytes = 0
        self.last_sync = time.monotonic()
        self._landed = trio.Event()
        self._lock = trio.Lock()

    def add(self, chunk: int, length: int) -> None:
        self.unrecorded.append((chunk, length))
        self._landed.set()

    async def run(self, errors: list[OSError | StorageError], scope: trio.CancelScope
                  ) -> None:
        """The background work; a disk error stops the whole transfer through ``scope``."""

        async def rows() -> None:
            while True:
                await self._landed.wait()
                self._landed = trio.Event()
                await self._write_rows()

        async def syncs() -> None:
            while True:
                await trio.sleep(DURABLE_EVERY_SECONDS / 5)
                if (self.unsynced_bytes >= DURABLE_EVERY_BYTES
                        or time.monotonic() - self.last_sync >= DURABLE_EVERY_SECONDS):
                    await self._sync()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(rows)
                nursery.start_soon(syncs)
        except* (OSError, StorageError) as group:  # the partial file or the index
            errors.extend(e for e in group.exceptions
                          if isinstance(e, (OSError, StorageError)))
            scope.cancel()

    async def _write_rows(self) -> None:
        async with self._lock:
            if self.unrecorded:
                batch, self.unrecorded = self.unrecorded, []
                await self.index.call(_record_chunks, self.transfer.object_id,
                                      [chunk for chunk, _ in batch])
                self.recorded_unsynced.extend(chunk for chunk, _ in batch)
                self.unsynced_bytes += sum(length for _, length in batch)

    async def _sync(self) -> None:
        batch, self.recorded_unsynced, self.unsynced_bytes = self.recorded_unsynced, [], 0
        self.last_sync = time.monotonic()
        if batch:
            # Data first, then the mark: a synced record never names bytes a crash lost.
            await trio.to_thread.run_sync(os.fdatasync, self.transfer.fd)
            await self.index.call(_mark_synced, self.transfer.object_id, batch)

    async def flush(self, *, sync: bool = True) -> None:
        await self._write_rows()
        if sync:
            await self._sync()


def _load_partial(conn: sqlite3.Connection, object_id: str
                  ) -> tuple[bytes, set[int], set[int], str | None] | None:
    """(outboard, synced chunks, unsynced chunks, the boot they were written in)."""
    row = conn.execute("SELECT outboard, boot_id FROM partials WHERE object_id = ?",
                       (object_id,)).fetchone()
    if row is None:
        return None
    synced: set[int] = set()
    unsynced: set[int] = set()
    for idx, flag in conn.execute(
            "SELECT idx, synced FROM partial_chunks WHERE object_id = ?", (object_id,)):
        (synced if flag else unsynced).add(idx)
    return bytes(row[0]), synced, unsynced, row[1]


def _has_partial(conn: sqlite3.Connection, object_id: str) -> bool:
    return conn.execute("SELECT 1 FROM partials WHERE object_id = ?",
                        (object_id,)).fetchone() is not None


def _set_partial_boot(conn: sqlite3.Connection, object_id: str, boot: str | None) -> None:
    with conn:
        conn.execute("UPDATE partials SET boot_id = ? WHERE object_id = ?", (boot, object_id))


def _check_unsynced(path: Path, outboard: Outboard, chunks: set[int]) -> set[int]:
    """The unsynced chunks whose bytes did reach the partial file intact."""
    good: set[int] = set()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return good
    try:
        for index in chunks:
            ref = outboard.chunks[index]
            if blake3.blake3(os.pread(fd, ref.length, ref.offset)).digest() == ref.hash:
                good.add(index)
    finally:
        os.close(fd)
    return good


def _forget_chunks(conn: sqlite3.Connection, object_id: str, chunks: list[int]) -> None:
    with conn:
        conn.executemany("DELETE FROM partial_chunks WHERE object_id = ? AND idx = ?",
                         [(object_id, i) for i in chunks])


def _mark_synced(conn: sqlite3.Connection, object_id: str, chunks: list[int]) -> None:
    with conn:
        conn.executemany("UPDATE partial_chunks SET synced = 1 WHERE object_id = ? AND idx = ?",
                         [(object_id, i) for i in chunks])


def _start_partial(conn: sqlite3.Connection, object_id: str, size: int, outboard: bytes,
                   folder: str | None, boot: str | None) -> None:
    with conn:
        conn.execute("INSERT OR REPLACE INTO partials (object_id, size, outboard, started, "
                     "folder, boot_id) VALUES (?, ?, ?, ?, ?, ?)",
                     (object_id, size, outboard, time.time(), folder, boot))
        conn.execute("DELETE FROM partial_chunks WHERE object_id = ?", (object_id,))


def _record_chunks(conn: sqlite3.Connection, object_id: str, chunks: list[int]) -> None:
    with conn:
        conn.executemany("INSERT OR IGNORE INTO partial_chunks (object_id, idx) VALUES (?, ?)",
                         [(object_id, i) for i in chunks])


def _drop_partial(conn: sqlite3.Connection, object_id: str) -> None:
    with conn:
        conn.execute("DELETE FROM partials WHERE object_id = ?", (object_id,))
        conn.execute("DELETE FROM partial_chunks WHERE object_id = ?", (object_id,))


def _finish_partial(conn: sqlite3.Connection, object_id: str, size: int, now: float,
                    outboard: bytes, boot: str | None) -> None:
    with conn:
        if boot is not None:
            record_unsynced(conn, object_id, boot)
        conn.execute("INSERT OR IGNORE INTO objects (id, kind, size, created) "
                     "VALUES (?, 'blob', ?, ?)", (object_id, size, now))
        conn.execute("INSERT OR REPLACE INTO outboards (object_id, data) VALUES (?, ?)",
                     (object_id, outboard))
        conn.execute("DELETE FROM partials WHERE object_id = ?", (object_id,))
        conn.execute("DELETE FROM partial_chunks WHERE object_id = ?", (object_id,))
