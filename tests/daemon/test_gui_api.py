"""The page's API over real HTTP: forms, pairing from the page, live state from the bus."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dizzy.client import Client
from dizzy.daemon.context import DaemonConfig
from dizzy.daemon.home import Home
from dizzy.daemon.nurseries import unwrap_single_errors
from dizzy.daemon.serve import serve_daemon
from dizzy.protocol.errors import DizzyError
from tests.daemon.gui_helpers import gui_daemon


@pytest.mark.parametrize("body, needle", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b'["a", "b"]', "must be a JSON object"),
    (b'{"path": "/tmp"}', "a folder name is required"),
    (b'{"name": "  ", "path": "/tmp"}', "a folder name is required"),
    (b'{"name": "x"}', "a folder path is required"),
    (b'{"name": "x", "path": 5}', "a folder path is required"),
    (b'{"name": "x", "path": "photos"}', "must be absolute"),
    (b'{"name": "x", "path": "/no/such/dir"}', "no such directory"),
    (b'{"name": "x", "path": "FILE"}', "not a directory"),
    (b'{"name": "x", "path": "DIR", "mode": "both"}', "mode must be one of"),
    (b'{"name": "../x", "path": "DIR"}', "not a usable folder name"),
    (b'{"name": "x", "path": "HOME"}', "overlaps dizzy's own home"),
    (b'{"name": "x", "path": "/a\\u0000b"}', "NUL"),
    (b'{"name": "' + b"x" * 70000 + b'"}', "too large"),
])
async def test_a_bad_share_form_is_a_clear_400_and_the_daemon_keeps_running(
    tmp_path: Path, body: bytes, needle: str
) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    home = tmp_path / "home"
    body = body.replace(b"FILE", str(tmp_path / "file").encode())
    body = body.replace(b"DIR", str(tmp_path / "dir").encode())
    body = body.replace(b"HOME", str(home).encode())
    async with gui_daemon(home) as d, d.client(headers=d.bearer()) as http:
        r = await http.post("/api/share", content=body,
                            headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert needle in r.json()["error"]
        assert "\n" not in r.json()["error"]
        state = await http.get("/api/state")
        assert state.status_code == 200 and state.json()["folders"] == []


async def test_share_from_the_page(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"x" * 1000)
    async with gui_daemon(tmp_path / "home") as d, d.client(headers=d.bearer()) as http:
        r = await http.post("/api/share", json={"name": "photos", "path": str(photos),
                                                "mode": "send-only"})
        assert r.status_code == 200, r.text
        assert (r.json()["name"], r.json()["mode"]) == ("photos", "send-only")
        with trio.fail_after(10):
            while True:
                folders = (await http.get("/api/state")).json()["folders"]
                if folders and folders[0]["state"] == "idle":
                    break
                await trio.sleep(0.05)
        assert (folders[0]["files"], folders[0]["bytes"], folders[0]["in_sync"]) == (
            1, 1000, True)
        r = await http.post("/api/share", json={"name": "photos", "path": str(tmp_path)})
        assert r.status_code == 400 and "already shared" in r.json()["error"]


async def test_pairing_from_the_page_shows_the_code_then_the_peer(tmp_path: Path) -> None:
    async with gui_daemon(tmp_path / "a") as a, gui_daemon(tmp_path / "b") as b, \
            a.client(headers=a.bearer()) as http:
        r = await http.post("/api/pair", content=b"")
        assert r.status_code == 200, r.text
        code = r.json()["code"]
        assert r.json()["state"] == "waiting"
        again = await http.post("/api/pair", json={})
        assert again.status_code == 400 and "already waiting" in again.json()["error"]
        port = int((await a.ctx.services["peers"].status())["listen"].rsplit(":", 1)[1])
        params = {"code": code, "address": ["127.0.0.1", port]}
        joiner = Client(b.ctx.config.home.root)
        result = await trio.to_thread.run_sync(joiner.call, "pair_join", params)
        assert result["device_id"] == str(a.ctx.identity.device_id)
        with trio.fail_after(10):
            while (state := (await http.get("/api/state")).json())["pairing"]["state"] \
                    == "waiting":
                await trio.sleep(0.05)
        assert state["pairing"] == {"state": "paired",
                                    "device_id": str(b.ctx.identity.device_id),
                                    "name": b.ctx.name}
        assert [p["id"] for p in state["peers"]] == [str(b.ctx.identity.device_id)]


async def test_a_pairing_from_the_page_can_be_cancelled(tmp_path: Path) -> None:
    async with gui_daemon(tmp_path / "a") as a, a.client(headers=a.bearer()) as http:
        r = await http.post("/api/pair/cancel")
        assert r.status_code == 400 and "no pairing is waiting" in r.json()["error"]
        assert (await http.post("/api/pair")).status_code == 200
        assert (await http.post("/api/pair/cancel")).status_code == 200
        with trio.fail_after(5):
            while (await http.get("/api/state")).json()["pairing"]["state"] == "waiting":
                await trio.sleep(0.02)
        state = (await http.get("/api/state")).json()
        assert state["pairing"] == {"state": "failed", "error": "cancelled"}
        assert (await http.post("/api/pair")).status_code == 200  # a new one may start


async def _live_states(http: httpx.AsyncClient, until: Callable[[dict[str, Any]], bool],
                       timeout: float = 10.0) -> dict[str, Any]:
    """Read the live stream until a state satisfies ``until``; returns that state."""
    with trio.fail_after(timeout):
        async with http.stream("GET", "/api/live") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    state: dict[str, Any] = json.loads(line[len("data: "):])
                    if until(state):
                        return state
    raise AssertionError("the live stream ended")


async def test_live_stream_shows_transfers_and_problems_from_the_bus(tmp_path: Path) -> None:
    oid = "ab" * 32
    async with gui_daemon(tmp_path / "home") as d, d.client(headers=d.bearer()) as http:
        bus = d.ctx.events
        first = await _live_states(http, lambda s: True)
        assert first["transfers"] == [] and first["problems"] == []
        bus.publish("transfer.started", object_id=oid, total=1000, peers=["X"],
                    what="photos/a.jpg")
        bus.publish("transfer.progress", object_id=oid, done=400, total=1000, rate=2e6)
        start = trio.current_time()
        state = await _live_states(http, lambda s: bool(s["transfers"]))
        # Right after the events, not a whole polling period later.
        assert trio.current_time() - start < 1.0
        assert state["transfers"] == [{
            "object_id": oid, "what": "photos/a.jpg", "peers": ["X"], "done": 400,
            "total": 1000, "rate": 2e6, "started": state["transfers"][0]["started"],
            "updated": state["transfers"][0]["updated"],
        }]
        bus.publish("transfer.progress", object_id=oid, done=900, total=1000, rate=3e6)
        await _live_states(http, lambda s: s["transfers"][0]["done"] == 900)
        bus.publish("transfer.finished", object_id=oid, bytes=1000, seconds=0.5, rate=2e3)
        bus.publish("conflict", folder="photos", path="a.jpg",
                    conflict_path="a.sync-conflict-20260101-000000-ABCDEFG.jpg",
                    device_id="ABCDEFG-HIJKLMN")
        bus.publish("error", where="folder photos", message="disk full")
        bus.publish("transfer.failed", object_id="cd" * 32, error="nobody has it")
        state = await _live_states(http, lambda s: len(s["problems"]) == 3)
        assert state["transfers"] == []
        texts = [p["text"] for p in state["problems"]]
        assert texts[0].startswith(f"transfer of {'cd' * 8}") and "nobody has it" in texts[0]
        assert texts[1] == "folder photos: disk full"
        assert "conflict in photos: a.jpg" in texts[2] and "ABCDEFG" in texts[2]


async def test_a_page_opened_late_still_shows_what_the_bus_holds(tmp_path: Path) -> None:
    """History in the ring counts: an event from before the page (or GUI) started."""
    from dizzy.daemon.events import Event
    from dizzy.daemon.gui.live import LiveState

    live = LiveState(clock=lambda: 1000.0)
    live.apply(Event(1, 10.0, "transfer.progress", {"object_id": "ef" * 32, "done": 5,
                                                     "total": 9, "rate": 1.0}))
    live.apply(Event(2, 11.0, "folder.state", {"folder": "f", "state": "error",
                                                "error": "path vanished"}))
    live.apply(Event(3, 12.0, "transfer.progress", {"object_id": 7}))  # malformed: ignored
    assert live.active_transfers() == []  # 990 s without news: stale
    live.apply(Event(4, 13.0, "folder.state", {"folder": "f", "state": "error",
                                                "error": "path vanished"}))
    assert [(p["text"], p["repeats"], p["time"]) for p in live.recent_problems()] == [
        ("folder f: path vanished", 2, 13.0)]
    from dizzy.daemon.gui.live import MAX_TRANSFERS

    for i in range(MAX_TRANSFERS + 5):  # starts that never finish: memory stays bounded
        live.apply(Event(10 + i, 1000.0 + i, "transfer.started",
                         {"object_id": f"{i:064x}", "total": 1}))
    kept = live.active_transfers()
    assert len(kept) == MAX_TRANSFERS and kept[0]["object_id"] == f"{5:064x}"
    async with gui_daemon(tmp_path / "home") as d, d.client(headers=d.bearer()) as http:
        d.ctx.events.publish("error", where="fetch", message="early")
        state = await _live_states(http, lambda s: bool(s["problems"]))
        assert state["problems"][0]["text"] == "fetch: early"


async def test_an_explicit_busy_gui_port_stops_the_daemon(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = DaemonConfig(home=Home(tmp_path / "a"), listen=("127.0.0.1", 0),
                              mdns=False, gui=("127.0.0.1", port))
        with pytest.raises(DizzyError, match=f"cannot serve the web page on 127.0.0.1:{port}"
                           ), unwrap_single_errors():
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_daemon, config)
                nursery.cancel_scope.cancel()
        # The built-in default only turns the page off.
        config = DaemonConfig(home=Home(tmp_path / "b"), listen=("127.0.0.1", 0),
                              mdns=False, gui=("127.0.0.1", port), gui_optional=True)
        async with trio.open_nursery() as nursery:
            ctx = await nursery.start(serve_daemon, config)
            assert await ctx.services["gui"].status() == {"gui": None}
            nursery.cancel_scope.cancel()
