"""The peer transport: TCP + preamble + mutually authenticated TLS 1.3 + PeerSession.

``dial_peer`` and ``accept_peer`` return a ``PeerConnection`` only once the peer proved
a paired identity in the TLS handshake and both sides exchanged ``Hello``; anything
else raises (``PeerRefused``, ``TimedOut``, ``IncompatibleVersion``...) after closing
that one connection.  Refusals are logged on logger ``dizzy.transport`` with the
device ID the dialer *claimed* in its preamble, so a user can see who tried.

A ``PeerConnection`` is used by one reader task (``receive``), any number of sender
tasks (``send`` serialises them), and one ``keepalive`` task that answers and sends
pings and cuts a connection that went silent.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
from collections.abc import Iterable
from typing import Final

import trio

from dizzy.protocol.errors import RemoteProtocolError, TimedOut
from dizzy.protocol.framing import EOF, NEED_DATA, Eof, NeedData
from dizzy.protocol.ids import DeviceId
from dizzy.protocol.peer_wire import (
    MAX_NAME_LEN,
    PREAMBLE_HEAD_SIZE,
    PREAMBLE_MAX_SIZE,
    Hello,
    PeerMessage,
    PeerRefused,
    PeerSession,
    Ping,
    Pong,
    Preamble,
    PreambleKind,
    Request,
    encode_preamble,
    parse_preamble,
)

from .identity import Identity
from .tls import make_client_context, make_server_context, peer_device_id
from .tls_stream import TlsStream

log = logging.getLogger("dizzy.transport")

#: Connect + preamble + TLS + Hello is a few round trips: milliseconds on a LAN.  Ten
#: seconds survives a congested Wi-Fi yet cuts silent or stalled connections before
#: they pile up on the listener.
HANDSHAKE_TIMEOUT: Final = 10.0
#: Bytes asked of the TLS stream per read: large, so a 1 MiB chunk takes few trips
#: through trio.  (TlsStream decrypts every record a socket read brought in one go.)
RECEIVE_SIZE: Final = 1024 * 1024
#: Politeness budget for close_notify; a peer that does not read gets a hard close.
CLOSE_TIMEOUT: Final = 2.0
#: A ping every 30 s costs nothing and keeps NAT and firewall state alive.
KEEPALIVE_INTERVAL: Final = 30.0
#: Three missed pings: long enough for a laptop's Wi-Fi hiccup, short enough that a
#: vanished peer's requests are retried elsewhere within a couple of minutes.
KEEPALIVE_TIMEOUT: Final = 90.0

# OpenSSL reasons meaning *we* did not accept the peer's certificate...
_WE_REFUSED: Final = frozenset(
    {"CERTIFICATE_VERIFY_FAILED", "PEER_DID_NOT_RETURN_A_CERTIFICATE", "NO_CERTIFICATE_RETURNED"}
)
# ...and alerts meaning the *peer* did not accept ours.
_THEY_REFUSED: Final = frozenset(
    {
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV1_ALERT_DECRYPT_ERROR",
    }
)

# trio does not flush the alert OpenSSL writes when a certificate fails verification,
# so a dialer that refuses *our* certificate usually just hangs up mid-handshake.
_HUNG_UP: Final = frozenset({"UNEXPECTED_EOF_WHILE_READING"})


def default_device_name() -> str:
    """The host name, made acceptable as a Hello name."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", "", socket.gethostname())[:MAX_NAME_LEN]


# ------------------------------------------------------------------------ listener


async def receive_preamble(
    stream: trio.abc.ReceiveStream, *, timeout: float = HANDSHAKE_TIMEOUT
) -> Preamble:
    """Read exactly one preamble from a fresh connection (never a byte more).

    Reading no further than the preamble leaves the TLS or pairing bytes that follow
    in the socket for whoever handles that kind.
    """
    buf = bytearray()
    try:
        with trio.fail_after(timeout):
            while True:
                parsed = parse_preamble(buf)
                if isinstance(parsed, Preamble):
                    return parsed
                target = PREAMBLE_HEAD_SIZE if len(buf) < PREAMBLE_HEAD_SIZE else PREAMBLE_MAX_SIZE
                data = await stream.receive_some(target - len(buf))
                if not data:
                    raise RemoteProtocolError("connection closed inside the preamble")
                buf += data
    except trio.TooSlowError:
        raise TimedOut(f"no connection preamble within {timeout:g} s") from None


async def accept_peer(
    stream: trio.abc.Stream,
    identity: Identity,
    trusted_cert_pems: Iterable[bytes],
    *,
    claimed: DeviceId | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
    name: str | None = None,
) -> PeerConnection:
    """Run the listener's side on a connection whose transport preamble was consumed.

    ``claimed`` is the device ID from that preamble: unauthenticated, used in logs and
    checked against the certificate.  Closes ``stream`` on any failure.
    """
    where = _address_of(stream)
    who = f"device {claimed}" if claimed is not None else "an unnamed device"
    pems = list(trusted_cert_pems)
    if not pems:
        log.warning("refused TLS from unpaired %s at %s: no devices are paired", who, where)
        await trio.aclose_forcefully(stream)
        raise PeerRefused(f"refused {who} at {where}: no devices are paired")
    ssl_stream = TlsStream(stream, make_server_context(identity, pems), server_side=True)
    try:
        with trio.fail_after(timeout):
            try:
                await ssl_stream.do_handshake()
            except trio.BrokenResourceError as exc:
                raise _refusal(exc, who, where, dialing=False) from exc
            device = peer_device_id(ssl_stream)
            if claimed is not None and device != claimed:
                log.warning(
                    "refused %s at %s: its certificate is device %s", who, where, device
                )
                raise PeerRefused(f"{where} claimed to be {claimed} but proved to be {device}")
            conn = PeerConnection(ssl_stream, device, PeerSession(name or default_device_name()),
                                  where)
            await conn._exchange_hello()
    except trio.TooSlowError:
        log.info("cut connection from %s at %s: no handshake within %g s", who, where, timeout)
        await trio.aclose_forcefully(ssl_stream)
        raise TimedOut(f"{who} at {where} did not finish the handshake in {timeout:g} s") from None
    except BaseException:
        await trio.aclose_forcefully(ssl_stream)
        raise
    log.debug("peer %s (%s) connected from %s", device, conn.peer_name, where)
    return conn


# -------------------------------------------------------------------------- dialer


async def dial_peer(
    host: str,
    port: int,
    identity: Identity,
    trusted_cert_pems: Iterable[bytes],
    expected: DeviceId | None = None,
    *,
    timeout: float = HANDSHAKE_TIMEOUT,
    name: str | None = None,
) -> PeerConnection:
    """Connect to a peer's listener and return the authenticated connection.

    ``expected``: the device we mean to reach (a known peer's address may now belong to
    someone else, also paired); ``None`` accepts any paired device.  Connection
    failures raise ``OSError``.
    """
    where = f"{host}:{port}"
    ctx = make_client_context(identity, trusted_cert_pems)  # refuses an empty trust list
    try:
        with trio.fail_after(timeout):
            tcp = await trio.open_tcp_stream(host, port)
            ssl_stream = TlsStream(tcp, ctx, server_side=False)
            try:
                await tcp.send_all(encode_preamble(PreambleKind.TRANSPORT, identity.device_id))
                try:
                    await ssl_stream.do_handshake()
                except trio.BrokenResourceError as exc:
                    raise _refusal(exc, f"device at {where}", where, dialing=True) from exc
                device = peer_device_id(ssl_stream)
                if expected is not None and device != expected:
                    log.warning("refused %s: expected device %s, found %s", where, expected, device)
                    raise PeerRefused(f"{where} is device {device}, not the expected {expected}")
                conn = PeerConnection(
                    ssl_stream, device, PeerSession(name or default_device_name()), where
                )
                await conn._exchange_hello()
            except BaseException:
                await trio.aclose_forcefully(ssl_stream)
                raise
    except trio.TooSlowError:
        raise TimedOut(f"connecting to peer at {where} took longer than {timeout:g} s") from None
    log.debug("connected to peer %s (%s) at %s", device, conn.peer_name, where)
    return conn


# ---------------------------------------------------------------------- connection


class PeerConnection:
    """An authenticated peer: one TLS stream driven by one ``PeerSession``."""

    def __init__(
        self,
        stream: TlsStream,
        device_id: DeviceId,
        session: PeerSession,
        address: str,
    ) -> None:
        self.device_id = device_id
        self.address = address
        self.session = session
        self._stream = stream
        # SSLStream forbids concurrent send_all, and session.send must number frames
        # in the order their bytes leave: one lock covers both.
        self._send_lock = trio.StrictFIFOLock()
        self._last_heard = trio.current_time()
        self._ping_token = 0
        self._pong_owed: int | None = None
        self._pong_wanted = trio.Event()
        self._cut_reason: str | None = None

    @property
    def peer_name(self) -> str:
        hello = self.session.peer_hello
        return hello.name if hello is not None else ""

    @property
    def peer_version(self) -> tuple[int, int] | None:
        hello = self.session.peer_hello
        return hello.version if hello is not None else None

    def new_request(self, kind: str, body: dict[str, object] | None = None) -> Request:
        """A ``Request`` with a fresh ID, ready for ``send``."""
        return Request(self.session.next_request_id(), kind, dict(body or {}))

    async def send(self, message: PeerMessage) -> None:
        """Send one message; ``LocalProtocolError`` if the session forbids it."""
        async with self._send_lock:
            await self._stream.send_parts(self.session.send_parts(message))

    async def receive(self) -> PeerMessage:
        """The next message from the peer (pings and pongs are handled here).

        Raises ``trio.EndOfChannel`` when the peer closed cleanly, ``TimedOut`` after
        ``keepalive`` cut a silent peer, ``RemoteProtocolError`` (connection closed)
        on garbage or oversized frames, and trio's stream errors otherwise.
        """
        while True:
            try:
                event = self.session.next_event()
            except RemoteProtocolError as exc:
                log.warning("closing connection to %s at %s: %s", self.device_id, self.address,
                            exc)
                await trio.aclose_forcefully(self._stream)
                raise
            if event is NEED_DATA:
                try:
                    parts = await self._stream.receive_parts(RECEIVE_SIZE)
                except trio.ClosedResourceError:
                    if self._cut_reason is not None:
                        raise TimedOut(self._cut_reason) from None
                    raise
                self._last_heard = trio.current_time()
                for part in parts:
                    self.session.receive_data(part)
            elif event is EOF:
                raise trio.EndOfChannel
            elif isinstance(event, Ping):
                self._pong_owed = event.token
                self._pong_wanted.set()
            elif not isinstance(event, (Pong, NeedData, Eof)):
                # (a Pong only proves liveness, which _last_heard already recorded)
                return event

    def __aiter__(self) -> PeerConnection:
        return self

    async def __anext__(self) -> PeerMessage:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def keepalive(
        self, interval: float = KEEPALIVE_INTERVAL, timeout: float = KEEPALIVE_TIMEOUT
    ) -> None:
        """Ping every ``interval``, answer the peer's pings, and cut the connection once
        nothing was heard for ``timeout`` (or a ping could not be written in that
        long).  Returns after cutting; the reader's ``receive`` then raises ``TimedOut``.

        Pongs are sent from here, not from ``receive``, so the reader never blocks on a
        send: two peers both stuck writing to each other would never read again.
        """
        next_ping = trio.current_time() + interval
        while True:
            with trio.move_on_at(min(next_ping, self._last_heard + timeout)):
                await self._pong_wanted.wait()
            now = trio.current_time()
            if now - self._last_heard >= timeout:
                return await self._cut(f"heard nothing for {now - self._last_heard:.1f} s")
            outgoing: PeerMessage | None = None
            if self._pong_owed is not None:
                outgoing = Pong(self._pong_owed)
                self._pong_owed = None
                self._pong_wanted = trio.Event()
            elif now >= next_ping:
                self._ping_token += 1
                outgoing = Ping(self._ping_token)
                next_ping = now + interval
            if outgoing is not None:
                with trio.move_on_after(timeout) as scope:
                    await self.send(outgoing)
                if scope.cancelled_caught:
                    return await self._cut(f"could not write for {timeout:g} s")

    async def _cut(self, reason: str) -> None:
        self._cut_reason = f"peer {self.device_id} at {self.address}: {reason}"
        log.warning("closing connection to %s", self._cut_reason)
        await trio.aclose_forcefully(self._stream)

    async def aclose(self) -> None:
        """Close politely (TLS close_notify), but never wait long for it."""
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await self._stream.aclose()
                    return
                except (trio.BrokenResourceError, trio.BusyResourceError):
                    pass  # the peer is gone or a send is stuck: no politeness possible
            await trio.aclose_forcefully(self._stream)

    async def __aenter__(self) -> PeerConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _exchange_hello(self) -> None:
        # Both sides send first, then read: a Hello fits any socket buffer, so neither
        # can block the other.
        try:
            await self.send(self.session.hello)
            first = await self.receive()
        except trio.BrokenResourceError as exc:
            # In TLS 1.3 the client finishes its handshake before the server checks the
            # client's certificate; a refusal arrives here, as an alert.
            raise _refusal(exc, f"device {self.device_id}", self.address, dialing=True) from exc
        except trio.EndOfChannel:
            raise PeerRefused(f"{self.address} closed the connection before Hello") from None
        assert isinstance(first, Hello), "PeerSession lets only a Hello come first"


# ------------------------------------------------------------------------- helpers


def _address_of(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    try:
        host, port, *_ = sock.getpeername()  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError, TypeError):
        return "an unknown address"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _refusal(exc: BaseException, who: str, where: str, *, dialing: bool) -> PeerRefused:
    """Log why a handshake failed and name it as a ``PeerRefused``."""
    cause = exc.__cause__
    reason = getattr(cause, "reason", None) if isinstance(cause, ssl.SSLError) else None
    detail = str(cause or exc) or type(exc).__name__
    if reason in _WE_REFUSED:
        if dialing:
            message = f"{where} presented a certificate of an unpaired device"
        else:
            message = f"refused TLS from unpaired {who} at {where}"
    elif reason in _THEY_REFUSED:
        message = f"{who} at {where} refused our certificate (not paired on its side?)"
    elif reason in _HUNG_UP:
        message = f"{who} at {where} hung up during the TLS handshake (not paired on its side?)"
    else:
        message = f"TLS handshake with {who} at {where} failed: {detail}"
    log.warning("%s [%s]", message, reason or detail)
    return PeerRefused(message)
