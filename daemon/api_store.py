"""Control handlers for the local object store: put, get, cat, status."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import trio

from dizzy import __version__
from dizzy.protocol.control import DATA_BLOCK
from dizzy.protocol.errors import UsageError
from dizzy.protocol.ids import parse_object_id

from .api import Call, ControlApi
from .context import DaemonContext
from .progress import ProgressCounter


def _abs_path(call: Call, name: str) -> Path:
    raw = call.param(name, str)
    if "\0" in raw:
        raise UsageError(f"{name} contains a NUL byte")
    path = Path(raw)
    if not path.is_absolute():
        raise UsageError(f"{name} must be an absolute path (the client resolves it)")
    return path


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
        path = _abs_path(call, "path")
        counter = ProgressCounter(what="put")
        async with call.reporting(counter):
            result = await trio.to_thread.run_sync(
                store.sync_put, path, counter, call.cancel
            )
        return {
            "id": result.id,
            "kind": result.kind,
            "size": result.size,
            "files": result.files,
            "skipped": list(result.skipped),
        }

    async def get(call: Call) -> dict[str, Any]:
        object_id = parse_object_id(call.param("id", str))
        dest = _abs_path(call, "dest")
        counter = ProgressCounter(what="get")
        async with call.reporting(counter):
            written = await trio.to_thread.run_sync(
                store.sync_export, object_id, dest, counter, call.cancel
            )
        return {"id": object_id, "path": str(written)}

    async def cat(call: Call) -> dict[str, Any]:
        object_id = parse_object_id(call.param("id", str))
        f = await trio.to_thread.run_sync(store.sync_open_blob, object_id)
        sent = 0
        try:
            while True:
                block = await trio.to_thread.run_sync(f.read, DATA_BLOCK)
                if not block:
                    break
                await call.send_data(block)
                sent += len(block)
        finally:
            f.close()
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

