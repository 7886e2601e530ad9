"""``serve_gui``: the web status page, served by hypercorn's trio worker in the daemon.

Started from ``serve_daemon`` in the root nursery; it stops when that nursery is
cancelled (hypercorn's own shutdown trigger never fires: cancellation is the shutdown).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import trio

from dizzy.protocol.errors import DizzyError, UsageError

from ..api import ControlApi
from ..context import DaemonContext
from ..nurseries import open_helper_nursery, unwrap_single_errors
from .address import format_hostport, is_loopback
from .token import load_or_create_token

log = logging.getLogger("dizzy.gui")


class _GuiStatus:
    """``status`` gains ``gui``: the page's address (null when it is off)."""

    def __init__(self, url: str | None) -> None:
        self.url = url

    async def status(self) -> dict[str, Any]:
        return {"gui": self.url}


async def serve_gui(
    ctx: DaemonContext,
    api: ControlApi,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    address = ctx.config.gui
    ctx.services["gui"] = _GuiStatus(None)
    if address is None:
        task_status.started()
        return
    host, port = address
    if not is_loopback(host):
        raise UsageError(f"the web page listens on loopback only, not on {host}")
    # Imported here: a daemon started with --no-gui never pays for the web stack.
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from .app import GuiParts, build_app
    from .live import LiveState
    from .pairing import PagePairing

    token = load_or_create_token(ctx.config.home.root)
    config = Config()
    config.bind = [format_hostport(host, port)]
    config.accesslog = None
    config.errorlog = logging.getLogger("dizzy.gui.http")
    config.include_server_header = False
    # The live stream never ends by itself; on shutdown there is nothing to wait for.
    config.graceful_timeout = 0.5
    async with open_helper_nursery() as nursery:
        live = LiveState()
        parts = GuiParts(api, live, PagePairing(api.lookup("pair_invite")), nursery, token)
        app: Any = build_app(parts)  # an ASGI app; hypercorn types it more narrowly
        try:
            with unwrap_single_errors():
                binds: list[str] = await nursery.start(partial(serve, app, config))
        except OSError as exc:
            message = (f"cannot serve the web page on {format_hostport(host, port)}: "
                       f"{exc.strerror or exc}")
            if not ctx.config.gui_optional:
                raise DizzyError(f"{message} (choose another address with --gui HOST:PORT, "
                                 "or turn the page off with --no-gui)") from exc
            log.warning("%s; the page is off (choose an address with --gui HOST:PORT)",
                        message)
            task_status.started()
            return
        await nursery.start(live.serve, ctx.events)
        url = binds[0].rstrip("/") + "/"
        ctx.services["gui"] = _GuiStatus(url)
        log.info("web page on %s (`dizzy gui` prints its address with the token)", url)
        task_status.started()
