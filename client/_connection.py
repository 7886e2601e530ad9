"""A blocking connection to the local daemon's control socket (no trio needed)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dizzy.protocol.control import (
    Data,
    ErrorReply,
    Message,
    Notice,
    Progress,
    Reply,
    Request,
    parse_message,
)
from dizzy.protocol.errors import DaemonNotRunning, DizzyError, error_from_code
from dizzy.protocol.framing import CONTROL_MAX_FRAME, EOF, NEED_DATA, FrameDecoder, encode_frame

#: large reads: ``cat`` streams megabytes per message
RECEIVE_SIZE = 1024 * 1024

ProgressCallback = Callable[[int, "int | None", str], None]


class ControlConnection:
    def __init__(self, socket_path: Path, timeout: float | None = None) -> None:
        self.socket_path = socket_path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise DaemonNotRunning(
                f"the dizzy daemon is not running (no control socket at {socket_path}); "
                "start it with `dizzy daemon`"
            ) from exc
        except OSError as exc:
            sock.close()
            raise DaemonNotRunning(
                f"cannot reach the dizzy daemon at {socket_path}: {exc.strerror}"
            ) from exc
        self._sock = sock
        self._decoder = FrameDecoder(CONTROL_MAX_FRAME)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ControlConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_request(self, method: str, params: dict[str, Any]) -> None:
        self._sock.sendall(encode_frame(Request(method, params).to_wire()))

    def next_message(self) -> Message:
        while True:
            frame = self._decoder.next_frame()
            if frame is EOF:
                raise DizzyError("the dizzy daemon closed the connection (did it stop?)")
            if frame is not NEED_DATA:
                return parse_message(frame)
            try:
                data = self._sock.recv(RECEIVE_SIZE)
            except ConnectionResetError:
                data = b""
            self._decoder.receive_data(data)

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        on_data: Callable[[bytes], None] | None = None,
        on_notice: Callable[[Notice], None] | None = None,
    ) -> Any:
        """Send one request and wait for its reply, passing progress and data on."""
        self.send_request(method, params or {})
        while True:
            msg = self.next_message()
            if isinstance(msg, Reply):
                return msg.result
            if isinstance(msg, ErrorReply):
                raise error_from_code(msg.code, msg.message)
            if isinstance(msg, Progress):
                if on_progress is not None:
                    on_progress(msg.done, msg.total, msg.what)
            elif isinstance(msg, Notice):
                if on_notice is not None:
                    on_notice(msg)
            elif isinstance(msg, Data):
                if on_data is None:
                    raise DizzyError("the daemon sent data nobody asked for")
                on_data(msg.block)
            else:
                raise DizzyError(f"unexpected message from the daemon: {type(msg).__name__}")
