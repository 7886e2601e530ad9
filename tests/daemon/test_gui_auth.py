"""The web page's gate, over real HTTP on 127.0.0.1: token, cookie, Host, CSRF, loopback."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from dizzy.daemon.gui.auth import TokenGate, cookie_name, csrf_value
from dizzy.daemon.gui.token import load_or_create_token, read_token, token_path
from tests.daemon.gui_helpers import gui_daemon

PROTECTED = [("GET", "/"), ("GET", "/api/state"), ("GET", "/api/live"),
             ("GET", "/static/app.js"), ("GET", "/no/such/page"), ("POST", "/api/share"),
             ("POST", "/api/pair"), ("POST", "/api/pair/cancel"), ("HEAD", "/")]


def test_token_is_made_once_private_and_a_damaged_one_replaced(tmp_path: Path) -> None:
    first = load_or_create_token(tmp_path)
    assert len(first) >= 43 and read_token(tmp_path) == first
    assert stat.S_IMODE(os.stat(token_path(tmp_path)).st_mode) == 0o600
    os.chmod(token_path(tmp_path), 0o644)
    assert load_or_create_token(tmp_path) == first
    assert stat.S_IMODE(os.stat(token_path(tmp_path)).st_mode) == 0o600
    token_path(tmp_path).write_text("short\n")
    replaced = load_or_create_token(tmp_path)
    assert replaced != first and read_token(tmp_path) == replaced


async def test_without_a_valid_token_nothing_is_revealed(tmp_path: Path) -> None:
    (tmp_path / "other-home").mkdir()
    other_home_token = load_or_create_token(tmp_path / "other-home")
    async with gui_daemon(tmp_path / "home") as d:
        device_id = str(d.ctx.identity.device_id)
        assert other_home_token != d.token
        bad_credentials: list[dict[str, Any]] = [
            {},
            {"headers": {"authorization": "Bearer wrong"}},
            {"headers": {"authorization": f"Bearer {other_home_token}"}},
            {"headers": {"authorization": f"Basic {d.token}"}},
            {"cookies": {cookie_name(0): d.token}},  # another port's cookie name
            {"cookies": {"dizzy-gui-1": other_home_token}},
        ]
        port = int(d.url.rsplit(":", 1)[1].strip("/"))
        bad_credentials.append({"cookies": {cookie_name(port): other_home_token}})
        bodies = set()
        async with d.client() as http:
            for creds in bad_credentials:
                http.cookies.clear()
                for name, value in creds.get("cookies", {}).items():
                    http.cookies.set(name, value)
                for method, path in PROTECTED:
                    r = await http.request(method, path, headers=creds.get("headers"))
                    assert r.status_code == 401, (creds, method, path, r.status_code)
                    assert device_id not in r.text and d.ctx.name not in r.text
                    assert "set-cookie" not in r.headers
                    bodies.add(r.text)
            http.cookies.clear()
            r = await http.get("/", params={"token": other_home_token})
            assert r.status_code == 401 and "set-cookie" not in r.headers
        assert len(bodies) == 2  # one generic text (and the empty body of HEAD)


async def test_token_in_the_address_becomes_a_strict_cookie(tmp_path: Path) -> None:
    async with gui_daemon(tmp_path / "home") as d, d.client() as http:
        r = await http.get("/", params={"token": d.token})
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        page = await http.get("/")  # the cookie jar now holds it
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert csrf_value(d.token) in page.text and d.token not in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        state = (await http.get("/api/state")).json()
        assert state["device"]["device_id"] == str(d.ctx.identity.device_id)
        js = await http.get("/static/app.js")
        assert js.status_code == 200 and "EventSource" in js.text


async def test_a_foreign_host_header_is_refused(tmp_path: Path) -> None:
    async with gui_daemon(tmp_path / "home") as d, d.client() as http:
        for host in ("evil.example", "evil.example:22080", "127.0.0.1.evil.example",
                     "10.0.0.1", ""):
            r = await http.get("/api/state", headers={**d.bearer(), "host": host})
            assert r.status_code == 403, host
            assert str(d.ctx.identity.device_id) not in r.text
        for host in ("127.0.0.1", "localhost:1234", "[::1]:5", "127.9.9.9"):
            r = await http.get("/api/state", headers={**d.bearer(), "host": host})
            assert r.status_code == 200, host


async def test_browser_posts_need_the_csrf_header(tmp_path: Path) -> None:
    async with gui_daemon(tmp_path / "home") as d, d.client() as http:
        await http.get("/", params={"token": d.token})  # log in: the cookie
        r = await http.post("/api/share", json={"name": "x", "path": "/nope"})
        assert r.status_code == 403
        r = await http.post("/api/share", json={"name": "x", "path": "/nope"},
                            headers={"x-dizzy-csrf": "0" * 64})
        assert r.status_code == 403
        r = await http.post("/api/share", json={"name": "x", "path": "/nope"},
                            headers={"x-dizzy-csrf": csrf_value(d.token)})
        assert r.status_code == 400 and "no such directory" in r.json()["error"]
        # A script with the bearer token is no browser: no cookie to ride on.
        http.cookies.clear()
        r = await http.post("/api/share", json={"name": "x", "path": "/nope"},
                            headers=d.bearer())
        assert r.status_code == 400


async def test_non_loopback_clients_are_refused_even_with_the_token() -> None:
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    token = "t" * 43
    gate = TokenGate(app, token)
    transport = httpx.ASGITransport(app=gate, client=("192.0.2.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        r = await http.get("/api/state", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 403 and reached == []
    for client in (("127.0.0.1", 1), ("::1", 1), ("::ffff:127.0.0.1", 1)):
        transport = httpx.ASGITransport(app=gate, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            r = await http.get("/api/state", headers={"authorization": f"Bearer {token}"})
            assert r.status_code == 200, client
    assert reached == ["/api/state"] * 3


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "example.com", "::"])
def test_only_loopback_addresses_are_accepted(host: str) -> None:
    from dizzy.daemon.gui.address import parse_gui_address
    from dizzy.protocol.errors import UsageError

    with pytest.raises(UsageError, match="loopback only"):
        parse_gui_address(f"[{host}]:22080" if ":" in host else f"{host}:22080")
