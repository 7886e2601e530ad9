"""What this daemon serves to paired peers: object lookups, outboards, tree manifests
and chunks, read from the object store."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import blake3
import trio

from dizzy.protocol.chunking import CHUNK_MIN
from dizzy.protocol.errors import NotFound, UsageError
from dizzy.protocol.ids import parse_object_id
from dizzy.protocol.peer_wire import Request

from .outboards import Outboards
from .peers import PeerLink, PeerManager
from .store import ObjectStore


def _object_id(request: Request) -> str:
    raw = request.body.get("id")
    if not isinstance(raw, str):
        raise UsageError("request lacks an object id")
    return parse_object_id(raw)


def register(peers: PeerManager, store: ObjectStore, outboards: Outboards,
             locate: Callable[[str], tuple[Path, int] | None] | None = None,
             stale: Callable[[str], Awaitable[None]] | None = None) -> None:
    """``locate`` finds objects outside the store: files in shared folders, in place.

    Bytes read from a shared file are checked against the chunk list before they are
    sent: a file can change without its size, mtime or inode changing (a tool that
    restores mtimes, bit rot), and the stat check before serving cannot see that.
    ``stale(object_id)`` is then told, so the folder rehashes the file instead of
    serving bytes that do not match their ID again and again.
    """

    async def refuse_stale(object_id: str) -> NoReturn:
        if stale is not None:
            await stale(object_id)
        raise NotFound(f"object {object_id[:16]}... changed on disk here since it was "
                       "scanned; rescanning")

    def source_path(object_id: str) -> Path:
        path = locate_content(store, locate, object_id)
        if path is None:
            raise NotFound(f"object {object_id[:16]}... is not here (any more)")
        return path

    async def stat(link: PeerLink, request: Request) -> dict[str, Any]:
        object_id = _object_id(request)
        found = await trio.to_thread.run_sync(store.sync_lookup, object_id)
        if found is None and locate is not None:
            in_folder = await trio.to_thread.run_sync(locate, object_id)
            if in_folder is not None:
                return {"have": True, "kind": "blob", "size": in_folder[1]}
        if found is None:
            return {"have": False}
        return {"have": True, "kind": found[0], "size": found[1]}

    async def outboard(link: PeerLink, request: Request) -> dict[str, Any]:
        object_id = _object_id(request)
        try:
            ob = await outboards.get(object_id)
        except NotFound:
            # chunking a shared file found other bytes than its scan did
            in_folder = None if locate is None else await trio.to_thread.run_sync(
                locate, object_id)
            if in_folder is not None:
                await refuse_stale(object_id)
            raise
        return {"data": ob.encode()}

    async def tree(link: PeerLink, request: Request) -> dict[str, Any]:
        object_id = _object_id(request)
        manifest = await trio.to_thread.run_sync(store.sync_read_tree, object_id)
        return {"data": manifest.encode()}

    async def chunk(link: PeerLink, request: Request) -> dict[str, Any]:
        object_id = _object_id(request)
        index = request.body.get("i")
        if not isinstance(index, int) or isinstance(index, bool):
            raise UsageError("chunk request lacks an index")
        ob = await outboards.get(object_id)
        if not 0 <= index < len(ob.chunks):
            raise UsageError(f"chunk {index} is outside object {object_id[:16]}...")
        ref = ob.chunks[index]

        def read() -> bytes | None:  # one trip to a thread per chunk, not two
            path = source_path(object_id)
            # the store's own files are checked by the receiver alone (one hash a chunk)
            check = None if path == store.object_path(object_id) else ref.hash
            return _pread(path, ref.offset, ref.length, check)

        data = await trio.to_thread.run_sync(read)
        if data is None:
            await refuse_stale(object_id)
        if len(data) != ref.length:
            raise NotFound(f"object {object_id[:16]}... is shorter than its outboard")
        return {"data": data}

    async def small(link: PeerLink, request: Request) -> dict[str, Any]:
        """A whole small object in one reply: no outboard round trip for small files."""
        object_id = _object_id(request)
        path = await trio.to_thread.run_sync(source_path, object_id)
        data = await trio.to_thread.run_sync(_read_small, path)
        if path != store.object_path(object_id) and \
                await trio.to_thread.run_sync(_blake3_hex, data) != object_id:
            await refuse_stale(object_id)
        return {"data": data}

    peers.handlers["obj.small"] = small
    peers.handlers["obj.stat"] = stat
    peers.handlers["obj.outboard"] = outboard
    peers.handlers["obj.tree"] = tree
    peers.handlers["obj.chunk"] = chunk


def locate_content(store: ObjectStore,
                   find_shared: Callable[[str], tuple[Path, int] | None] | None,
                   object_id: str) -> Path | None:
    """Where this device holds ``object_id``'s bytes: the store first, then a file in a
    shared folder still as scanned.  Blocking (a stat and an index query)."""
    stored = store.object_path(object_id)
    if stored.exists():
        return stored
    found = find_shared(object_id) if find_shared is not None else None
    return found[0] if found is not None else None


#: objects up to this size travel whole in one "obj.small" reply (one chunk at most)
SMALL_OBJECT_MAX = CHUNK_MIN


def _read_small(path: os.PathLike[str]) -> bytes:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        # a shared file deleted or renamed since it was located: an expected race
        raise NotFound("object is no longer stored here") from None
    with f:
        data = f.read(SMALL_OBJECT_MAX + 1)
    if len(data) > SMALL_OBJECT_MAX:
        raise UsageError("object too large for obj.small; use obj.outboard and obj.chunk")
    return data


def _pread(path: os.PathLike[str], offset: int, length: int,
           expected: bytes | None = None) -> bytes | None:
    """The bytes at ``offset``; None when ``expected`` is given and they do not hash to it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound("object is no longer stored here") from None
    try:
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    if expected is not None and len(data) == length and \
            blake3.blake3(data).digest() != expected:
        return None
    return data


def _blake3_hex(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()
