"""SIGKILL of the sender or the receiver at random moments of a folder sync, again and
again, while the sender's tree keeps changing.

After every kill of the receiver its folder is checked while it is dead: every file
under a final name holds bytes the sender once had at that path (never a torn write).
At the end both trees must be identical (paths, bytes, modes, symlinks, mtimes), with
no daemon temp file or partial transfer left anywhere.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path

import pytest

from dizzy.client import Client
from tests.faults.fault_helpers import (
    MB,
    History,
    KillRecord,
    fault_rng,
    leftover_partials,
    sha256_file,
)
from tests.multi.fetch_helpers import cluster, make_random_file, partial_rows
from tests.multi.folder_helpers import (
    rescan,
    share,
    temp_files,
    tree_snapshot,
    wait_converged,
    wait_idle,
)
from tests.multi.test_pairing_loopback import Node

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

#: kills in one run (the issue asks for at least 20)
ROUNDS = 22
#: a "blind" kill lands this long (seconds) after the round's changes were made...
KILL_DELAY = (0.05, 1.5)
#: ...the others this long after B was seen writing (a file in flight)
AIMED_DELAY = (0.0, 0.04)
#: share of kills aimed at a moment B is writing
AIMED = 0.7
#: every wait for convergence ends within this
CONVERGE_TIMEOUT = 90.0
DIRS = ("docs", "docs/deep", "media", "media/raw", "code/src/lib", "empty")


def write_file(path: Path, data: bytes, staging: Path, mode: int = 0o644) -> None:
    """Whole in one rename (made outside the folder): the sender never scans half of it."""
    staging.mkdir(exist_ok=True)
    tmp = staging / f"{path.name}.{os.getpid()}"
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_big(path: Path, size: int, seed: bytes, staging: Path) -> None:
    staging.mkdir(exist_ok=True)
    tmp = make_random_file(staging / f"{path.name}.big", size, seed=seed)
    os.replace(tmp, path)


def make_tree(root: Path, rng: random.Random, staging: Path) -> None:
    """~290 files: 240 small (0-64 KiB), 20 medium (0.25-2 MiB), 5 big (4-9 MiB)."""
    for d in DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    files = [d for d in DIRS if d != "empty"]
    for i in range(240):
        size = rng.choice([0, rng.randrange(1, 4096), rng.randrange(4096, 64 * 1024)])
        mode = rng.choice([0o644, 0o644, 0o600, 0o755])
        write_file(root / rng.choice(files) / f"small-{i:03}.txt", rng.randbytes(size),
                   staging, mode)
    for i in range(20):
        write_file(root / "media" / f"medium-{i:02}.bin",
                   rng.randbytes(rng.randrange(256 * 1024, 2 * MB)), staging)
    for i in range(5):
        write_big(root / "media" / "raw" / f"big-{i}.bin", rng.randrange(4 * MB, 9 * MB),
                  rng.randbytes(8), staging)
    for i in range(4):
        os.symlink(f"../docs/small-{i:03}.txt", root / "code" / f"link-{i}")


def regular_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
                  and not p.name.endswith(".tmp"))


def mutate(root: Path, rng: random.Random, staging: Path, round_no: int,
           history: History) -> str:
    """Some of everything a user does: new big file, edits, deletes, a rename, chmod."""
    files = regular_files(root)
    done = []
    big = root / "media" / f"round-{round_no:02}.bin"
    write_big(big, rng.randrange(8 * MB, 16 * MB), rng.randbytes(8), staging)
    # only what changes is hashed, as it is written: the whole tree each round is slow
    def record(path: Path) -> None:
        history.record(str(path.relative_to(root)), sha256_file(path))

    record(big)
    done.append("new big")
    for path in rng.sample(files, 4):
        size = path.stat().st_size
        write_file(path, rng.randbytes(max(1, size + rng.randrange(-100, 100))), staging,
                   path.stat().st_mode & 0o777)
        record(path)
    done.append("4 edits")
    victims = rng.sample([p for p in regular_files(root) if "round-" not in p.name], 2)
    for path in victims:
        path.unlink()
    done.append("2 deletes")
    rest = [p for p in regular_files(root) if p.exists()]
    moved = rng.choice(rest)
    target = moved.with_name(f"moved-{round_no:02}-{moved.name}")
    moved.rename(target)
    record(target)
    chmodded = rng.choice([p for p in regular_files(root) if p.exists()])
    os.chmod(chmodded, rng.choice([0o600, 0o640, 0o755]))
    done.append("rename, chmod")
    if round_no % 4 == 0:
        os.symlink(f"media/round-{round_no:02}.bin", root / f"link-round-{round_no:02}")
        done.append("symlink")
    return ", ".join(done)


def b_is_writing(b: Node, fb: Path) -> bool:
    """A transfer into B is under way: a partial file or a temp file in media/."""
    for directory in (b.home / "partial", fb / "media"):
        try:
            with os.scandir(directory) as entries:
                if any(e.name.endswith(".tmp") or directory.name == "partial"
                       for e in entries):
                    return True
        except FileNotFoundError:
            pass
    return False


def wait_for_kill_moment(rng: random.Random, b: Node, fb: Path) -> str:
    if rng.random() < AIMED:
        deadline = time.monotonic() + 5.0
        while not b_is_writing(b, fb) and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(*AIMED_DELAY))
        return "aimed"
    time.sleep(rng.uniform(*KILL_DELAY))
    return "blind"


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_mtime_ns for p in regular_files(root)}


def test_sigkill_either_side_during_folder_sync(tmp_path: Path) -> None:
    started = time.monotonic()
    rng = fault_rng("kill-folder-sync")
    fa, fb, staging = tmp_path / "fa", tmp_path / "fb", tmp_path / "staging"
    fa.mkdir()
    fb.mkdir()
    make_tree(fa, rng, staging)
    history = History()
    history.record_tree(fa)
    record = KillRecord()
    torn: list[str] = []
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "f", fa)
        wait_idle(a, "f", 30)
        Client(b.home).call("share", {"name": "f", "path": str(fb), "mode": "send-receive"})
        for round_no in range(ROUNDS):
            if round_no:
                what = mutate(fa, rng, staging, round_no, history)
                rescan(a)
            else:
                what = "first sync"
            how = wait_for_kill_moment(rng, b, fb)
            victim = rng.choice(["sender", "receiver"])
            node: Node = a if victim == "sender" else b
            assert node.daemon is not None
            node.daemon.kill9()
            temps = len(temp_files(fb)) + len(leftover_partials(b))
            record.note(victim, temps)
            if victim == "receiver":
                # Frozen while dead: nothing under a final name is torn or foreign.
                torn += [f"round {round_no}: {p}" for p in history.foreign_files(fb)]
            print(f"  round {round_no:2}: {what}; {how} kill of the {victim} "
                  f"({temps} temp/partial file(s) on B)")
            t0 = time.monotonic()
            node.start(*node.extra)
            record.restarts_seconds += time.monotonic() - t0
        wait_converged([fa, fb], (a, b), CONVERGE_TIMEOUT, "convergence after the kills")
        wait_idle(b, "f", 30)
        wait_idle(a, "f", 30)
        snap = tree_snapshot(fb)
        assert snap == tree_snapshot(fa)
        assert mtimes(fa) == mtimes(fb)
        assert torn == [], torn
        assert history.foreign_files(fb) == []
        assert temp_files(fa) == [] and temp_files(fb) == []
        assert leftover_partials(b) == [] and leftover_partials(a) == []
        assert not list(fb.rglob("*.sync-conflict-*")), "B edits nothing: no conflicts"
        files = regular_files(fb)
        checked = sum(p.stat().st_size for p in files)
        assert all(sha256_file(p) == snap[str(p.relative_to(fb))][2] for p in files)
    elapsed = time.monotonic() - started
    print(f"FAULTS kill-folder-sync: rounds {ROUNDS}, kills {record.kills} "
          f"{record.by_victim}, {record.mid_file} with a file mid-transfer, "
          f"files checked {len(files)} + {sum(1 for v in snap.values() if v[0] == 'link')} "
          f"links, bytes compared {checked}, torn or foreign files 0, "
          f"{elapsed:.0f} s")


def test_partial_of_a_replaced_version_is_dropped(tmp_path: Path) -> None:
    """Regression: B killed while fetching a big file that A then replaced kept the
    partial data forever (and waited for the old version at every start)."""
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    fa.mkdir()
    fb.mkdir()
    make_random_file(fa / "big.bin", 96 * MB, seed=b"old version")
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "f", fa)
        wait_idle(a, "f", 30)
        Client(b.home).call("share", {"name": "f", "path": str(fb), "mode": "send-receive"})
        deadline = time.monotonic() + 30
        while partial_rows(b.home) < 3:
            assert time.monotonic() < deadline, "B recorded no chunk of big.bin in time"
            time.sleep(0.005)
        assert b.daemon is not None
        b.daemon.kill9()
        assert leftover_partials(b), "the kill should have cut the transfer off"
        write_big(fa / "big.bin", 8 * MB, b"new version", tmp_path / "staging")
        rescan(a)
        wait_idle(a, "f", 30)
        b.start(*b.extra)
        wait_converged([fa, fb], (a, b), CONVERGE_TIMEOUT, "B to get the new version")
        wait_idle(b, "f", 30)
        assert leftover_partials(b) == []
        assert partial_rows(b.home) == 0
        assert "dropped 1 unfinished transfer(s) of replaced versions" in b.log()


def test_files_an_apply_did_not_record_are_not_local_changes(tmp_path: Path) -> None:
    """Regression: B killed after renaming fetched files into place but before recording
    them took them for its own edits at the next start; A's next edit of such a file then
    made a spurious conflict copy (found by the kill loop above).

    The crash state is made exactly: B stopped, and its index rows for the files it
    received removed, as if the kill had come before they were written.
    """
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    fa.mkdir()
    fb.mkdir()
    (fa / "sub").mkdir()
    for i in range(5):
        (fa / "sub" / f"f{i}.txt").write_text(f"version 1 of {i}\n")
    os.symlink("sub/f0.txt", fa / "link")
    (fa / "gone.txt").write_text("deleted later\n")
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "f", fa)
        share(b, "f", fb)
        wait_converged([fa, fb], (a, b), CONVERGE_TIMEOUT, "the first sync")
        (fa / "gone.txt").unlink()
        rescan(a)
        wait_converged([fa, fb], (a, b), CONVERGE_TIMEOUT, "the deletion")
        wait_idle(b, "f", 30)
        b.stop()
        forget = ["sub", "link", *[f"sub/f{i}.txt" for i in range(5)]]
        with sqlite3.connect(b.home / "index.sqlite") as conn:
            conn.executemany("DELETE FROM folder_files WHERE folder = 'f' AND path = ?",
                             [(p,) for p in forget])
            conn.executemany("DELETE FROM folder_versions WHERE folder = 'f' AND path = ?",
                             [(p,) for p in [*forget, "gone.txt"]])
            # and the deletion B applied, as if B died before recording it
            conn.execute("INSERT INTO folder_files (folder, path, kind, size, mtime_ns, "
                         "inode, mode, object_id, link_target) VALUES "
                         "('f', 'gone.txt', 'file', 14, 1, 1, 420, NULL, NULL)")
        b.start(*b.extra)
        wait_idle(b, "f", 30)
        for i in range(5):
            (fa / "sub" / f"f{i}.txt").write_text(f"version 2 of {i}, edited on A\n")
        rescan(a)
        wait_converged([fa, fb], (a, b), CONVERGE_TIMEOUT, "A's edits")
        assert not list(fa.rglob("*.sync-conflict-*")), tree_snapshot(fa)
        assert (fb / "sub" / "f3.txt").read_text() == "version 2 of 3, edited on A\n"
        b_short = b.device_id().split("-")[0]
        assert f"new change(s) from {b_short}" not in a.log(), a.log()
