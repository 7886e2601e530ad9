"""Helpers for fetch tests: a few paired loopback daemons, data files, measurements.

Every daemon runs with ``--no-mdns`` on 127.0.0.1 (through ``Node`` from the pairing
tests).  Nothing sleeps a fixed time: every wait polls against a deadline.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import blake3

from tests.daemons import dizzy_argv, run_cli
from tests.multi.test_pairing_loopback import ONLINE_TIMEOUT, Node, pair, wait_until

__all__ = [
    "Node",
    "cluster",
    "connect",
    "fetched_rates",
    "file_blake3",
    "finish",
    "full_log",
    "has_outboard",
    "io_counter",
    "make_random_file",
    "partial_rows",
    "pid",
    "popen_cli",
    "put",
    "quiet_counter",
    "recorded_bytes",
    "run_cli",
    "stored_path",
    "wait_until",
]

#: the CLI's own work (not counting transfers) finishes well inside this
CLI_TIMEOUT = 30.0


def make_random_file(path: Path, size: int, *, seed: bytes = b"") -> Path:
    """``size`` pseudo-random bytes, fast (SHAKE-256 stream), distinct per ``seed``."""
    block = 8 * 1024 * 1024
    with open(path, "wb") as f:
        written = 0
        counter = 0
        while written < size:
            n = min(block, size - written)
            f.write(hashlib.shake_256(seed + counter.to_bytes(8, "big")).digest(n))
            written += n
            counter += 1
    return path


def file_blake3(path: Path) -> str:
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb") as f:
        while block := f.read(8 * 1024 * 1024):
            hasher.update(block)
    return hasher.hexdigest()


def io_counter(pid: int, key: str) -> int:
    """One counter (``rchar``, ``wchar``...) from ``/proc/<pid>/io``."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name == key:
                return int(value)
    raise KeyError(key)


def partial_rows(home: Path, object_id: str | None = None) -> int:
    """Rows of ``partial_chunks`` in a home's index, read-only; 0 while unreadable."""
    db = home / "index.sqlite"
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)
    except sqlite3.Error:
        return 0
    try:
        if object_id is None:
            row = conn.execute("SELECT COUNT(*) FROM partial_chunks").fetchone()
        else:
            row = conn.execute("SELECT COUNT(*) FROM partial_chunks WHERE object_id = ?",
                               (object_id,)).fetchone()
        return int(row[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def has_outboard(home: Path, object_id: str) -> bool:
    """Whether the daemon of ``home`` has chunked ``object_id`` (its outboard is cached)."""
    try:
        conn = sqlite3.connect(f"file:{home / 'index.sqlite'}?mode=ro", uri=True, timeout=0.2)
    except sqlite3.Error:
        return False
    try:
        row = conn.execute("SELECT 1 FROM outboards WHERE object_id = ?",
                           (object_id,)).fetchone()
        return row is not None
    except sqlite3.Error:
        return False
    finally:
        conn.close()


def recorded_bytes(home: Path, object_id: str) -> int:
    """Bytes of the chunks a (stopped) receiver recorded as durably written."""
    from dizzy.protocol.outboard import Outboard

    conn = sqlite3.connect(f"file:{home / 'index.sqlite'}?mode=ro", uri=True, timeout=2.0)
    try:
        row = conn.execute("SELECT outboard FROM partials WHERE object_id = ?",
                           (object_id,)).fetchone()
        assert row is not None, f"no partial record of {object_id}"
        chunks = Outboard.decode(bytes(row[0]), expected_object_id=object_id).chunks
        return sum(chunks[i].length for (i,) in conn.execute(
            "SELECT idx FROM partial_chunks WHERE object_id = ?", (object_id,)))
    finally:
        conn.close()


def quiet_counter(pid: int, key: str, quiet: float = 0.3, timeout: float = 10.0) -> int:
    """An ``io_counter`` once it has stopped moving for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last = io_counter(pid, key)
    still_since = time.monotonic()
    while True:
        time.sleep(0.05)
        value = io_counter(pid, key)
        if value != last:
            last, still_since = value, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{key} of {pid} kept moving for {timeout:g} s")


def popen_cli(home: Path, *args: str) -> subprocess.Popen[bytes]:
    """A CLI command running in the background (stdout/stderr captured)."""
    return subprocess.Popen(dizzy_argv("--home", str(home), *args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, bytes, bytes]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"CLI still running after {timeout:g} s: {err!r}") from None
    return proc.returncode, out, err


def connect(a: Node, b: Node) -> None:
    """Pair ``a`` (inviting) with ``b`` (joining) and wait until both see the other."""
    a_id, b_id = a.device_id(), b.device_id()
    printed_by_a, printed_by_b, _ = pair(a, b)
    assert (printed_by_a, printed_by_b) == (b_id, a_id)
    wait_until(lambda: a.sees_online(b_id) and b.sees_online(a_id), ONLINE_TIMEOUT,
               f"{a.name} and {b.name} to list each other online")


@contextmanager
def cluster(tmp_path: Path, names: Sequence[str],
            links: Sequence[tuple[str, str]]) -> Iterator[dict[str, Node]]:
    """Start one daemon per name, pair each (inviter, joiner) of ``links``; stop all."""
    nodes = {name: Node(tmp_path / name, name) for name in names}
    try:
        for node in nodes.values():
            node.start()
        for inviter, joiner in links:
            connect(nodes[inviter], nodes[joiner])
        yield nodes
    finally:
        errors: list[AssertionError] = []
        for node in nodes.values():
            try:
                node.stop()
            except AssertionError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def put(node: Node, path: Path) -> str:
    proc = node.cli("put", str(path), timeout=CLI_TIMEOUT * 4)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode().strip()


def pid(node: Node) -> int:
    assert node.daemon is not None and node.daemon.proc is not None
    return node.daemon.proc.pid


def full_log(node: Node) -> str:
    """The node's whole daemon log (every run of it), not just the tail."""
    try:
        return (node.home.parent / f"{node.home.name}.daemon.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def fetched_rates(log: str) -> list[str]:
    return [line.split("dizzy.fetch: ", 1)[-1] for line in log.splitlines()
            if "dizzy.fetch" in line and "MB/s" in line]


def stored_path(node: Node, object_id: str) -> Path:
    return node.home / "objects" / object_id[:2] / object_id
