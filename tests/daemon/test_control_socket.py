"""Hostile or broken control clients lose their connection; the daemon keeps serving."""

from __future__ import annotations

import socket
import struct
import time

from dizzy.client import Client
from dizzy.protocol.framing import encode_frame
from tests.daemons import DaemonProcess


def raw_client(daemon: DaemonProcess) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(daemon.home / "control.sock"))
    return s


def assert_closed_by_daemon(s: socket.socket) -> None:
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    s.close()


def test_socket_mode_is_private(daemon: DaemonProcess) -> None:
    assert (daemon.home / "control.sock").stat().st_mode & 0o777 == 0o600
    assert (daemon.home / "device-key.pem").stat().st_mode & 0o777 == 0o600


def test_oversized_frame_drops_only_that_client(daemon: DaemonProcess) -> None:
    bad = raw_client(daemon)
    bad.sendall(struct.pack(">I", 0xFFFFFFF0))
    assert_closed_by_daemon(bad)
    assert Client(daemon.home).status()["pid"] == daemon.proc.pid  # type: ignore[union-attr]


def test_garbage_frame_drops_only_that_client(daemon: DaemonProcess) -> None:
    idle = raw_client(daemon)  # a second, well-behaved client stays connected
    bad = raw_client(daemon)
    bad.sendall(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    assert_closed_by_daemon(bad)
    bad2 = raw_client(daemon)
    bad2.sendall(encode_frame({"t": "ok", "r": 1}))  # a reply is not a request
    assert_closed_by_daemon(bad2)
    idle.sendall(encode_frame({"t": "req", "v": 1, "m": "status", "p": {}}))
    time.sleep(0.2)
    assert idle.recv(65536)  # answered
    idle.close()
    assert Client(daemon.home).status()


def test_unknown_method_is_an_error_reply(daemon: DaemonProcess) -> None:
    from dizzy.protocol.errors import UsageError

    try:
        Client(daemon.home).call("no-such-method")
    except UsageError as exc:
        assert "unknown control method" in str(exc)
    else:
        raise AssertionError("expected an error")
