"""The SQLite index: WAL mode, and indexes made by an older dizzy are upgraded."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dizzy.daemon.index import Index


def test_wal_mode(tmp_path: Path) -> None:
    index = Index.open(tmp_path / "index.sqlite")
    mode = index.call_sync(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
    assert mode == "wal"
    index.close()


def test_old_partial_chunks_table_gains_synced_column(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE partial_chunks (object_id TEXT NOT NULL, idx INTEGER NOT NULL, "
                 "PRIMARY KEY (object_id, idx)) WITHOUT ROWID")
    conn.execute("INSERT INTO partial_chunks VALUES ('x', 1)")
    conn.commit()
    conn.close()
    index = Index.open(path)
    rows = index.call_sync(lambda c: c.execute("SELECT idx, synced FROM partial_chunks").fetchall())
    assert rows == [(1, 0)]
    index.close()
