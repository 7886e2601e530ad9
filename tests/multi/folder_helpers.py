"""Helpers for folder sync tests: snapshots of trees, convergence, rescans.

Daemons come from ``cluster`` (fetch_helpers): ``--no-mdns``, loopback only.  Every wait
polls against a deadline and pokes the daemons with a rescan now and then, so nothing
depends on the 10 s rescan period.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dizzy.client import Client
from dizzy.protocol.ignore import IGNORE_FILE, IgnoreRules
from tests.multi.test_folders_serving import folder, folders
from tests.multi.test_pairing_loopback import Node

__all__ = [
    "Entry",
    "converged",
    "folder",
    "folders",
    "rescan",
    "share",
    "temp_files",
    "tree_snapshot",
    "wait_converged",
    "wait_for",
    "wait_idle",
]

#: (kind, permission bits, sha256 of the content | link target | None for a dir)
Entry = tuple[str, int, str | None]

#: how often waits poke the daemons with a rescan (well under RESCAN_INTERVAL)
RESCAN_EVERY = 1.0


def tree_snapshot(root: Path, *, honour_ignores: bool = False) -> dict[str, Entry]:
    """relpath -> (kind, mode, content digest or link target); links are not followed.

    With ``honour_ignores``, paths the root ``.dizzyignore`` excludes are left out
    (nothing else ever is: daemon temp files and conflict copies count).
    """
    rules: IgnoreRules | None = None
    if honour_ignores and (root / IGNORE_FILE).is_file():
        rules = IgnoreRules.parse((root / IGNORE_FILE).read_text())
    out: dict[str, Entry] = {}

    def visit(directory: Path, prefix: str) -> None:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            rel = f"{prefix}{entry.name}"
            st = entry.stat(follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
            if rules is not None and rules.ignored(rel, is_dir):
                continue
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(entry.path))
            elif is_dir:
                out[rel] = ("dir", mode, None)
                visit(Path(entry.path), rel + "/")
            else:
                digest = hashlib.sha256()
                with open(entry.path, "rb") as f:
                    while block := f.read(4 * 1024 * 1024):
                        digest.update(block)
                out[rel] = ("file", mode, digest.hexdigest())

    visit(root, "")
    return out


def converged(*roots: Path, honour_ignores: bool = False) -> bool:
    """Whether every tree has the same snapshot (missing trees never converge)."""
    try:
        snaps = [tree_snapshot(r, honour_ignores=honour_ignores) for r in roots]
    except FileNotFoundError:
        return False  # a file went away while we read it: a sync is running
    return all(s == snaps[0] for s in snaps[1:])


def temp_files(root: Path) -> list[str]:
    """The daemon's ``.NAME.dizzy-XXXX.tmp`` files anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*.dizzy-*.tmp"))


def rescan(*nodes: Node, name: str | None = None) -> None:
    for node in nodes:
        if node.alive():
            Client(node.home).call("rescan", {"name": name})


def share(node: Node, name: str, path: Path, mode: str = "send-receive") -> None:
    proc = node.cli("share", name, str(path), "--mode", mode)
    assert proc.returncode == 0, proc.stderr


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, *,
             poke: tuple[Node, ...] = (), interval: float = 0.1) -> Any:
    """Poll ``predicate`` until true; rescan ``poke`` every RESCAN_EVERY seconds."""
    start = time.monotonic()
    deadline = start + timeout
    last_poke = start
    while True:
        value = predicate()
        if value:
            return value
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        if poke and now - last_poke >= RESCAN_EVERY:
            rescan(*poke)
            last_poke = now
        time.sleep(interval)


def wait_converged(roots: list[Path], nodes: tuple[Node, ...], timeout: float, what: str,
                   *, honour_ignores: bool = False) -> None:
    def check() -> bool:
        return converged(*roots, honour_ignores=honour_ignores)

    try:
        wait_for(check, timeout, what, poke=nodes)
    except AssertionError:
        snaps = [tree_snapshot(r, honour_ignores=honour_ignores) for r in roots]
        diff = {k: [s.get(k) for s in snaps] for k in set().union(*snaps)
                if len({s.get(k) for s in snaps}) > 1}
        logs = "\n".join(f"--- {n.name}\n{n.log()[-3000:]}" for n in nodes)
        raise AssertionError(f"{what}: differences {diff!r}\n{logs}") from None


def wait_idle(node: Node, name: str, timeout: float, *, in_sync: bool = True) -> dict[str, Any]:
    """Wait until ``node`` reports folder ``name`` idle (and in sync); returns it."""
    def check() -> dict[str, Any] | None:
        info = next((f for f in folders(node) if f["name"] == name), None)
        if info and info["state"] == "idle" and (info["in_sync"] or not in_sync):
            return info
        return None

    result: dict[str, Any] = wait_for(check, timeout, f"{node.name}: {name} idle")
    return result
