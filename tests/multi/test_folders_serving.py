"""Shared folders: the registry through the CLI, and files served in place by hash."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import blake3

from dizzy.client import Client
from tests.multi.fetch_helpers import cluster, stored_path
from tests.multi.test_pairing_loopback import Node, wait_until


def folders(node: Node) -> list[dict[str, Any]]:
    proc = node.cli("folders", "--json")
    assert proc.returncode == 0, proc.stderr
    result: list[dict[str, Any]] = json.loads(proc.stdout)
    return result


def folder(node: Node, name: str) -> dict[str, Any]:
    return next(f for f in folders(node) if f["name"] == name)


def fails(node: Node, *args: str, code: int, needle: str) -> None:
    proc = node.cli(*args)
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, err)
    assert needle in err and err.count("\n") == 1, err


def test_share_list_unshare(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "2026").mkdir(parents=True)
    (photos / "2026" / "a.jpg").write_bytes(os.urandom(3000))
    (photos / "b.jpg").write_bytes(os.urandom(5000))
    with cluster(tmp_path, ["a"], []) as nodes:
        a = nodes["a"]
        assert a.cli("share", "photos", str(photos)).returncode == 0
        wait_until(lambda: folder(a, "photos")["state"] == "idle", 10, "the first scan")
        info = folder(a, "photos")
        assert (info["files"], info["bytes"], info["mode"]) == (2, 8000, "send-receive")
        assert {"name", "path", "mode", "state", "files", "bytes", "need_bytes", "in_sync",
                "peers"} <= set(info)
        # bad input, one clear line each
        fails(a, "share", "x", str(tmp_path / "nope"), code=2, needle="not a directory")
        fails(a, "share", "inner", str(photos / "2026"), code=2, needle="overlaps")
        fails(a, "share", "photos", str(tmp_path), code=2, needle="already shared")
        fails(a, "share", "../evil", str(tmp_path / "nope2"), code=2, needle="not a directory")
        fails(a, "unshare", "nothing", code=3, needle="no shared folder")
        # sharing survives a restart; unsharing deletes nothing
        a.restart()
        wait_until(lambda: folder(a, "photos")["state"] == "idle", 10, "the rescan")
        assert a.cli("unshare", "photos").returncode == 0
        assert folders(a) == []
        assert (photos / "b.jpg").stat().st_size == 5000


def test_missing_folder_is_paused_not_emptied(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "x.txt").write_text("keep me")
    with cluster(tmp_path, ["a"], []) as nodes:
        a = nodes["a"]
        assert a.cli("share", "docs", str(docs)).returncode == 0
        wait_until(lambda: folder(a, "docs")["files"] == 1, 10, "the first scan")
        docs.rename(tmp_path / "unmounted")
        Client(a.home).call("rescan", {"name": "docs"})
        wait_until(lambda: folder(a, "docs")["state"] == "error", 10, "the folder to pause")
        assert folder(a, "docs")["files"] == 1  # not "everything was deleted"
        (tmp_path / "unmounted").rename(docs)
        Client(a.home).call("rescan", {"name": "docs"})
        wait_until(lambda: folder(a, "docs")["state"] == "idle", 10, "the folder to resume")


def test_files_in_a_shared_folder_are_served_in_place(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    data = os.urandom(5 * 1024 * 1024 + 123)
    (shared / "result.bin").write_bytes(data)
    object_id = blake3.blake3(data).hexdigest()
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        assert a.cli("share", "work", str(shared)).returncode == 0
        wait_until(lambda: folder(a, "work")["files"] == 1, 10, "the first scan")
        # fetched by hash from the peer, and locally on A too
        out = tmp_path / "from-b.bin"
        proc = b.cli("get", object_id, "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes() == data
        local = tmp_path / "from-a.bin"
        assert a.cli("get", object_id, "-o", str(local)).returncode == 0
        assert local.read_bytes() == data
        # served in place: no second copy in A's object store
        assert not stored_path(a, object_id).exists()
        # edited after the scan: the old ID is no longer served as if it were there
        (shared / "result.bin").write_bytes(b"new content")
        proc = b.cli("get", object_id, "-o", str(tmp_path / "stale.bin"))
        assert proc.returncode != 0
        assert not (tmp_path / "stale.bin").exists()
