"""The SQLite index (WAL mode), owned by one thread.

SQLite connections must not be shared between threads, and trio must never block on
disk: every query runs as a function ``fn(conn, *args)`` on one dedicated worker
thread, reached from trio through ``trio.to_thread.run_sync`` with a limiter of one.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from dizzy.protocol.errors import StorageError

from . import schema

T = TypeVar("T")

#: sqlite3's result code for "database or disk is full"
_SQLITE_FULL = 13


class Index:
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        # One thread at a time touches the connection: the limiter serialises the
        # async callers, the lock guards the sync ones (startup, tests).
        self._limiter = trio.CapacityLimiter(1)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> Index:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across application crashes in WAL mode; a power cut may
        # lose the last commits, which a rescan or refetch recovers.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        with conn:
            for stmt in schema.STATEMENTS:
                conn.execute(stmt)
            schema.migrate(conn)
        return cls(conn, path)

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            try:
                return fn(self._conn, *args)
            except sqlite3.OperationalError as exc:
                # A full disk is the user's to fix, not a crash: callers handle
                # StorageError like any other "cannot write" (the write rolled back).
                if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
                    raise StorageError(f"no space left on device for the index "
                                       f"{self.path}") from exc
                raise

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(
            self.call_sync, fn, *args, limiter=self._limiter
        )

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            with conn:
                return conn.execute(sql, params).fetchall()

        return await self.call(run)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
