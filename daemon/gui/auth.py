"""The gate in front of every page and API call: loopback only, and the home's token.

Checks, in order, each refusing with a body that reveals nothing about the device:

1. the client's address is loopback (403) — the page never listens elsewhere either;
2. the ``Host`` header names a loopback host (403): a web page elsewhere that rebinds
   its DNS name to 127.0.0.1 still sends its own name, so it is refused;
3. the token (401): ``Authorization: Bearer TOKEN`` (scripts), or the cookie set when
   the browser first opened ``/?token=TOKEN`` (that request is answered with a redirect
   to ``/`` that sets the cookie, so the token leaves the address bar and history);
4. a state-changing request from a browser also carries ``X-Dizzy-CSRF`` (403), a value
   derived from the token that only the page itself can read.  With the cookie
   ``SameSite=Strict`` and a custom header (which no other origin may send without a
   CORS preflight we never grant), a cross-site form cannot act.

Tokens are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from .address import is_loopback

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSRF_HEADER = "x-dizzy-csrf"
_SAFE_METHODS = {"GET", "HEAD"}


def csrf_value(token: str) -> str:
    """What the page sends in ``X-Dizzy-CSRF``: tied to the token, but not the token."""
    return hmac.new(token.encode(), b"dizzy gui csrf", hashlib.sha256).hexdigest()


def cookie_name(port: int) -> str:
    # Cookies are per host, not per port: two daemons on 127.0.0.1 must not share one.
    return f"dizzy-gui-{port}"


def host_is_loopback(host_header: str) -> bool:
    host = host_header.strip()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return bool(host) and is_loopback(host)


class TokenGate:
    """ASGI middleware: the checks above, then the app."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()
        self._csrf = csrf_value(token).encode()

    def _matches(self, candidate: str | None, expected: bytes) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})  # no websockets here
            return
        client = scope.get("client")
        headers = _headers(scope)
        if not client or not is_loopback(str(client[0])):
            await _refuse(scope, send, 403)
            return
        if not host_is_loopback(headers.get("host", "")):
            await _refuse(scope, send, 403)
            return
        port = int((scope.get("server") or ("", 0))[1] or 0)
        query_token = _query_token(scope)
        bearer = _bearer(headers.get("authorization", ""))
        cookie = _cookie(headers.get("cookie", ""), cookie_name(port))
        if scope["method"] == "GET" and scope["path"] == "/" and query_token is not None:
            if self._matches(query_token, self._token):
                await _login_redirect(send, cookie_name(port), query_token)
            else:
                await _refuse(scope, send, 401)
            return
        by_bearer = self._matches(bearer, self._token)
        if not by_bearer and not self._matches(cookie, self._token):
            await _refuse(scope, send, 401)
            return
        if scope["method"] not in _SAFE_METHODS and not by_bearer and not self._matches(
            headers.get(CSRF_HEADER), self._csrf
        ):
            await _refuse(scope, send, 403)
            return
        await self.app(scope, receive, send)


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        # Repeated Cookie headers are joined the way HTTP/2 splits them; others: first wins.
        if name == "cookie" and name in out:
            out[name] += "; " + value
        else:
            out.setdefault(name, value)
    return out


def _query_token(scope: Scope) -> str | None:
    query = scope.get("query_string", b"").decode("latin-1")
    values = parse_qs(query).get("token")
    return values[0] if values else None


def _bearer(value: str) -> str | None:
    scheme, _, credential = value.partition(" ")
    return credential.strip() if scheme.lower() == "bearer" and credential else None


def _cookie(header: str, name: str) -> str | None:
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


_BODIES = {401: b"401 unauthorized: open the address that `dizzy gui` prints\n",
           403: b"403 forbidden\n"}


async def _refuse(scope: Scope, send: Send, status: int) -> None:
    body = _BODIES[status]
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store")],
    })
    await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD"
                else body})


async def _login_redirect(send: Send, name: str, token: str) -> None:
    cookie = f"{name}={token}; Path=/; HttpOnly; SameSite=Strict"
    await send({
        "type": "http.response.start",
        "status": 303,
        "headers": [(b"location", b"/"), (b"set-cookie", cookie.encode()),
                    (b"content-length", b"0"), (b"cache-control", b"no-store"),
                    (b"referrer-policy", b"no-referrer")],
    })
    await send({"type": "http.response.body", "body": b""})
