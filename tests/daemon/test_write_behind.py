"""Write-behind: objects are flushed in the background, and after a crash of the
machine (another boot ID) the ones that had not been flushed are checked, a damaged
one dropped instead of served.  Real SQLite, real files."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import blake3
import trio

from dizzy.daemon.index import Index
from dizzy.daemon.write_behind import WriteBehind, read_boot_id, record_unsynced


def _store_object(objects: Path, index: Index, data: bytes, boot: str) -> tuple[str, Path]:
    oid = blake3.blake3(data).hexdigest()
    path = objects / oid[:2] / oid
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)

    def add(conn: sqlite3.Connection) -> None:
        with conn:
            conn.execute("INSERT INTO objects (id, kind, size, created) "
                         "VALUES (?, 'blob', ?, ?)", (oid, len(data), time.time()))
            conn.execute("INSERT INTO outboards (object_id, data) VALUES (?, x'00')", (oid,))
            record_unsynced(conn, oid, boot)

    index.call_sync(add)
    return oid, path


def _rows(index: Index, table: str) -> int:
    return int(index.call_sync(lambda c: c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]))


def test_boot_id_is_read_on_linux() -> None:
    boot = read_boot_id()
    assert boot is not None and len(boot) >= 16


async def test_submitted_objects_are_flushed_and_forgotten(tmp_path: Path) -> None:
    index = Index.open(tmp_path / "index.sqlite")
    wb = WriteBehind(index, tmp_path / "objects", "boot-1")
    oid, path = _store_object(tmp_path / "objects", index, b"x" * 100_000, "boot-1")
    delivered = tmp_path / "out.bin"
    delivered.write_bytes(b"y")
    async with trio.open_nursery() as nursery:
        await nursery.start(wb.serve)
        wb.submit(path, oid)
        wb.submit(delivered)
        wb.submit(tmp_path / "vanished.bin")  # deleted meanwhile: skipped, no error
        with trio.fail_after(10):
            await wb.wait_idle()
        nursery.cancel_scope.cancel()
    assert _rows(index, "unsynced_objects") == 0
    index.close()


async def test_same_boot_restart_resubmits_without_checking(tmp_path: Path) -> None:
    """A killed daemon: the page cache kept the bytes, so even a file that no longer
    matches (it cannot happen; here it proves no check ran) is only flushed."""
    index = Index.open(tmp_path / "index.sqlite")
    _oid, path = _store_object(tmp_path / "objects", index, b"same boot" * 1000, "boot-1")
    with open(path, "r+b") as f:
        f.write(b"\x00")
    wb = WriteBehind(index, tmp_path / "objects", "boot-1")
    await wb.recover()
    async with trio.open_nursery() as nursery:
        await nursery.start(wb.serve)
        with trio.fail_after(10):
            await wb.wait_idle()
        nursery.cancel_scope.cancel()
    assert path.exists()
    assert _rows(index, "unsynced_objects") == 0
    assert _rows(index, "objects") == 1
    index.close()


async def test_after_a_crash_damaged_objects_are_dropped_intact_ones_kept(
        tmp_path: Path) -> None:
    index = Index.open(tmp_path / "index.sqlite")
    objects = tmp_path / "objects"
    good_id, good = _store_object(objects, index, os.urandom(300_000), "boot-1")
    bad_id, bad = _store_object(objects, index, os.urandom(300_000), "boot-1")
    gone_id, gone = _store_object(objects, index, os.urandom(1000), "boot-1")
    with open(bad, "r+b") as f:  # what a power cut can leave: zeros where data was
        f.seek(4096)
        f.write(b"\x00" * 4096)
    gone.unlink()
    wb = WriteBehind(index, objects, "boot-2")
    await wb.recover()
    assert good.exists() and not bad.exists()
    kept = index.call_sync(lambda c: {r[0] for r in c.execute("SELECT id FROM objects")})
    assert kept == {good_id}
    outboards = index.call_sync(
        lambda c: {r[0] for r in c.execute("SELECT object_id FROM outboards")})
    assert outboards == {good_id}
    assert _rows(index, "unsynced_objects") == 0
    assert bad_id not in kept and gone_id not in kept
    index.close()
