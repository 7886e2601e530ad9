"""Control handlers for shared folders: share, unshare, folders."""

from __future__ import annotations

from typing import Any

from .api import Call, ControlApi
from .folders import FolderManager


def register(api: ControlApi, folders: FolderManager) -> None:
    async def share(call: Call) -> dict[str, Any]:
        mode = call.param("mode", str, default="send-receive")
        return await folders.share(call.param("name", str), call.abs_path("path"), mode)

    async def unshare(call: Call) -> dict[str, Any]:
        name = call.param("name", str)
        await folders.unshare(name)
        return {"name": name}

    async def list_folders(call: Call) -> list[dict[str, Any]]:
        return folders.describe()

    async def rescan(call: Call) -> dict[str, Any]:
        folders.rescan(call.param("name", str, default=None, allow_none=True))
        return {}

    api.register("share", share)
    api.register("unshare", unshare)
    api.register("folders", list_folders)
    api.register("rescan", rescan)
