"""The web page in a real headless chromium, against real daemons on loopback.

Two paired daemons (``--no-mdns``, ``--listen 127.0.0.1:0``, ``--gui 127.0.0.1:0``):
the page shows the peer online, a folder shared from the page reaching "in sync", a
bad form's message, and a pairing started from its button that a third daemon joins.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.daemon.gui_helpers import gui_daemon
from tests.multi.browser import open_browser, text_of, wait_text
from tests.multi.fetch_helpers import connect
from tests.multi.folder_helpers import share, tree_snapshot, wait_converged
from tests.multi.test_pairing_loopback import Node

GUI = ("--gui", "127.0.0.1:0")
#: a small folder: enough files that the sync takes several batches
FILES = 40
FILE_SIZE = 50_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from open_browser()


def page_url(node: Node) -> str:
    proc = node.cli("gui")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode().strip()


def test_page_shows_the_peer_online_and_a_folder_reaching_in_sync(
    tmp_path: Path, browser: Any
) -> None:
    a, b = Node(tmp_path / "a", "alpha"), Node(tmp_path / "b", "beta")
    a_dir, b_dir = tmp_path / "a-photos", tmp_path / "b-photos"
    a_dir.mkdir()
    b_dir.mkdir()
    for i in range(FILES):
        (a_dir / f"img{i:03}.jpg").write_bytes(os.urandom(FILE_SIZE))
    try:
        a.start(*GUI)
        b.start(*GUI)
        connect(a, b)
        a_id, b_id = a.device_id(), b.device_id()
        browser.get(page_url(b))
        assert browser.current_url.split("?")[0] == browser.current_url  # token gone
        wait_text(browser, "#device-id", lambda t: t == b_id, "this device's ID")
        assert text_of(browser, "#device-name") == "beta"
        wait_text(browser, f'tr[data-peer-id="{a_id}"] .peer-state',
                  lambda t: t == "online", "alpha online", shots=tmp_path)
        row = text_of(browser, f'tr[data-peer-id="{a_id}"]') or ""
        assert "alpha" in row and a.address in row, row
        assert text_of(browser, "#connection") == "live"

        share(a, "photos", a_dir)
        # A malformed form: a clear message on the page, and the daemon keeps running.
        _submit_share(browser, "photos", "relative/photos")
        wait_text(browser, "#share-status", lambda t: "must be absolute" in t,
                  "the bad form's message")
        assert "error" in (browser.find_element("id", "share-status")
                           .get_attribute("class") or "")
        _submit_share(browser, "photos", str(b_dir))
        wait_text(browser, "#share-status", lambda t: t.startswith("sharing photos"),
                  "the share to be accepted")
        wait_text(browser, 'tr[data-folder="photos"] .folder-sync',
                  lambda t: t == "in sync" and _folder_files(browser) == FILES,
                  f"photos in sync with {FILES} files", timeout=60, shots=tmp_path)
        wait_converged([a_dir, b_dir], (a, b), 30, "the folders")
        assert len(tree_snapshot(b_dir)) == FILES
        assert b.alive() and a.alive()
    finally:
        a.stop()
        b.stop()


def _submit_share(browser: Any, name: str, path: str) -> None:
    for field, value in (("share-name", name), ("share-path", path)):
        box = browser.find_element("id", field)
        box.clear()
        box.send_keys(value)
    browser.find_element("id", "share-submit").click()


def _folder_files(browser: Any) -> int | None:
    text = text_of(browser, 'tr[data-folder="photos"] td:nth-child(3)')
    return int(text) if text and text.isdigit() else None


def test_a_pairing_started_from_the_page_succeeds(tmp_path: Path, browser: Any) -> None:
    b, c = Node(tmp_path / "b", "beta"), Node(tmp_path / "c", "gamma")
    try:
        b.start(*GUI)
        c.start()
        c_id = c.device_id()
        browser.get(page_url(b))
        wait_text(browser, "#peers-empty", lambda t: "No paired devices" in t, "no peers")
        browser.find_element("id", "pair-start").click()
        code = wait_text(browser, "#pair-code", lambda t: len(t.split("-")) >= 3,
                         "the pairing code")
        joined = c.cli("pair", code, "--address", b.address)
        assert joined.returncode == 0, joined.stderr
        assert joined.stdout.decode().strip() == b.device_id()
        wait_text(browser, "#pair-status", lambda t: t.startswith("paired with gamma"),
                  "the page to report the pairing")
        assert c_id in (text_of(browser, "#pair-status") or "")
        wait_text(browser, f'tr[data-peer-id="{c_id}"] .peer-state',
                  lambda t: t == "online", "gamma online")
    finally:
        b.stop()
        c.stop()


async def test_page_renders_transfers_and_problems_from_the_bus(
    tmp_path: Path, browser: Any
) -> None:
    """Transfer and conflict events (published here as the daemon would) reach the page."""
    oid = "5e" * 32
    async with gui_daemon(tmp_path / "home") as d:
        await trio.to_thread.run_sync(browser.get, f"{d.url}?token={d.token}")

        def wait(css: str, check: Any, what: str) -> Any:
            return trio.to_thread.run_sync(lambda: wait_text(browser, css, check, what))

        await wait("#connection", lambda t: t == "live", "the live stream")
        d.ctx.events.publish("transfer.started", object_id=oid, total=4 << 20,
                             peers=[], what="photos/big.raw")
        d.ctx.events.publish("transfer.progress", object_id=oid, done=1 << 20,
                             total=4 << 20, rate=3 << 20)
        row = f'tr[data-object-id="{oid}"]'
        await wait(row, lambda t: "photos/big.raw" in t and "1.0 MiB of 4.0 MiB" in t
                   and "3.0 MiB/s" in t, "the transfer's progress")
        d.ctx.events.publish("transfer.finished", object_id=oid, bytes=4 << 20,
                             seconds=1.0, rate=4 << 20)
        d.ctx.events.publish("conflict", folder="photos", path="a.jpg",
                             conflict_path="a.sync-conflict-20260101-000000-QWERTYU.jpg",
                             device_id="QWERTYU-ASDFGHJ")
        await wait("#transfers-empty", lambda t: "Nothing" in t, "the transfer to end")
        await wait("#problems li", lambda t: "conflict in photos: a.jpg" in t, "the conflict")
