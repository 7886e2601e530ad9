"""The SQLite index's tables.  Each ``CREATE`` is idempotent; the list only grows."""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1

STATEMENTS: list[str] = [
    # Objects in the local store: files (kind 'blob') and tree manifests ('tree').
    """CREATE TABLE IF NOT EXISTS objects (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('blob', 'tree')),
        size INTEGER NOT NULL,
        created REAL NOT NULL
    )""",
    # Chunk lists (outboards), computed lazily the first time they are needed.
    """CREATE TABLE IF NOT EXISTS outboards (
        object_id TEXT PRIMARY KEY,
        data BLOB NOT NULL
    )""",
    # Devices we trust (paired), with the certificate we pin.
    """CREATE TABLE IF NOT EXISTS peers (
        device_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        cert_pem BLOB NOT NULL,
        address TEXT,
        last_seen REAL,
        paired_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
]

STATEMENTS += [
    # Incoming objects being fetched: their outboard (so a restart needs no peer to
    # resume) and, in partial_chunks, every chunk already written and synced.
    """CREATE TABLE IF NOT EXISTS partials (
        object_id TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        outboard BLOB NOT NULL,
        started REAL NOT NULL
    )""",
    # synced = 0: written, in the page cache, maybe not on disk (survives a killed
    # daemon, perhaps not a power cut: checked by hash at resume); 1: fdatasync'ed.
    """CREATE TABLE IF NOT EXISTS partial_chunks (
        object_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        synced INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (object_id, idx)
    ) WITHOUT ROWID""",
]


STATEMENTS += [
    # Folders shared by name on this device.
    """CREATE TABLE IF NOT EXISTS folders (
        name TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        mode TEXT NOT NULL,
        created REAL NOT NULL
    )""",
    # The last scan of each folder: what every file was (size, mtime, inode) and its
    # content's ID, so unchanged files are never rehashed and can be served by hash.
    """CREATE TABLE IF NOT EXISTS folder_files (
        folder TEXT NOT NULL,
        path TEXT NOT NULL,
        kind TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        inode INTEGER NOT NULL,
        mode INTEGER NOT NULL,
        object_id TEXT,
        link_target TEXT,
        PRIMARY KEY (folder, path)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS folder_files_by_object ON folder_files (object_id)",
    # The version vector each local path's content corresponds to.
    """CREATE TABLE IF NOT EXISTS folder_versions (
        folder TEXT NOT NULL,
        path TEXT NOT NULL,
        version BLOB NOT NULL,
        PRIMARY KEY (folder, path)
    ) WITHOUT ROWID""",
    # Every device's signed change log of every folder (ours and replicated ones)...
    """CREATE TABLE IF NOT EXISTS log_entries (
        folder TEXT NOT NULL,
        device BLOB NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (folder, device, seq)
    ) WITHOUT ROWID""",
    # ...and the signed heads accepted for them (kept: relayed batches end at one).
    """CREATE TABLE IF NOT EXISTS log_heads (
        folder TEXT NOT NULL,
        device BLOB NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (folder, device, seq)
    ) WITHOUT ROWID""",
]


STATEMENTS += [
    # Objects renamed into the store before their bytes were fsynced (see
    # write_behind.py), with the boot they were written in.
    """CREATE TABLE IF NOT EXISTS unsynced_objects (
        object_id TEXT PRIMARY KEY,
        boot_id TEXT NOT NULL
    ) WITHOUT ROWID""",
]


#: columns added after a table first shipped: (table, column, definition)
ADDED_COLUMNS: list[tuple[str, str, str]] = [
    ("partial_chunks", "synced", "INTEGER NOT NULL DEFAULT 0"),
    # the shared folder a transfer was started for (NULL: a `get`); a folder's
    # partials are dropped once it no longer needs them (a newer version replaced it)
    ("partials", "folder", "TEXT"),
    # the boot its unsynced chunks were written in: the same boot at resume means a
    # killed daemon, not a crashed machine, and they are trusted without rehashing
    ("partials", "boot_id", "TEXT"),
]


def migrate(conn: Any) -> None:
    """Bring an index made by an older dizzy up to date (add what is missing)."""
    for table, column, definition in ADDED_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
