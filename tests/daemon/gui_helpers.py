"""An in-process daemon with its web page on 127.0.0.1:0, and an HTTP client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from dizzy.daemon.context import DaemonConfig, DaemonContext
from dizzy.daemon.gui.token import read_token
from dizzy.daemon.home import Home
from dizzy.daemon.serve import serve_daemon


@dataclass
class GuiDaemon:
    ctx: DaemonContext
    url: str
    token: str

    def client(self, **kwargs: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10.0, **kwargs)  # type: ignore[arg-type]

    def bearer(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


@asynccontextmanager
async def gui_daemon(home: Path, **config: object) -> AsyncIterator[GuiDaemon]:
    settings: dict[str, object] = {"listen": ("127.0.0.1", 0), "mdns": False,
                                   "gui": ("127.0.0.1", 0), **config}
    async with trio.open_nursery() as nursery:
        ctx: DaemonContext = await nursery.start(
            serve_daemon, DaemonConfig(home=Home(home), **settings)  # type: ignore[arg-type]
        )
        status = await ctx.services["gui"].status()
        token = read_token(home)
        assert status["gui"] and token
        try:
            yield GuiDaemon(ctx, status["gui"], token)
        finally:
            nursery.cancel_scope.cancel()
