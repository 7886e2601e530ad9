"""Folder sync between real loopback daemons: initial sync, both directions, conflicts,
ignores, three devices, folder modes, kill -9 mid-sync, a vanished folder, unshare.

Every daemon runs with ``--no-mdns`` on 127.0.0.1 (``cluster``).  Waits poll against a
deadline and trigger rescans instead of waiting for the 10 s rescan period.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

import pytest

from dizzy.client import Client
from tests.event_lines import popen, recent_events
from tests.multi.fetch_helpers import cluster, file_blake3, full_log, make_random_file
from tests.multi.folder_helpers import (
    converged,
    folder,
    folders,
    rescan,
    share,
    temp_files,
    tree_snapshot,
    wait_converged,
    wait_for,
    wait_idle,
)
from tests.multi.test_pairing_loopback import Node

pytestmark = pytest.mark.timeout(60)

MB = 1024 * 1024
SYNC_TIMEOUT = 30.0
ALL3 = [("a", "b"), ("a", "c"), ("b", "c")]


def make_tree(root: Path) -> None:
    """Nested dirs, an empty dir, 50 small files, a 20 MB file, a symlink, 0600/0755."""
    (root / "docs" / "deep" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    for i in range(50):
        sub = root / "docs" if i % 3 == 0 else root / "docs" / "deep" if i % 3 == 1 \
            else root / "docs" / "deep" / "deeper"
        (sub / f"small-{i:02}.txt").write_bytes(f"file {i}\n".encode() * (i + 1))
    make_random_file(root / "big.bin", 20 * MB, seed=b"big")
    (root / "secret.txt").write_text("for my eyes only\n")
    os.chmod(root / "secret.txt", 0o600)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    os.symlink("docs/small-00.txt", root / "link-to-first")


def files_and_bytes(root: Path) -> tuple[int, int]:
    n = size = 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            n += 1
            size += path.stat().st_size
    return n, size


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and not p.is_symlink()}


def put_file(path: Path, text: str, mtime_ns: int, staging: Path) -> None:
    """Write ``path`` in one rename with its mtime already set (via ``staging``, outside
    every folder): the file watcher never sees a half-made edit."""
    staging.mkdir(exist_ok=True)
    tmp = staging / path.name
    tmp.write_text(text)
    os.utime(tmp, ns=(mtime_ns, mtime_ns))
    os.replace(tmp, path)


def arrival(root: Path) -> tuple[int, int]:
    """(finished ``part-*`` files, bytes in daemon temp files) directly in ``root``."""
    done = partial = 0
    for entry in os.scandir(root):
        if entry.name.startswith("part-"):
            done += 1
        elif entry.name.endswith(".tmp"):
            with contextlib.suppress(FileNotFoundError):  # renamed meanwhile
                partial += entry.stat(follow_symlinks=False).st_size
    return done, partial


def conflict_copies(root: Path) -> list[Path]:
    return sorted(root.rglob("*.sync-conflict-*"))


def changes_from(node: Node, name: str) -> int:
    """How many times ``node`` logged new changes of folder ``name`` from a peer."""
    return len(re.findall(rf"folder {re.escape(name)}: \d+ new change\(s\) from",
                          full_log(node)))


# -------------------------------------------------------------------------- tests


def test_initial_sync_to_a_late_joiner(tmp_path: Path) -> None:
    started = time.monotonic()
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    fa.mkdir()
    fb.mkdir()
    make_tree(fa)
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        a_id = a.device_id()
        share(a, "pics", fa)
        wait_idle(a, "pics", 20)
        # B has not joined: it sees the name offered, pending
        pending = wait_for(lambda: next((f for f in folders(b) if f["name"] == "pics"
                                         and f["state"] == "pending"), None),
                           10, "B to list pics as pending")
        assert pending["path"] is None and a_id in pending["peers"]
        share(b, "pics", fb)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "B to get A's tree")
        info = wait_for(lambda: (lambda f: f if f["state"] == "idle" and f["in_sync"]
                                 and f["files"] == 53 else None)(folder(b, "pics")),
                        10, "B idle and in sync")
        assert a_id in info["peers"]
        assert (info["files"], info["bytes"]) == files_and_bytes(fa)
        assert info["need_bytes"] == 0 and info["mode"] == "send-receive"
        snap = tree_snapshot(fb)
        assert snap["empty"][0] == "dir"
        assert snap["link-to-first"] == ("link", 0, "docs/small-00.txt")
        assert snap["secret.txt"][1] == 0o600 and snap["run.sh"][1] == 0o755
        assert mtimes(fa) == mtimes(fb)
        assert not temp_files(fb)
    print(f"initial sync: {time.monotonic() - started:.1f} s")


def test_both_directions(tmp_path: Path) -> None:
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    fa.mkdir()
    fb.mkdir()
    (fa / "notes").mkdir()
    (fa / "notes" / "one.txt").write_text("one\n")
    (fa / "notes" / "two.txt").write_text("two\n")
    (fa / "gone.txt").write_text("to be deleted\n")
    make_random_file(fa / "movie.bin", 20 * MB, seed=b"movie")
    movie_id = file_blake3(fa / "movie.bin")
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "f", fa)
        share(b, "f", fb)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "the first sync")
        assert f"fetched {movie_id}" in full_log(b)

        # A edits, B deletes, A makes an empty dir, B changes a mode
        put_file(fa / "notes" / "one.txt", "one, edited on A\n", 1_600_000_000_123_456_789,
                 tmp_path / "staging")
        (fb / "gone.txt").unlink()
        (fa / "new-empty").mkdir()
        os.chmod(fb / "notes" / "two.txt", 0o640)
        rescan(a, b)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "edits both ways")
        assert not (fa / "gone.txt").exists()
        assert (fb / "new-empty").is_dir()
        assert (fa / "notes" / "two.txt").stat().st_mode & 0o777 == 0o640
        assert (fb / "notes" / "one.txt").stat().st_mtime_ns == 1_600_000_000_123_456_789
        assert mtimes(fa) == mtimes(fb)

        # B renames the big file and a small one: A fetches no new data for them
        (fb / "movie.bin").rename(fb / "notes" / "movie-renamed.bin")
        (fb / "notes" / "two.txt").rename(fb / "two-moved.txt")
        rescan(b)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "renames")
        assert (fa / "notes" / "movie-renamed.bin").is_file()
        assert not (fa / "movie.bin").exists()
        assert f"fetched {movie_id}" not in full_log(a)
        assert mtimes(fa) == mtimes(fb)
        assert not temp_files(fa) and not temp_files(fb)


def test_receiver_logs_no_changes_of_its_own(tmp_path: Path) -> None:
    """Receiving files is not changing them: B, which edits nothing, must never send
    A a change of its own (A's log shows none from B) after a sync that takes a while."""
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    fa.mkdir()
    fb.mkdir()
    for i in range(40):
        (fa / f"small-{i:02}.txt").write_text(f"{i}\n")
    make_random_file(fa / "big.bin", 20 * MB, seed=b"big")
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "f", fa)
        wait_idle(a, "f", 20)
        share(b, "f", fb)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "the first sync")
        rescan(a, b)
        wait_idle(b, "f", 10)
        wait_idle(a, "f", 10)
        b_short = b.device_id().split("-")[0]
        assert f"new change(s) from {b_short}" not in full_log(a), b.log()


def test_conflict_keeps_the_losers_copy_everywhere(tmp_path: Path) -> None:
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    fa.mkdir()
    fb.mkdir()
    (fa / "plan.txt").write_text("original\n")
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "f", fa)
        share(b, "f", fb)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "the first sync")
        # both edit before either syncs; B's edit is later, so B's wins everywhere
        put_file(fa / "plan.txt", "A's version\n", 1_700_000_000_000_000_000, tmp_path / "staging")
        put_file(fb / "plan.txt", "B's version, longer\n", 1_700_000_100_000_000_000,
                 tmp_path / "staging")
        rescan(a, b)

        def settled() -> bool:
            return all((r / "plan.txt").read_text() == "B's version, longer\n"
                       and len(conflict_copies(r)) == 1 for r in (fa, fb)) \
                and converged(fa, fb)

        try:
            wait_for(settled, SYNC_TIMEOUT, "the conflict to settle", poke=(a, b))
        except AssertionError as exc:
            raise AssertionError(f"{exc}: A {tree_snapshot(fa)} B {tree_snapshot(fb)}\n"
                                 f"{a.log()}\n{b.log()}") from None
        for root in (fa, fb):
            (copy,) = conflict_copies(root)
            assert copy.read_text() == "A's version\n"
            assert re.fullmatch(r"plan\.sync-conflict-\d{8}-\d{6}-[A-Za-z0-9]+\.txt",
                                copy.name), copy.name
            assert copy.name.startswith("plan.sync-conflict-20231114-")  # A's mtime, UTC
        # A, whose version lost the name, told its event stream (and its log) so.
        conflicts = popen(a.home, "events", "--json", "--since", "0", "--type", "conflict")
        try:
            event = json.loads(conflicts.until(lambda s: "plan.txt" in s, "the conflict"))
        finally:
            conflicts.close()
        assert event["data"] == {"folder": "f", "path": "plan.txt",
                                 "conflict_path": conflict_copies(fa)[0].name,
                                 "device_id": a.device_id()}
        assert f"conflict on plan.txt; this device's version kept as " \
               f"{conflict_copies(fa)[0].name}" in full_log(a)


def test_ignored_paths_stay_home(tmp_path: Path) -> None:
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    fa.mkdir()
    fb.mkdir()
    (fa / ".dizzyignore").write_text("*.tmp\nbuild/\n")
    (fa / "keep.txt").write_text("keep\n")
    (fa / "scratch.tmp").write_text("scratch\n")
    (fa / "sub").mkdir()
    (fa / "sub" / "deep.tmp").write_text("scratch\n")
    (fa / "build" / "out").mkdir(parents=True)
    (fa / "build" / "out" / "a.o").write_bytes(b"\0" * 100)
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "f", fa)
        share(b, "f", fb)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "the first sync",
                       honour_ignores=True)
        # ignored files made later stay home too; the ignore file itself syncs
        (fa / "later.tmp").write_text("x")
        (fa / "build" / "late.o").write_text("x")
        (fa / "later.txt").write_text("synced\n")
        rescan(a)
        wait_for(lambda: (fb / "later.txt").exists(), SYNC_TIMEOUT, "later.txt", poke=(a, b))
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "the later sync", honour_ignores=True)
        assert (fb / ".dizzyignore").read_text() == "*.tmp\nbuild/\n"
        assert sorted(tree_snapshot(fb)) == [".dizzyignore", "keep.txt", "later.txt", "sub"]


def test_three_devices(tmp_path: Path) -> None:
    roots = {n: tmp_path / f"f{n}" for n in "abc"}
    for r in roots.values():
        r.mkdir()
    (roots["a"] / "shared.txt").write_text("from A\n")
    with cluster(tmp_path, ["a", "b", "c"], ALL3) as nodes:
        for n, node in nodes.items():
            share(node, "f", roots[n])
        everyone = tuple(nodes.values())
        wait_converged(list(roots.values()), everyone, SYNC_TIMEOUT, "the first sync")
        (roots["c"] / "from-c").mkdir()
        (roots["c"] / "from-c" / "hello.txt").write_text("hello from C\n")
        (roots["c"] / "shared.txt").write_text("C edited this\n")
        rescan(nodes["c"])
        wait_converged(list(roots.values()), everyone, SYNC_TIMEOUT, "C's change everywhere")
        for n in "ab":
            assert (roots[n] / "from-c" / "hello.txt").read_text() == "hello from C\n"
            assert (roots[n] / "shared.txt").read_text() == "C edited this\n"
        ids = {n: node.device_id() for n, node in nodes.items()}
        info = wait_idle(nodes["c"], "f", 10)
        assert {ids["a"], ids["b"]} <= set(info["peers"])


def test_first_sharer_lists_a_late_joiner_as_peer(tmp_path: Path) -> None:
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    fa.mkdir()
    fb.mkdir()
    (fa / "x.txt").write_text("x\n")
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "f", fa)
        wait_idle(a, "f", 20)
        share(b, "f", fb)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "the first sync")
        b_id = b.device_id()
        wait_for(lambda: b_id in folder(a, "f")["peers"], 10, "A to list B as a peer",
                 poke=(a, b))


def test_receive_only_and_send_only(tmp_path: Path) -> None:
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    ga, gb = tmp_path / "ga", tmp_path / "gb"  # a plain send-receive folder: a witness
    for d in (fa, fb, ga, gb):
        d.mkdir()
    (fa / "doc.txt").write_text("A's text\n")
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "ro", fa)
        share(b, "ro", fb, "receive-only")
        share(a, "w", ga)
        share(b, "w", gb)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "the first sync")
        assert folder(b, "ro")["mode"] == "receive-only"

        # B edits its receive-only copy: A never sees it (the witness change does arrive)
        (fb / "doc.txt").write_text("B's edit\n")
        (fb / "b-only.txt").write_text("made on B\n")
        (gb / "witness.txt").write_text("1\n")
        rescan(b)
        wait_for(lambda: (ga / "witness.txt").exists(), SYNC_TIMEOUT, "the witness on A",
                 poke=(a, b))
        rescan(b, name="ro")
        wait_idle(b, "ro", 10, in_sync=False)
        assert (fa / "doc.txt").read_text() == "A's text\n"
        assert not (fa / "b-only.txt").exists()

        # A changes it: B is brought back to A's content
        (fa / "doc.txt").write_text("A's second text\n")
        rescan(a)
        wait_for(lambda: (fb / "doc.txt").read_text() == "A's second text\n", SYNC_TIMEOUT,
                 "B to follow A again", poke=(a, b))
        assert (fa / "doc.txt").read_text() == "A's second text\n"

        # send-only on A (a second folder): B's edits are not applied on A
        sa, sb = tmp_path / "sa", tmp_path / "sb"
        sa.mkdir()
        sb.mkdir()
        (sa / "master.txt").write_text("A is the source\n")
        share(a, "so", sa, "send-only")
        share(b, "so", sb)
        wait_converged([sa, sb], (a, b), SYNC_TIMEOUT, "the send-only first sync")
        before = changes_from(a, "so")
        (sb / "master.txt").write_text("B tries to change it\n")
        (sb / "from-b.txt").write_text("new on B\n")
        rescan(b)
        wait_for(lambda: changes_from(a, "so") > before, SYNC_TIMEOUT,
                 "A to receive B's log", poke=(a, b))
        # A has B's log; give its apply loop every chance, then check nothing moved
        rescan(a)
        wait_idle(a, "so", 10, in_sync=False)
        assert (sa / "master.txt").read_text() == "A is the source\n"
        assert not (sa / "from-b.txt").exists()


@pytest.mark.parametrize("victim", ["receiver", "sender"])
def test_kill_9_mid_sync(tmp_path: Path, victim: str) -> None:
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    fa.mkdir()
    fb.mkdir()
    for i in range(30):
        make_random_file(fa / f"part-{i:02}.bin", 2 * MB, seed=f"part{i}".encode())
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "f", fa)
        wait_idle(a, "f", 20)
        # shared through the control socket (no CLI start-up), then watched closely
        Client(b.home).call("share", {"name": "f", "path": str(fb), "mode": "send-receive"})
        # Files are fetched in parallel into temp files and renamed when whole: "half
        # arrived" is half the bytes written (or, on a fast machine, some files done).
        deadline = time.monotonic() + SYNC_TIMEOUT
        while True:
            assert time.monotonic() < deadline, "B received too little in time"
            done, partial = arrival(fb)
            if done * 2 * MB + partial >= 30 * MB or done:
                break
        killed = a if victim == "sender" else b
        assert killed.daemon is not None
        killed.daemon.kill9()
        print(f"killed the {victim} with {done}/30 files and {partial / MB:.1f} MB in "
              f"{len(temp_files(fb))} temp files on B")
        killed.start(*killed.extra)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT + 15, "convergence after kill -9")
        assert not temp_files(fb), temp_files(fb)
        assert not temp_files(fa)


def test_vanished_folder_pauses_and_peers_keep_their_files(tmp_path: Path) -> None:
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    ga, gb = tmp_path / "ga", tmp_path / "gb"  # witness folder
    for d in (fa, fb, ga, gb):
        d.mkdir()
    for i in range(5):
        (fa / f"f{i}.txt").write_text(f"{i}\n")
    (fa / "d").mkdir()
    (fa / "d" / "x.txt").write_text("x\n")
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "f", fa)
        share(b, "f", fb)
        share(a, "w", ga)
        share(b, "w", gb)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "the first sync")
        before = tree_snapshot(fb)

        fa.rename(tmp_path / "fa-away")
        rescan(a)
        wait_for(lambda: folder(a, "f")["state"] == "error", 10, "A's folder to pause",
                 poke=(a,))
        # a later change in another folder reaches B: the vanished one deleted nothing
        (ga / "witness.txt").write_text("w\n")
        rescan(a, b)
        wait_for(lambda: (gb / "witness.txt").exists(), SYNC_TIMEOUT, "the witness on B",
                 poke=(a, b))
        rescan(a, b)
        wait_idle(b, "f", 10, in_sync=False)
        assert tree_snapshot(fb) == before
        assert folder(a, "f")["state"] == "error"

        (tmp_path / "fa-away").rename(fa)
        rescan(a)
        wait_for(lambda: folder(a, "f")["state"] == "idle", 10, "A's folder to resume",
                 poke=(a,))
        (fa / "after.txt").write_text("after the restore\n")
        (fb / "f0.txt").write_text("B edits after the restore\n")
        rescan(a, b)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "sync after the restore")
        assert (fb / "after.txt").read_text() == "after the restore\n"
        assert (fa / "f0.txt").read_text() == "B edits after the restore\n"
        assert (fa / "d" / "x.txt").read_text() == "x\n"
        # However many rescans hit the paused folder: one event (and log line) going
        # into the error, one coming out of it.
        states = [(e["data"]["state"], e["data"]["previous"]) for e in recent_events(a.home)
                  if e["type"] == "folder.state" and e["data"]["folder"] == "f"]
        errors = [i for i, (state, _) in enumerate(states) if state == "error"]
        assert len(errors) == 1, states
        assert states[errors[0] + 1] == ("idle", "error"), states
        log = full_log(a)
        assert log.count("folder f paused: ") == 1 and \
            log.count("folder f is idle (no longer in error)") == 1, log[-3000:]


def test_unshare_stops_syncing_and_deletes_nothing(tmp_path: Path) -> None:
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    ga, gb = tmp_path / "ga", tmp_path / "gb"  # witness folder
    for d in (fa, fb, ga, gb):
        d.mkdir()
    (fa / "one.txt").write_text("one\n")
    (fa / "sub").mkdir()
    (fa / "sub" / "two.txt").write_text("two\n")
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        share(a, "f", fa)
        share(b, "f", fb)
        share(a, "w", ga)
        share(b, "w", gb)
        wait_converged([fa, fb], (a, b), SYNC_TIMEOUT, "the first sync")
        before = tree_snapshot(fb)
        proc = b.cli("unshare", "f")
        assert proc.returncode == 0, proc.stderr
        assert tree_snapshot(fb) == before
        assert all(f["name"] != "f" or f["state"] == "pending" for f in folders(b))

        (fa / "one.txt").write_text("changed on A after B left\n")
        (fa / "new.txt").write_text("new on A\n")
        (fa / "sub" / "two.txt").unlink()
        (ga / "witness.txt").write_text("w\n")
        rescan(a)
        wait_for(lambda: (gb / "witness.txt").exists(), SYNC_TIMEOUT, "the witness on B",
                 poke=(a, b))
        rescan(a, b)
        wait_idle(a, "f", 10, in_sync=False)
        assert tree_snapshot(fb) == before
