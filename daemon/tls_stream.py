"""A lean TLS stream for trio: ``ssl.SSLObject`` over memory BIOs on a socket stream.

Why not ``trio.SSLStream``: it returns at most one TLS record (16 KiB) per
``receive_some``, so a 1 GiB transfer costs ~65,000 trips through its retry machinery,
which made the receiver CPU-bound at ~120 MB/s.  Here one socket read of up to 256 KiB
is decrypted record by record in a tight loop and returned at once, and a large write
is encrypted in one call.  We speak TLS 1.3 only (no renegotiation), which keeps this
small: a handshake loop, read, write, and close.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

import trio

#: bytes asked of the socket per read: several TLS records decrypted per wake-up
TRANSPORT_RECEIVE_SIZE = 256 * 1024
#: default plaintext returned per receive_some
DEFAULT_RECEIVE_SIZE = 1024 * 1024


class TlsStream(trio.abc.Stream):
    def __init__(
        self,
        transport: trio.abc.Stream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.transport_stream = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side,
            server_hostname=server_hostname,
        )
        # Writes from send_all and from the reader (alerts, post-handshake messages)
        # share the socket: one at a time, in order.
        self._send_lock = trio.StrictFIFOLock()
        self._transport_eof = False
        self._closed = False

    # -- plumbing --------------------------------------------------------------------

    async def _flush(self) -> None:
        if self._outgoing.pending:
            async with self._send_lock:
                data = self._outgoing.read()
                if data:
                    await self.transport_stream.send_all(data)

    async def _fill(self) -> None:
        data = await self.transport_stream.receive_some(TRANSPORT_RECEIVE_SIZE)
        if data:
            self._incoming.write(data)
        else:
            self._transport_eof = True
            self._incoming.write_eof()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this TLS stream was closed")

    # -- the stream API --------------------------------------------------------------

    async def do_handshake(self) -> None:
        self._check_open()
        while True:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                if self._transport_eof:
                    raise trio.BrokenResourceError(
                        "connection closed during the TLS handshake"
                    ) from None
                await self._fill()
                continue
            except (ssl.SSLError, OSError) as exc:
                # Send our alert (e.g. "unknown CA") so the peer learns why.
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._flush()
                raise trio.BrokenResourceError(str(exc)) from exc
            await self._flush()
            return

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._ssl.getpeercert(binary_form)

    def version(self) -> str | None:
        return self._ssl.version()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self._check_open()
        limit = max_bytes or DEFAULT_RECEIVE_SIZE
        while True:
            parts: list[bytes] = []
            got = 0
            clean_eof = False
            try:
                while got < limit:
                    part = self._ssl.read(limit - got)
                    if not part:
                        clean_eof = True
                        break
                    parts.append(part)
                    got += len(part)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                clean_eof = True
            except (ssl.SSLError, OSError) as exc:
                if self._transport_eof and not parts:
                    return b""  # the peer vanished without close_notify: EOF all the same
                raise trio.BrokenResourceError(str(exc)) from exc
            if self._outgoing.pending:
                await self._flush()  # key updates and the like need an answer
            if parts:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if clean_eof or self._transport_eof:
                return b""
            await self._fill()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._check_open()
        async with self._send_lock:
            try:
                self._ssl.write(data)
            except (ssl.SSLError, OSError) as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            out = self._outgoing.read()
            if out:
                await self.transport_stream.send_all(out)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            with contextlib.suppress(ssl.SSLError, OSError):
                self._ssl.unwrap()  # queues our close_notify
            # Politeness only: skip it if a writer is stuck on the socket.
            if self._outgoing.pending and not self._send_lock.locked():
                async with self._send_lock:
                    data = self._outgoing.read()
                    with trio.move_on_after(1.0):
                        await self.transport_stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass
        finally:
            await self.transport_stream.aclose()
