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
from collections.abc import Iterable
from typing import Any

import trio

#: bytes asked of the socket per read: several TLS records decrypted per wake-up
TRANSPORT_RECEIVE_SIZE = 256 * 1024
#: default plaintext returned per receive_some
DEFAULT_RECEIVE_SIZE = 1024 * 1024
#: plaintext in one TLS record at most: asking ssl for more per read only makes it
#: allocate (and shrink) a larger buffer for the 16 KiB it returns
TLS_RECORD_MAX = 16 * 1024
#: plaintext encrypted per step of a large write (see send_parts)
ENCRYPT_STEP = 256 * 1024


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
        parts = await self.receive_parts(max_bytes)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def receive_parts(self, max_bytes: int | None = None) -> list[bytes]:
        """Like ``receive_some``, as the decrypted records themselves: a caller that
        buffers them anyway (a frame decoder) is spared joining them into one copy.
        ``[b""]`` at the end of the stream."""
        self._check_open()
        limit = max_bytes or DEFAULT_RECEIVE_SIZE
        while True:
            parts: list[bytes] = []
            got = 0
            clean_eof = False
            try:
                while got < limit:
                    part = self._ssl.read(min(limit - got, TLS_RECORD_MAX))
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
                    return [b""]  # the peer vanished without close_notify: EOF all the same
                raise trio.BrokenResourceError(str(exc)) from exc
            if self._outgoing.pending:
                await self._flush()  # key updates and the like need an answer
            if parts:
                return parts
            if clean_eof or self._transport_eof:
                return [b""]
            await self._fill()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.send_parts((data,))

    async def send_parts(self, parts: Iterable[bytes | bytearray | memoryview]) -> None:
        """Send the parts in order, as one write: no other write comes between them.

        A large part is encrypted ENCRYPT_STEP at a time and each step's records go
        to the socket at once, so the peer starts receiving while the rest is being
        encrypted, and the outgoing buffer never holds a whole chunk.
        """
        self._check_open()
        async with self._send_lock:
            for part in parts:
                view = memoryview(part)
                for start in range(0, len(view), ENCRYPT_STEP):
                    try:
                        self._ssl.write(view[start : start + ENCRYPT_STEP])
                    except (ssl.SSLError, OSError) as exc:
                        raise trio.BrokenResourceError(str(exc)) from exc
                    if self._outgoing.pending >= ENCRYPT_STEP:
                        await self.transport_stream.send_all(self._outgoing.read())
            if self._outgoing.pending:
                await self.transport_stream.send_all(self._outgoing.read())

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
