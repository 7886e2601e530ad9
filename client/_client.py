"""``Client``: the blocking Python API to the local daemon."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dizzy.daemon.home import Home, resolve_home
from dizzy.protocol.control import Data, ErrorReply, Notice, Reply
from dizzy.protocol.errors import DizzyError, error_from_code
from dizzy.protocol.ids import parse_object_id

from ._connection import ControlConnection, ProgressCallback


class Client:
    """Talks to the dizzy daemon of ``home`` (default: ``$DIZZY_HOME`` or the user's).

    Every method blocks until the daemon answers; errors are ``DizzyError``s.
    """

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Home(resolve_home(home))

    def _connect(self) -> ControlConnection:
        return ControlConnection(self.home.control_socket)

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        progress: ProgressCallback | None = None,
        notice: Callable[[Notice], None] | None = None,
    ) -> Any:
        with self._connect() as conn:
            return conn.call(method, params, on_progress=progress, on_notice=notice)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("status")
        return result

    def put(self, path: str | os.PathLike[str], *, progress: ProgressCallback | None = None) -> str:
        """Store a file or directory; returns its object or tree ID."""
        result = self.call("put", {"path": os.path.abspath(path)}, progress=progress)
        return str(result["id"])

    def put_info(
        self, path: str | os.PathLike[str], *, progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        info: dict[str, Any] = self.call("put", {"path": os.path.abspath(path)}, progress=progress)
        return info

    def get(
        self,
        object_id: str,
        dest: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
        wait: bool = False,
    ) -> Path:
        """Write object ``object_id`` to ``dest`` (a tree becomes a directory).

        If it is not here it is fetched from paired peers: ``wait`` waits for one that
        has it to come online; ``timeout`` (seconds) bounds the whole fetch.
        """
        oid = parse_object_id(object_id)
        params = {"id": oid, "dest": os.path.abspath(dest), **_fetch_params(timeout, wait)}
        result = self.call("get", params, progress=progress)
        return Path(result["path"])

    def peers(self) -> list[dict[str, Any]]:
        """Paired devices: ``id``, ``name``, ``online``, ``address``, ``last_seen``."""
        info: dict[str, Any] = self.call("peers")
        return list(info["paired"])

    def share(self, name: str, path: str | os.PathLike[str],
              mode: str = "send-receive") -> dict[str, Any]:
        """Share a folder under ``name``; returns it as ``folders()`` lists it."""
        info: dict[str, Any] = self.call(
            "share", {"name": name, "path": os.path.abspath(os.path.expanduser(path)),
                      "mode": mode})
        return info

    def unshare(self, name: str) -> None:
        self.call("unshare", {"name": name})

    def folders(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call("folders")
        return result

    def events(self, since: int | None = None,
               types: Iterable[str] | None = None) -> EventStream:
        """The daemon's events as they happen: dicts ``{"id", "time", "type", "data"}``.

        A blocking generator (no trio needed): ``for event in client.events(): ...``.
        ``since`` replays from an event id the daemon still holds (0: every one it
        holds); ``types`` keeps only those types.  Closing the generator (or leaving
        the loop) hangs up.  It ends with ``DizzyError`` if the daemon stops.
        """
        params: dict[str, Any] = {"since": since,
                                  "types": sorted(set(types)) if types is not None else None}
        return EventStream(self._connect(), params)

    def stat(self, object_id: str) -> dict[str, Any]:
        info: dict[str, Any] = self.call("stat", {"id": parse_object_id(object_id)})
        return info

    def open(self, object_id: str, *, timeout: float | None = None,
             wait: bool = False) -> io.BufferedReader:
        """A readable binary stream of the object's bytes, delivered as they come."""
        oid = parse_object_id(object_id)
        reader = _ObjectReader(self._connect(), oid, _fetch_params(timeout, wait))
        return io.BufferedReader(reader, buffer_size=1024 * 1024)


class EventStream:
    """The iterator ``Client.events()`` returns: blocking, one event dict per step.

    Subscribed before ``events()`` returns, so nothing published after that is missed.
    ``close()`` (or leaving a ``with`` block) hangs up, which ends the daemon's side.
    """

    def __init__(self, conn: ControlConnection, params: dict[str, Any]) -> None:
        self._conn = conn
        try:
            conn.send_request("events", params)
            while True:  # the daemon confirms the subscription before the first event
                msg = conn.next_message()
                if isinstance(msg, Notice) and msg.kind == "subscribed":
                    info = msg.value if isinstance(msg.value, dict) else {}
                    #: the daemon's newest event id when the stream began
                    self.last_id = int(info.get("last_id", 0))
                    break
                self._end(msg)
        except BaseException:
            conn.close()
            raise
        self.closed = False

    def _end(self, msg: Any) -> None:
        if isinstance(msg, ErrorReply):
            raise error_from_code(msg.code, msg.message)
        if isinstance(msg, Reply):
            raise DizzyError("the daemon ended the event stream")

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.closed:
            raise StopIteration
        try:
            while True:
                msg = self._conn.next_message()
                if isinstance(msg, Notice) and msg.kind == "event" and \
                        isinstance(msg.value, dict):
                    return msg.value
                self._end(msg)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._conn.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            self._conn.close()


def _fetch_params(timeout: float | None, wait: bool) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if timeout is not None:
        params["timeout"] = float(timeout)
    if wait:
        params["wait"] = True
    return params


class _ObjectReader(io.RawIOBase):
    """Pulls ``cat`` data messages from the daemon as the reader consumes them."""

    def __init__(self, conn: ControlConnection, object_id: str,
                 params: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._conn = conn
        self.object_id = object_id
        self._pending = memoryview(b"")
        self._done = False
        conn.send_request("cat", {"id": object_id, **(params or {})})
        # Surface "unknown ID" at open() rather than at the first read.
        self._fill()

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while not self._pending and not self._done:
            msg = self._conn.next_message()
            if isinstance(msg, Data):
                self._pending = memoryview(msg.block)
            elif isinstance(msg, Reply):
                self._done = True
            elif isinstance(msg, ErrorReply):
                self._done = True
                raise error_from_code(msg.code, msg.message)
            elif not isinstance(msg, Data):
                continue
            else:  # pragma: no cover
                raise DizzyError("unexpected message while reading")

    def readinto(self, buffer: Any) -> int:
        self._fill()
        if not self._pending:
            return 0
        out = memoryview(buffer).cast("B")
        n = min(len(out), len(self._pending))
        out[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._conn.close()
        super().close()
