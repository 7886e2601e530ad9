"""Small objects in batches: many whole objects in one round trip.

A folder of 10,000 small files is bound by per-file costs, not bytes: one request, a
reply, a thread hop to read, another to write.  ``obj.smalls`` asks a peer for up to
``BATCH_MAX_IDS`` small objects at once; the peer answers with each object's bytes (or
nil where it does not have it, or where its reply budget ran out), and the receiver
verifies every object against its ID and writes them all in one thread hop.  Whatever
is missing afterwards goes through the one-object paths (``obj.small``, the fetcher).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import blake3
import trio

from dizzy.protocol.chunking import CHUNK_MIN
from dizzy.protocol.errors import DizzyError, UsageError
from dizzy.protocol.ids import parse_object_id
from dizzy.protocol.peer_wire import Request

from .fsutil import finish_file, remove_quietly
from .object_service import SMALL_OBJECT_MAX, locate_content
from .peers import PeerLink, PeerManager
from .progress import CancelFlag, ProgressCounter
from .store import ObjectStore

log = logging.getLogger("dizzy.objects")

#: ids in one obj.smalls request: a few hundred files per round trip amortises the
#: trip, and the request itself stays a few tens of KiB
BATCH_MAX_IDS = 256
#: bytes of object data in one reply: under the 5 MiB peer frame limit with room for
#: msgpack's per-item overhead (a few bytes each)
BATCH_MAX_BYTES = 4 * 1024 * 1024
assert BATCH_MAX_BYTES >= CHUNK_MIN  # every small object fits a reply on its own

Locate = Callable[[str], tuple[Path, int] | None]


def register(peers: PeerManager, store: ObjectStore, locate: Locate | None,
             stale: Callable[[str], Awaitable[None]] | None = None) -> None:
    """Serve ``obj.smalls`` to paired peers; ``stale`` as in ``object_service.register``."""

    async def smalls(link: PeerLink, request: Request) -> dict[str, Any]:
        object_ids = parse_batch_ids(request.body.get("ids"))
        changed: list[str] = []
        data = await trio.to_thread.run_sync(read_batch, store, locate, object_ids, changed)
        if stale is not None:
            for object_id in changed:
                await stale(object_id)
        return {"data": data}

    peers.handlers["obj.smalls"] = smalls


def parse_batch_ids(raw: object) -> list[str]:
    """The ``ids`` of an obj.smalls request, validated (UsageError otherwise)."""
    if not isinstance(raw, list) or not 0 < len(raw) <= BATCH_MAX_IDS:
        raise UsageError(f"obj.smalls needs 1 to {BATCH_MAX_IDS} ids")
    if not all(isinstance(item, str) for item in raw):
        raise UsageError("obj.smalls ids must be strings")
    return [parse_object_id(item) for item in raw]


def read_batch(store: ObjectStore, locate: Locate | None, object_ids: Sequence[str],
               changed: list[str] | None = None) -> list[bytes | None]:
    """Serve side (blocking): each object's bytes, or None where we cannot give it.

    The reply budget is spent in request order; objects past it come back None and
    the receiver asks again.  The receiver verifies every object, so a file that
    changed since its scan costs that object, not the batch.  Bytes read from a shared
    file are checked here too: one that no longer holds its ID (changed with its size
    and mtime kept) is not sent, and its ID is added to ``changed`` for a rehash.
    """
    out: list[bytes | None] = []
    budget = BATCH_MAX_BYTES
    for object_id in object_ids:
        data = None
        if budget > 0:
            path = locate_content(store, locate, object_id)
            if path is not None:
                data = _read_at_most(path, min(SMALL_OBJECT_MAX, budget))
                if data is not None and path != store.object_path(object_id) and \
                        blake3.blake3(data).hexdigest() != object_id:
                    data = None
                    if changed is not None:
                        changed.append(object_id)
        if data is not None:
            budget -= len(data)
        out.append(data)
    return out


def _read_at_most(path: Path, limit: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return None
    return data if len(data) <= limit else None


#: a file's mode and mtime (ns), set on it once its bytes are written
Finish = tuple[int, int]


async def obtain_batch(store: ObjectStore, locate: Locate, links: Sequence[PeerLink],
                       items: Sequence[tuple[str, Path]],
                       finish: Mapping[Path, Finish] | None = None) -> set[Path]:
    """Receive side: write each ``(object_id, dest)`` whose bytes we can get, from a
    local copy first (renames and duplicates cost no transfer), then from ``links`` in
    order, one round trip per batch.  Returns the dests written, each verified, and
    each given the mode and mtime ``finish`` names for it (on the open file: no
    second look-up of its path)."""
    finish = finish or {}
    done = await trio.to_thread.run_sync(_copy_local, store, locate, items, finish)
    missing = [(oid, dest) for oid, dest in items if dest not in done]
    for link in links:
        if not missing:
            break
        try:
            reply = await link.request("obj.smalls", {"ids": [oid for oid, _ in missing]})
        except DizzyError as exc:
            log.debug("obj.smalls from %s failed: %s", link.device_id.short, exc)
            continue
        blobs = reply.get("data")
        if not isinstance(blobs, list) or len(blobs) != len(missing):
            log.warning("peer %s sent a malformed obj.smalls reply", link.device_id.short)
            continue
        written, corrupt = await trio.to_thread.run_sync(_verify_and_write, missing, blobs,
                                                         finish)
        for object_id in corrupt:
            log.warning("peer %s sent corrupt data for %s", link.device_id.short, object_id)
        done |= written
        missing = [(oid, dest) for oid, dest in missing if dest not in written]
    return done


def _copy_local(store: ObjectStore, locate: Locate, items: Sequence[tuple[str, Path]],
                finish: Mapping[Path, Finish]) -> set[Path]:
    done: set[Path] = set()
    for object_id, dest in items:
        source = locate_content(store, locate, object_id)
        if source is None:
            continue
        try:
            store.sync_export_from(source, object_id, dest, ProgressCounter(), CancelFlag())
            if dest in finish:
                finish_file(dest, *finish[dest])
        except DizzyError:
            continue  # changed since it was scanned: fetch it instead
        except OSError:
            remove_quietly(dest)  # the one-object path retries it and reports why
            continue
        done.add(dest)
    return done


def _verify_and_write(items: Sequence[tuple[str, Path]], blobs: Sequence[object],
                      finish: Mapping[Path, Finish]) -> tuple[set[Path], list[str]]:
    written: set[Path] = set()
    corrupt: list[str] = []
    for (object_id, dest), data in zip(items, blobs, strict=True):
        if not isinstance(data, bytes):
            continue  # the peer does not have it (or its budget ran out)
        if blake3.blake3(data).hexdigest() != object_id:
            corrupt.append(object_id)
            continue
        try:
            write_new(dest, data, finish.get(dest))
        except OSError:
            # A full disk, most likely: the one-object path retries this object and
            # reports the error; what was written so far stays good.
            remove_quietly(dest)
            break
        written.add(dest)
    return written, corrupt


def write_new(path: Path, data: bytes, finish: Finish | None = None) -> None:
    """Create ``path`` (it must not exist) holding ``data``, then give it ``finish``'s
    mode and mtime; durability comes later, from the caller's one file-system sync for
    the whole batch."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if finish is not None:
            mode, mtime_ns = finish
            os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))  # after the last write, or it moves
    finally:
        os.close(fd)
