"""Fetching objects by hash from paired peers, between real daemon processes on loopback.

Every daemon runs with ``--no-mdns`` on 127.0.0.1 and is stopped in a ``finally`` (see
``fetch_helpers.cluster``).  Nothing sleeps a fixed time: waits poll against deadlines.

How much a peer served is measured from outside, without help from the daemon: the
growth of ``rchar`` in ``/proc/<pid>/io`` (a serving daemon ``pread``s every chunk it
sends from its object store).  ``wchar`` cannot be used: the daemon sends with
``send()``, which the kernel does not count there.  Each measurement starts only once
the serving daemon has chunked the object (its outboard is in its index), so the
reads of chunking do not count.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import blake3
import pytest

from dizzy.client import Client
from dizzy.protocol.ids import DeviceId
from tests.multi.fetch_helpers import (
    Node,
    cluster,
    fetched_rates,
    file_blake3,
    finish,
    full_log,
    has_outboard,
    io_counter,
    make_random_file,
    partial_rows,
    pid,
    popen_cli,
    put,
    quiet_counter,
    recorded_bytes,
    stored_path,
    wait_until,
)
from tests.multi.test_pairing_loopback import ONLINE_TIMEOUT, RECONNECT_TIMEOUT, one_error_line

MB = 1024 * 1024
#: a serving daemon chunks a freshly put object in the background this soon
CHUNKED_TIMEOUT = 20.0


def ok(proc: subprocess.CompletedProcess[bytes], *logs: Node) -> None:
    assert proc.returncode == 0, (proc.returncode, proc.stderr,
                                  *(n.log() for n in logs))


def chunked(node: Node, *object_ids: str) -> None:
    wait_until(lambda: all(has_outboard(node.home, o) for o in object_ids), CHUNKED_TIMEOUT,
               f"{node.name} to chunk {len(object_ids)} object(s)")


def rchar(node: Node) -> int:
    return io_counter(pid(node), "rchar")


def report_rates(node: Node) -> None:
    for line in fetched_rates(full_log(node)):
        print(f"\n  {node.name}: {line}")


def snapshot(root: Path) -> dict[str, tuple[str, int, bytes | str | None]]:
    """Every entry under ``root``: kind, permission bits, contents (or link target)."""
    out: dict[str, tuple[str, int, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), None)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return out


def make_tree(root: Path) -> None:
    root.mkdir()
    make_random_file(root / "big.bin", 3 * MB, seed=b"tree-big")
    (root / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "secret").write_bytes(b"private\n")
    (root / "secret").chmod(0o600)
    (root / "readonly.txt").write_bytes(b"read only\n" * 1000)
    (root / "readonly.txt").chmod(0o444)
    (root / "empty-file").write_bytes(b"")
    (root / "empty-file").chmod(0o640)
    (root / "link").symlink_to("big.bin")
    (root / "dangling").symlink_to("no/such/target")
    (root / "empty-dir").mkdir(mode=0o700)
    (root / "empty-dir").chmod(0o700)
    deep = root / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_bytes(b"deep down\n")
    (deep / "deep.txt").chmod(0o640)
    (root / "a" / "b" / "same-as-big.bin").write_bytes((root / "big.bin").read_bytes())
    (root / "a" / "b" / "link-up").symlink_to("../../run.sh")
    (root / "a").chmod(0o750)
    deep.chmod(0o711)
    root.chmod(0o755)  # the root's own mode is not part of a tree


def corrupt(path: Path, offsets: list[int], width: int = 16) -> None:
    """Flip ``width`` bytes at each offset of a stored (read-only) object file."""
    path.chmod(0o644)
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            for offset in offsets:
                old = os.pread(fd, width, offset)
                os.pwrite(fd, bytes(b ^ 0xFF for b in old), offset)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        path.chmod(0o444)


def wait_landed(node: Node, object_id: str, nbytes: int, getter: subprocess.Popen[bytes],
                timeout: float = 30.0) -> int:
    """Poll the receiver's partial file until more than ``nbytes`` of it are written."""
    partial = node.home / "partial" / object_id
    deadline = time.monotonic() + timeout
    while True:
        try:
            landed = partial.stat().st_blocks * 512  # the file is sparse until filled
        except FileNotFoundError:
            landed = 0
        if landed > nbytes:
            return landed
        if getter.poll() is not None:
            raise AssertionError(
                f"the get ended ({getter.returncode}) before {nbytes} bytes landed: "
                f"{getter.stderr.read() if getter.stderr else b''!r}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {nbytes} bytes landed after {timeout:g} s")
        time.sleep(0.01)


def wait_rows(node: Node, object_id: str, rows: int, getter: subprocess.Popen[bytes],
              timeout: float = 30.0) -> int:
    """Poll the receiver's durable chunk records until more than ``rows`` exist."""
    deadline = time.monotonic() + timeout
    while True:
        n = partial_rows(node.home, object_id)
        if n > rows:
            return n
        if getter.poll() is not None:
            raise AssertionError(
                f"the get ended ({getter.returncode}) before {rows} chunks were recorded: "
                f"{getter.stderr.read() if getter.stderr else b''!r}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {rows} chunk records after {timeout:g} s")
        time.sleep(0.01)


# -------------------------------------------------------------------------- tests


@pytest.mark.timeout(60)
def test_get_and_cat_from_one_peer(tmp_path: Path) -> None:
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        blob = make_random_file(tmp_path / "blob.bin", 20 * MB, seed=b"one-peer")
        fresh = make_random_file(tmp_path / "fresh.bin", 8 * MB + 12345, seed=b"fresh")
        tree = tmp_path / "tree"
        make_tree(tree)
        blob_id, fresh_id, tree_id = put(a, blob), put(a, fresh), put(a, tree)
        assert blob_id == file_blake3(blob)

        out = tmp_path / "out.bin"
        proc = b.cli("get", blob_id, "-o", str(out), timeout=40)
        ok(proc, a, b)
        assert (proc.stdout, proc.stderr) == (b"", b"")
        assert file_blake3(out) == blob_id
        assert out.stat().st_size == 20 * MB

        proc = b.cli("get", tree_id, "-o", str(tmp_path / "tree-out"), timeout=40)
        ok(proc, a, b)
        assert (proc.stdout, proc.stderr) == (b"", b"")
        got = snapshot(tmp_path / "tree-out")
        assert got == snapshot(tree)
        assert got["empty-dir"] == ("dir", 0o700, None)
        assert got["link"] == ("link", 0, "big.bin")
        assert got["a/b/c"][1] == 0o711

        # cat of an object B now has, then of one it never had (streamed as it arrives).
        for object_id, size in ((blob_id, 20 * MB), (fresh_id, 8 * MB + 12345)):
            proc = b.cli("cat", object_id, timeout=40)
            ok(proc, a, b)
            assert proc.stderr == b""
            assert len(proc.stdout) == size
            assert blake3.blake3(proc.stdout).hexdigest() == object_id
        assert "Traceback" not in full_log(b) + full_log(a)
        report_rates(b)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_get_from_two_peers_at_once(tmp_path: Path) -> None:
    size = 64 * MB
    with cluster(tmp_path, ["a", "b", "c"], [("a", "b"), ("c", "b")]) as nodes:
        a, b, c = nodes["a"], nodes["b"], nodes["c"]
        src = make_random_file(tmp_path / "src.bin", size, seed=b"two-peers")
        object_id = put(a, src)
        assert put(c, src) == object_id
        chunked(a, object_id)
        chunked(c, object_id)
        before = rchar(a), rchar(c)

        # Through the Python API this time, watching its progress reports.
        out = tmp_path / "out.bin"
        reports: list[tuple[int, int | None, str]] = []
        t0 = time.monotonic()
        got = Client(b.home).get(object_id, out, timeout=40.0,
                                 progress=lambda *r: reports.append(r))
        elapsed = time.monotonic() - t0
        assert got == out
        assert file_blake3(out) == object_id
        assert all(total == size and 0 <= done <= size for done, total, _ in reports), reports
        assert [r[0] for r in reports] == sorted(r[0] for r in reports), reports
        if elapsed > 0.5:  # progress is reported every 0.1 s
            assert reports, f"no progress reported in {elapsed:.2f} s"

        served_a, served_c = rchar(a) - before[0], rchar(c) - before[1]
        print(f"\n  served: A {served_a / MB:.1f} MiB, C {served_c / MB:.1f} MiB "
              f"of {size / MB:.0f} MiB")
        assert served_a + served_c >= size
        assert served_a > 0.1 * size, "A served (almost) nothing"
        assert served_c > 0.1 * size, "C served (almost) nothing"
        report_rates(b)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_receiver_killed_mid_transfer_resumes(tmp_path: Path) -> None:
    size = 200 * MB
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        a_id = a.device_id()
        src = make_random_file(tmp_path / "src.bin", size, seed=b"kill-receiver")
        object_id = put(a, src)
        chunked(a, object_id)
        before = rchar(a)
        out = tmp_path / "out.bin"

        getter = popen_cli(b.home, "get", object_id, "-o", str(out), "--timeout", "40")
        try:
            wait_rows(b, object_id, 20, getter)
            assert b.daemon is not None
            b.daemon.kill9()
            rc, _, err = finish(getter, 15)
        finally:
            if getter.poll() is None:
                getter.kill()
                getter.communicate()
        assert rc != 0, "the get succeeded although its daemon was killed"
        one_error_line((rc, err))
        assert not out.exists()
        recorded = partial_rows(b.home, object_id)
        assert recorded > 20
        kept = recorded_bytes(b.home, object_id)
        partial = b.home / "partial" / object_id
        assert partial.exists()
        # A may still be reading chunks B asked for before it died: let it finish.
        at_restart = quiet_counter(pid(a), "rchar")
        print(f"\n  killed B with {recorded} chunks ({kept / MB:.1f} MiB) recorded; "
              f"A had served {(at_restart - before) / MB:.1f} MiB")

        b.start()
        wait_until(lambda: b.sees_online(a_id), RECONNECT_TIMEOUT, "B to see A online again")
        proc = b.cli("get", object_id, "-o", str(out), "--wait", "--timeout", "40", timeout=50)
        ok(proc, a, b)
        assert (proc.stdout, proc.stderr) == (b"", b"")
        assert file_blake3(out) == object_id
        assert not partial.exists()
        assert partial_rows(b.home, object_id) == 0

        served = rchar(a) - before
        after = rchar(a) - at_restart
        print(f"  A served {after / MB:.1f} MiB after the restart, {served / MB:.1f} MiB in "
              f"all, for a {size / MB:.0f} MiB object")
        # Exactly the chunks not recorded were fetched again (plus A's few index reads).
        assert size - kept <= after <= size - kept + 4 * MB
        assert served < 1.75 * size, "the resume fetched (nearly) everything again"
        resumed = re.findall(rf"resuming {object_id}: (\d+) of (\d+) chunks already here",
                             full_log(b))
        assert resumed, full_log(b)[-3000:]
        assert int(resumed[0][0]) == recorded
        report_rates(b)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_resume_after_the_machine_restarted_checks_what_was_not_flushed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within one boot a killed receiver trusts every chunk it recorded (the page cache
    kept them); after a restart of the machine it checks the ones it had recorded but
    not yet flushed, and fetches again what a crash damaged."""
    size = 64 * MB
    monkeypatch.setenv("DIZZY_TEST_BOOT_ID", "boot-before-the-crash")
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        a_id = a.device_id()
        src = make_random_file(tmp_path / "src.bin", size, seed=b"machine-restart")
        object_id = put(a, src)
        chunked(a, object_id)
        out = tmp_path / "out.bin"
        getter = popen_cli(b.home, "get", object_id, "-o", str(out), "--timeout", "40")
        try:
            wait_rows(b, object_id, 10, getter)
            assert b.daemon is not None
            b.daemon.kill9()
            finish(getter, 15)
        finally:
            if getter.poll() is None:
                getter.kill()
                getter.communicate()
        # What a power cut can do to a chunk that was written but not yet flushed:
        # its record says unsynced, its bytes on disk are zeros.
        from dizzy.protocol.outboard import Outboard

        conn = sqlite3.connect(b.home / "index.sqlite")
        try:
            (data,) = conn.execute("SELECT outboard FROM partials WHERE object_id = ?",
                                   (object_id,)).fetchone()
            recorded = sorted(i for (i,) in conn.execute(
                "SELECT idx FROM partial_chunks WHERE object_id = ?", (object_id,)))
            damaged = recorded[len(recorded) // 2]
            with conn:
                conn.execute("UPDATE partial_chunks SET synced = 0 WHERE object_id = ? "
                             "AND idx = ?", (object_id, damaged))
        finally:
            conn.close()
        ref = Outboard.decode(bytes(data), expected_object_id=object_id).chunks[damaged]
        with open(b.home / "partial" / object_id, "r+b") as f:
            f.seek(ref.offset)
            f.write(b"\x00" * ref.length)

        monkeypatch.setenv("DIZZY_TEST_BOOT_ID", "boot-after-the-crash")
        b.start()
        wait_until(lambda: b.sees_online(a_id), RECONNECT_TIMEOUT, "B to see A online again")
        proc = b.cli("get", object_id, "-o", str(out), "--wait", "--timeout", "40", timeout=50)
        ok(proc, a, b)
        assert file_blake3(out) == object_id
        resumed = re.findall(rf"resuming {object_id}: (\d+) of (\d+) chunks already here",
                             full_log(b))
        assert resumed, full_log(b)[-3000:]
        assert int(resumed[-1][0]) == len(recorded) - 1, "the damaged chunk was trusted"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_corrupting_peer(tmp_path: Path) -> None:
    size = 32 * MB
    with cluster(tmp_path, ["a", "b", "c"], [("a", "b"), ("c", "b")]) as nodes:
        a, b, c = nodes["a"], nodes["b"], nodes["c"]
        a_short = DeviceId.parse(a.device_id()).short
        c_id = c.device_id()
        first = make_random_file(tmp_path / "first.bin", size, seed=b"corrupt-1")
        second = make_random_file(tmp_path / "second.bin", size, seed=b"corrupt-2")
        first_id, second_id = put(a, first), put(a, second)
        assert (put(c, first), put(c, second)) == (first_id, second_id)
        chunked(a, first_id, second_id)
        chunked(c, first_id, second_id)
        # A's copies go bad on disk after A chunked them: A now serves wrong bytes for
        # about every other chunk.
        offsets = list(range(MB // 2, size, 2 * MB))
        for object_id in (first_id, second_id):
            corrupt(stored_path(a, object_id), offsets)
            assert file_blake3(stored_path(a, object_id)) != object_id

        out = tmp_path / "first.out"
        proc = b.cli("get", first_id, "-o", str(out), "--timeout", "40", timeout=50)
        ok(proc, a, b, c)
        assert (proc.stdout, proc.stderr) == (b"", b"")
        assert file_blake3(out) == first_id
        log = full_log(b)
        assert re.search(rf"peer {a_short}\S* sent corrupt data for chunk \d+ of {first_id}",
                         log), log[-3000:]

        # Only the corrupt A left: the get fails, says so, and writes nothing at OUT.
        c.stop()
        wait_until(lambda: b.sees_offline(c_id), ONLINE_TIMEOUT, "B to see C offline")
        out = tmp_path / "second.out"
        proc = b.cli("get", second_id, "-o", str(out), "--timeout", "40", timeout=50)
        assert proc.returncode == 7, (proc.returncode, proc.stderr, b.log())
        assert "corrupt" in one_error_line(proc)
        assert proc.stdout == b""
        assert not out.exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith("second.out")] == []
        assert a.alive() and b.alive()
        assert "Traceback" not in full_log(b)
        report_rates(b)


@pytest.mark.timeout(60)
def test_nobody_has_it_then_wait(tmp_path: Path) -> None:
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        a_id = a.device_id()
        missing = blake3.blake3(b"nobody stores this").hexdigest()
        out = tmp_path / "out.bin"

        # A is online but does not have it.
        proc = b.cli("get", missing, "-o", str(out), timeout=30)
        assert proc.returncode == 3, (proc.stderr, b.log())
        line = one_error_line(proc)
        assert "nobody has" in line and missing in line, line
        assert not out.exists()
        proc = b.cli("cat", missing, timeout=30)
        assert proc.returncode == 3 and proc.stdout == b""
        one_error_line(proc)

        # --wait with a deadline and still nobody: timed out, promptly.
        t0 = time.monotonic()
        proc = b.cli("get", missing, "-o", str(out), "--timeout", "2", "--wait", timeout=30)
        elapsed = time.monotonic() - t0
        assert proc.returncode == 6, (proc.stderr, b.log())
        assert "timed out" in one_error_line(proc)
        assert elapsed < 5, elapsed
        assert not out.exists()
        t0 = time.monotonic()
        proc = b.cli("cat", missing, "--wait", "--timeout", "1.5", timeout=30)
        assert proc.returncode == 6 and proc.stdout == b"", (proc.stderr, b.log())
        assert "timed out" in one_error_line(proc)
        assert time.monotonic() - t0 < 5

        # A has it but is offline: without --wait, not found; with --wait, fetched as soon
        # as A comes back.
        src = make_random_file(tmp_path / "src.bin", 4 * MB + 7, seed=b"wait")
        object_id = put(a, src)
        a.stop()
        wait_until(lambda: b.sees_offline(a_id), ONLINE_TIMEOUT, "B to see A offline")
        proc = b.cli("get", object_id, "-o", str(out), timeout=30)
        assert proc.returncode == 3, (proc.stderr, b.log())
        assert "online" in one_error_line(proc)

        getter = popen_cli(b.home, "get", object_id, "-o", str(out), "--wait",
                           "--timeout", "40")
        try:
            wait_until(lambda: f"waiting for a device that has {object_id}" in full_log(b),
                       10, "B's get to wait for a source")
            assert getter.poll() is None
            a.start()
            rc, stdout, stderr = finish(getter, 45)
        finally:
            if getter.poll() is None:
                getter.kill()
                getter.communicate()
        assert rc == 0, (stderr, b.log())
        assert (stdout, stderr) == (b"", b"")
        assert file_blake3(out) == object_id


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_source_killed_mid_transfer_comes_back(tmp_path: Path) -> None:
    size = 200 * MB
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        a_id = a.device_id()
        src = make_random_file(tmp_path / "src.bin", size, seed=b"kill-source")
        object_id = put(a, src)
        chunked(a, object_id)
        out = tmp_path / "out.bin"

        getter = popen_cli(b.home, "get", object_id, "-o", str(out), "--wait",
                           "--timeout", "45")
        try:
            landed = wait_landed(b, object_id, size // 4, getter)
            assert a.daemon is not None
            a.daemon.signal(signal.SIGKILL)
            a.daemon.proc.wait(timeout=10)  # type: ignore[union-attr]
            wait_until(lambda: b.sees_offline(a_id), ONLINE_TIMEOUT, "B to see A gone")
            assert getter.poll() is None, "the get gave up when its only source vanished"
            print(f"\n  killed A with {landed / MB:.0f}+ MiB landed at B")
            a.start()
            rc, stdout, stderr = finish(getter, 50)
        finally:
            if getter.poll() is None:
                getter.kill()
                getter.communicate()
        assert rc == 0, (rc, stderr, b.log())
        assert (stdout, stderr) == (b"", b"")
        assert file_blake3(out) == object_id
        assert not (b.home / "partial" / object_id).exists()
        report_rates(b)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_get_o_joining_a_resumed_transfer_gets_the_file_itself(tmp_path: Path) -> None:
    """After a restart the receiver resumes an unfinished fetch on its own, with no
    destination.  A `get -o` for that object joins it, and the finished file is renamed
    to the output: it is not put in the store and then copied out a second time."""
    size = 64 * MB
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        a_id = a.device_id()
        src = make_random_file(tmp_path / "src.bin", size, seed=b"join-resumed")
        object_id = put(a, src)
        chunked(a, object_id)
        first = tmp_path / "first.bin"
        getter = popen_cli(b.home, "get", object_id, "-o", str(first), "--timeout", "40")
        try:
            wait_rows(b, object_id, 5, getter)
            assert b.daemon is not None
            b.daemon.kill9()
            finish(getter, 15)
        finally:
            if getter.poll() is None:
                getter.kill()
                getter.communicate()
        # With A away, B's resumed fetch and the new get both wait for a source: when
        # A is back one of them runs the transfer and the other joins it.
        assert a.daemon is not None
        a.daemon.stop()
        b.start()
        out = tmp_path / "out.bin"
        joiner = popen_cli(b.home, "get", object_id, "-o", str(out), "--wait",
                           "--timeout", "60")
        try:
            time.sleep(1.0)
            assert joiner.poll() is None, "the get did not wait for a source"
            a.start()
            wait_until(lambda: b.sees_online(a_id), RECONNECT_TIMEOUT, "B to see A again")
            rc, stdout, stderr = finish(joiner, 60)
        finally:
            if joiner.poll() is None:
                joiner.kill()
                joiner.communicate()
        assert rc == 0, (rc, stderr, b.log())
        assert (stdout, stderr) == (b"", b"")
        assert file_blake3(out) == object_id
        assert not stored_path(b, object_id).exists(), "fetched into the store, then copied"
        assert not (b.home / "partial" / object_id).exists()
        assert partial_rows(b.home, object_id) == 0
