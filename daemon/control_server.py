"""The control socket: msgpack frames over a Unix socket, one request at a time.

A malformed or oversized frame drops that client only.  A client that hangs up while
its request runs (Ctrl-C on ``dizzy put``) cancels the request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Any

import trio

from dizzy.protocol.control import (
    CONTROL_VERSION,
    ErrorReply,
    Reply,
    Request,
    parse_message,
)
from dizzy.protocol.errors import DizzyError, ProtocolError, UsageError
from dizzy.protocol.framing import CONTROL_MAX_FRAME, EOF, NEED_DATA, FrameDecoder, encode_frame

from .api import Call, ControlApi

log = logging.getLogger("dizzy.control")

#: receive buffer per read; requests are small
RECEIVE_SIZE = 64 * 1024
#: a client must send its request this soon after connecting (stops idle slot hogs);
#: the environment variable lets a test of idle clients wait seconds, not a minute
REQUEST_TIMEOUT = float(os.environ.get("DIZZY_CONTROL_IDLE_TIMEOUT", "60"))
#: backlog of the listening socket
BACKLOG = 64


async def serve_control(
    api: ControlApi,
    path: Path,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The caller holds the home's daemon lock, so a socket file here is stale.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(BACKLOG)
    listener = trio.SocketListener(sock)
    task_status.started()
    try:
        async def handle(stream: trio.SocketStream) -> None:
            await _serve_client(api, stream)

        await trio.serve_listeners(handle, [listener])
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


class _ClientGone(Exception):
    pass


async def _serve_client(api: ControlApi, stream: trio.SocketStream) -> None:
    decoder = FrameDecoder(CONTROL_MAX_FRAME)
    send_lock = trio.Lock()

    async def send(msg: Any) -> None:
        async with send_lock:
            try:
                await stream.send_all(encode_frame(msg.to_wire()))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _ClientGone from exc

    try:
        while True:
            frame: Any = NEED_DATA
            with trio.move_on_after(REQUEST_TIMEOUT):
                while (frame := decoder.next_frame()) is NEED_DATA:
                    decoder.receive_data(await stream.receive_some(RECEIVE_SIZE))
            if frame is NEED_DATA:
                log.info("control client idle too long; closing")
                return
            if frame is EOF:
                return
            msg = parse_message(frame)
            if not isinstance(msg, Request):
                raise ProtocolError(f"expected a request, got {type(msg).__name__}")
            await _run_request(api, msg, stream, decoder, send)
    except ProtocolError as exc:
        log.warning("dropping control client: %s", exc)
    except (_ClientGone, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except Exception:
        # A bug handling one client drops that client only (serve_listeners would let
        # the exception stop the daemon); handlers' own errors are replies already.
        log.exception("control client failed; closing it")
    finally:
        await stream.aclose()


async def _run_request(
    api: ControlApi,
    request: Request,
    stream: trio.SocketStream,
    decoder: FrameDecoder,
    send: Any,
) -> None:
    call = Call(request.method, request.params, send)
    outcome: Reply | ErrorReply | None = None
    hung_up = False

    async def watch_hangup(scope: trio.CancelScope) -> None:
        # Only one request at a time: anything the client sends now is either EOF
        # (it went away) or a protocol violation; both end the request.
        nonlocal hung_up
        try:
            data = await stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if data:
            decoder.receive_data(data)
        hung_up = True
        call.cancel.set()
        scope.cancel()

    async def run_handler(scope: trio.CancelScope) -> None:
        nonlocal outcome
        try:
            if request.version != CONTROL_VERSION:
                raise UsageError(
                    f"control protocol {request.version} not supported (daemon speaks "
                    f"{CONTROL_VERSION}); are the CLI and daemon the same version?"
                )
            outcome = Reply(await api.lookup(request.method)(call))
        except _ClientGone:
            pass
        except DizzyError as exc:
            outcome = ErrorReply(exc.code, exc.message)
        except Exception as exc:
            log.exception("control method %s failed", request.method)
            outcome = ErrorReply("internal", f"internal error in {request.method}: {exc}")
        except BaseExceptionGroup as group:
            # Cancellation mixed with the work's own errors.
            cancelled, errors = group.split(trio.Cancelled)
            if errors is not None and not hung_up:
                log.error("control method %s failed", request.method, exc_info=errors)
                outcome = ErrorReply("internal", f"internal error in {request.method}")
            if cancelled is not None and not hung_up:
                raise cancelled from None  # the daemon is shutting down
        finally:
            scope.cancel()

    # Both tasks catch their own errors, so nothing but cancellation leaves here.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_hangup, nursery.cancel_scope)
        nursery.start_soon(run_handler, nursery.cancel_scope)
    if hung_up:
        if decoder.buffered:
            raise ProtocolError("client sent data while a request was running")
        raise _ClientGone
    if outcome is None:
        raise _ClientGone  # the handler's sends found the client gone
    await send(outcome)
