"""Control handlers for the local object store: put, get, cat, status."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import trio

from dizzy import __version__
from dizzy.protocol.control import DATA_BLOCK
from dizzy.protocol.errors import DizzyError, StorageError, TimedOut
from dizzy.protocol.ids import parse_object_id

from .api import Call, ControlApi
from .context import DaemonContext
from .nurseries import open_helper_nursery
from .progress import ProgressCounter


def register(api: ControlApi, ctx: DaemonContext) -> None:
    store = ctx.store

    async def status(call: Call) -> dict[str, Any]:
        objects, nbytes = await trio.to_thread.run_sync(store.sync_stats)
        result: dict[str, Any] = {
            "device_id": str(ctx.identity.device_id),
            "name": ctx.name,
            "version": __version__,
            "home": str(ctx.config.home.root),
            "pid": os.getpid(),
            "uptime": round(time.time() - ctx.started, 1),
            "objects": objects,
            "object_bytes": nbytes,
        }
        for service in ctx.services.values():
            extra = getattr(service, "status", None)
            if extra is not None:
                result.update(await extra())
        return result

    async def put(call: Call) -> dict[str, Any]:
        path = call.abs_path("path")
        counter = ProgressCounter(what="put")
        async with call.reporting(counter):
            result = await trio.to_thread.run_sync(
                store.sync_put, path, counter, call.cancel
            )
        prepare = ctx.services.get("outboards")
        if prepare is not None and result.kind == "blob":
            # Chunk it now, in the background, so the first peer asking need not wait.
            ctx.nursery.start_soon(prepare.prepare, result.id)
        return {
            "id": result.id,
            "kind": result.kind,
            "size": result.size,
            "files": result.files,
            "skipped": list(result.skipped),
        }

    async def fetched(call: Call, object_id: str, counter: ProgressCounter,
                      deliver_to: Path | None = None) -> str:
        """Make the object local (from peers if needed) within the call's --timeout."""
        fetcher = ctx.services.get("fetcher")
        timeout = call.param("timeout", (int, float), default=None, allow_none=True)
        wait = call.param("wait", bool, default=False)
        found = await trio.to_thread.run_sync(store.sync_lookup, object_id)
        if found is not None and found[0] == "blob":
            return "blob"
        if fetcher is None:
            return str(found[0]) if found else "missing"
        try:
            with trio.fail_after(float(timeout) if timeout is not None else math.inf):
                kind: str = await fetcher.ensure_local(
                    object_id, wait=wait, progress=counter, deliver_to=deliver_to,
                    what=str(deliver_to) if deliver_to is not None else "",
                )
                return kind
        except trio.TooSlowError:
            raise TimedOut(
                f"timed out after {timeout:g} s fetching {object_id} (partial data is kept; "
                "run the same command again to resume)"
            ) from None

    async def get(call: Call) -> dict[str, Any]:
        object_id = parse_object_id(call.param("id", str))
        dest = call.abs_path("dest")
        if not dest.parent.is_dir():
            raise StorageError(f"output directory does not exist: {dest.parent}")
        counter = ProgressCounter(what="get")
        async with call.reporting(counter):
            folders = ctx.services.get("folders")
            in_folder = None
            if folders is not None and await trio.to_thread.run_sync(
                store.sync_lookup, object_id
            ) is None:
                in_folder = await trio.to_thread.run_sync(folders.sync_find_object, object_id)
            if in_folder is not None:
                written = await trio.to_thread.run_sync(
                    store.sync_export_from, in_folder[0], object_id, dest, counter, call.cancel
                )
                return {"id": object_id, "path": str(written)}
            kind = await fetched(call, object_id, counter, deliver_to=dest)
            if kind == "delivered":
                return {"id": object_id, "path": str(dest)}
            counter.done = 0
            written = await trio.to_thread.run_sync(
                store.sync_export, object_id, dest, counter, call.cancel
            )
        return {"id": object_id, "path": str(written)}

    async def cat(call: Call) -> dict[str, Any]:
        object_id = parse_object_id(call.param("id", str))
        found = await trio.to_thread.run_sync(store.sync_lookup, object_id)
        fetcher = ctx.services.get("fetcher")
        if found is None and fetcher is not None:
            return await _cat_while_fetching(call, object_id, fetcher, fetched)
        return await _cat_local(call, object_id, 0)

    async def _cat_local(call: Call, object_id: str, start: int) -> dict[str, Any]:
        f = await trio.to_thread.run_sync(store.sync_open_blob, object_id)
        sent = start
        try:
            f.seek(start)
            while True:
                block = await trio.to_thread.run_sync(f.read, DATA_BLOCK)
                if not block:
                    break
                await call.send_data(block)
                sent += len(block)
        finally:
            f.close()
        return {"id": object_id, "size": sent}

    async def _cat_while_fetching(call: Call, object_id: str, fetcher: Any,
                                  fetch: Any) -> dict[str, Any]:
        """Stream a remote object in order, each chunk as soon as it is verified."""
        async with open_helper_nursery() as nursery:
            fetch_done = trio.Event()
            failure: list[BaseException] = []

            async def run_fetch() -> None:
                try:
                    await fetch(call, object_id, ProgressCounter())
                except BaseException as exc:  # reported by the streamer below
                    failure.append(exc)
                finally:
                    fetch_done.set()

            nursery.start_soon(run_fetch)
            # Wait for the transfer to begin (or the fetch to end: tree, error, done).
            while (transfer := fetcher.transfers.get(object_id)) is None:
                if fetch_done.is_set():
                    if failure:
                        raise failure[0]
                    return await _cat_local(call, object_id, 0)
                await trio.sleep(0.01)
            try:
                # Our own descriptor: it stays valid when the finished partial file is
                # renamed into the store, and the transfer's own is closed.
                fd = os.open(transfer.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # finished between the two lines above
                await fetch_done.wait()
                if failure:
                    raise failure[0] from None
                return await _cat_local(call, object_id, 0)
            sent = 0
            try:
                for index, ref in enumerate(transfer.outboard.chunks):
                    while index not in transfer.received:
                        if transfer.done.is_set():
                            await fetch_done.wait()
                            raise failure[0] if failure else DizzyError(
                                f"fetching {object_id} stopped"
                            )
                        await transfer.landed.wait()
                    data = await trio.to_thread.run_sync(os.pread, fd, ref.length, ref.offset)
                    await call.send_data(data)
                    sent += len(data)
            finally:
                os.close(fd)
            await fetch_done.wait()
            if failure:
                raise failure[0]
        return {"id": object_id, "size": sent}

    async def stat(call: Call) -> dict[str, Any]:
        object_id = parse_object_id(call.param("id", str))
        found = await trio.to_thread.run_sync(store.sync_require, object_id)
        return {"id": object_id, "kind": found[0], "size": found[1]}

    api.register("status", status)
    api.register("put", put)
    api.register("get", get)
    api.register("cat", cat)
    api.register("stat", stat)

