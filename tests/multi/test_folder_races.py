"""Local changes racing folder sync, found by the soak (scripts/soak): a directory
deleted on one device while a file is added inside it on another, a directory
renamed while a file is being fetched into it, and a settled conflict whose winner
is deleted.

Every daemon runs with ``--no-mdns`` on 127.0.0.1 (``cluster``); waits poll against
deadlines and poke rescans.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from dizzy.client import Client
from tests.multi.fetch_helpers import cluster, make_random_file
from tests.multi.folder_helpers import (
    folder,
    rescan,
    share,
    temp_files,
    wait_converged,
    wait_for,
    wait_idle,
)

pytestmark = pytest.mark.timeout(90)

MB = 1024 * 1024
SYNC_TIMEOUT = 40.0
T_EARLY = 1_700_000_000_000_000_000
T_LATE = T_EARLY + 100_000_000_000


def test_directory_deleted_while_a_file_is_added_inside(tmp_path: Path) -> None:
    """The new file wins over the deletion, so its directory stays on both devices, and
    both come back in sync (the deletion of ``d`` used to fail "directory not empty"
    on every retry, forever)."""
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    fa.mkdir()
    fb.mkdir()
    (fa / "d").mkdir()
    (fa / "d" / "old.txt").write_text("old\n")
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "f", fa)
        share(b, "f", fb)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "the first sync")
        a.stop()  # the two changes are made apart: truly concurrent
        shutil.rmtree(fb / "d")
        rescan(b)
        wait_for(lambda: folder(b, "f")["files"] == 0, 10, "B to record the deletion",
                 poke=(b,))
        (fa / "d" / "new.txt").write_text("added while B deleted d\n")
        a.start(*a.extra)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "d kept for the new file")
        for node in (a, b):
            wait_idle(node, "f", SYNC_TIMEOUT)
        assert (fb / "d" / "new.txt").read_text() == "added while B deleted d\n"
        assert not (fa / "d" / "old.txt").exists()


def test_directory_renamed_while_a_file_is_fetched_into_it(tmp_path: Path) -> None:
    """The temp file moves away with its directory and the rename into place fails:
    no temp file may be left behind (one was, with the rest of its batch), and the
    devices converge."""
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    fa.mkdir()
    fb.mkdir()
    (fa / "d").mkdir()
    (fa / "d" / "small.txt").write_text("small\n")
    make_random_file(fa / "d" / "big.bin", 100 * MB, seed=b"big")
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "f", fa)
        wait_idle(a, "f", 30)
        Client(b.home).call("share", {"name": "f", "path": str(fb), "mode": "send-receive"})
        deadline = time.monotonic() + SYNC_TIMEOUT
        while not any(t.startswith("d/") for t in temp_files(fb)):
            assert time.monotonic() < deadline, "B never started fetching into d"
            time.sleep(0.005)
        os.rename(fb / "d", fb / "d2")
        moved = temp_files(fb / "d2")
        print(f"temp files carried away with the directory: {moved}")
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT + 30, "convergence after the rename")
        for node in (a, b):
            wait_idle(node, "f", SYNC_TIMEOUT)
        assert not temp_files(fa) and not temp_files(fb)
        # B renamed d away before it had big.bin: that file was never deleted, so d
        # stays, with it, on both devices
        assert (fb / "d" / "big.bin").stat().st_size == 100 * MB


def test_a_conflict_once_kept_does_not_come_back_when_the_winner_is_deleted(
        tmp_path: Path) -> None:
    """A and B create plan.txt concurrently; A's (later) wins and B keeps its own as a
    conflict copy.  When A then deletes plan.txt it must stay deleted: B's losing
    version used to stay in the fold and win again over the deletion."""
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    fa.mkdir()
    fb.mkdir()
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "f", fa)
        share(b, "f", fb)
        wait_idle(b, "f", 20)
        b.stop()
        (fb / "plan.txt").write_text("B's plan\n")
        os.utime(fb / "plan.txt", ns=(T_EARLY, T_EARLY))
        (fa / "plan.txt").write_text("A's plan, the later one\n")
        os.utime(fa / "plan.txt", ns=(T_LATE, T_LATE))
        rescan(a)
        wait_for(lambda: folder(a, "f")["files"] == 1, 10, "A to record its plan", poke=(a,))
        b.start(*b.extra)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "the conflict to settle")
        copies = sorted(p.name for p in fa.glob("plan.sync-conflict-*"))
        assert len(copies) == 1, copies
        (fa / "plan.txt").unlink()
        rescan(a)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "the deletion")
        for node in (a, b):
            wait_idle(node, "f", SYNC_TIMEOUT)
        for root in (fa, fb):
            assert not (root / "plan.txt").exists()
            assert (root / copies[0]).read_text() == "B's plan\n"


def test_two_conflicts_with_the_same_copy_name_keep_both_copies(tmp_path: Path) -> None:
    """B loses two conflicts at one path with versions of the same mtime second: both
    copies would get one name, and the second rename used to destroy the first."""
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    fa.mkdir()
    fb.mkdir()
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "f", fa)
        share(b, "f", fb)
        wait_idle(b, "f", 20)
        for round_, (mine, theirs) in enumerate([("B first\n", "A first\n"),
                                                 ("B second\n", "A second\n")]):
            b.stop()
            (fb / "plan.txt").write_text(mine)
            os.utime(fb / "plan.txt", ns=(T_EARLY, T_EARLY))  # the same second twice
            (fa / "plan.txt").write_text(theirs)
            os.utime(fa / "plan.txt", ns=(T_LATE + round_, T_LATE + round_))
            rescan(a)
            b.start(*b.extra)  # B's edit was made apart from A's: truly concurrent
            wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, f"conflict {round_ + 1}")
        for root in (fa, fb):
            kept = sorted(p.read_text() for p in root.glob("plan.sync-conflict-*"))
            assert kept == ["B first\n", "B second\n"], kept
            assert (root / "plan.txt").read_text() == "A second\n"
