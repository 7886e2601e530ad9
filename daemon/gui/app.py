"""The page's routes (Starlette on trio): the page itself, live state, and two forms.

Everything the page shows comes from the control API's own handlers (``status``,
``peers``, ``folders``) called in-process, plus ``LiveState`` for transfers and
problems; the forms call ``share`` and ``pair_invite``.  No logic is duplicated here.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dizzy.protocol.errors import DizzyError, UsageError

from ..api import Call, ControlApi
from .auth import TokenGate, csrf_value
from .forms import MAX_FORM_BYTES, parse_json_object, share_params
from .live import LiveState
from .pairing import PagePairing

log = logging.getLogger("dizzy.gui")

#: the live stream sends a fresh state at least this often (peers' "last seen", rates)
SNAPSHOT_INTERVAL = 1.0
#: and at most this often, however busy the bus is (~2 progress events/s per transfer)
MIN_SNAPSHOT_GAP = 0.25

_SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}


@dataclass
class GuiParts:
    api: ControlApi
    live: LiveState
    pairing: PagePairing
    nursery: trio.Nursery
    token: str


async def _noop_send(message: Any) -> None:
    return None


async def _call(api: ControlApi, method: str, params: dict[str, Any] | None = None) -> Any:
    return await api.lookup(method)(Call(method, params or {}, _noop_send))


async def snapshot(parts: GuiParts) -> dict[str, Any]:
    status = await _call(parts.api, "status")
    peers = await _call(parts.api, "peers")
    folders = await _call(parts.api, "folders")
    return {
        "time": time.time(),
        "device": status,
        "peers": peers["paired"],
        "nearby": peers["nearby"],
        "folders": folders,
        "transfers": parts.live.active_transfers(),
        "problems": parts.live.recent_problems(),
        "pairing": parts.pairing.state,
    }


def _static(name: str) -> str:
    return (resources.files(__package__) / "static" / name).read_text(encoding="utf-8")


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=_SECURITY_HEADERS)


async def _read_form(request: Request) -> dict[str, Any]:
    body = bytearray()
    async for block in request.stream():
        body += block
        if len(body) > MAX_FORM_BYTES:
            raise UsageError("the form is too large")
    return parse_json_object(bytes(body))


def build_app(parts: GuiParts) -> TokenGate:
    page = _static("index.html").replace("{{csrf}}", csrf_value(parts.token))
    assets = {"app.js": ("text/javascript", _static("app.js")),
              "style.css": ("text/css", _static("style.css"))}

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8",
                        headers=_SECURITY_HEADERS)

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None:
            return Response("not found\n", status_code=404, media_type="text/plain")
        kind, text = found
        return Response(text, media_type=f"{kind}; charset=utf-8", headers=_SECURITY_HEADERS)

    async def state(request: Request) -> Response:
        return JSONResponse(await snapshot(parts), headers=_SECURITY_HEADERS)

    async def live(request: Request) -> Response:
        async def stream() -> Any:
            while True:
                changed = parts.live.changed
                started = trio.current_time()
                data = json.dumps(await snapshot(parts), separators=(",", ":"))
                yield f"event: state\ndata: {data}\n\n"
                with trio.move_on_at(started + SNAPSHOT_INTERVAL):
                    await changed.wait()
                await trio.sleep_until(started + MIN_SNAPSHOT_GAP)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={**_SECURITY_HEADERS, "x-accel-buffering": "no"})

    async def share(request: Request) -> Response:
        try:
            params = share_params(await _read_form(request))
            result = await _call(parts.api, "share", params)
        except DizzyError as exc:
            return _error(exc.message)
        return JSONResponse(result, headers=_SECURITY_HEADERS)

    async def pair(request: Request) -> Response:
        try:
            await _read_form(request)  # nothing to set yet, but garbage is refused
            result = await parts.pairing.start(parts.nursery)
        except DizzyError as exc:
            return _error(exc.message)
        status = 200 if result["state"] == "waiting" else 400
        return JSONResponse(result, status_code=status, headers=_SECURITY_HEADERS)

    async def pair_cancel(request: Request) -> Response:
        try:
            return JSONResponse(parts.pairing.cancel(), headers=_SECURITY_HEADERS)
        except DizzyError as exc:
            return _error(exc.message)

    app = Starlette(routes=[
        Route("/", index),
        Route("/static/{name}", asset),
        Route("/api/state", state),
        Route("/api/live", live),
        Route("/api/share", share, methods=["POST"]),
        Route("/api/pair", pair, methods=["POST"]),
        Route("/api/pair/cancel", pair_cancel, methods=["POST"]),
    ])
    return TokenGate(app, parts.token)
