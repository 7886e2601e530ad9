"""The peer manager: one authenticated connection per paired device.

Dials paired devices at every address it knows (mDNS, static ``--peer``, the last
address seen) with jittered exponential backoff, accepts their connections, settles
simultaneous dials with ``choose_connection``, keeps each connection alive, and serves
their requests through handlers that later layers register by request kind.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from dizzy.protocol.errors import DizzyError, ProtocolError, TimedOut
from dizzy.protocol.ids import DeviceId
from dizzy.protocol.peer_wire import (
    ErrorResponse,
    Notice,
    PeerRefused,
    Request,
    Response,
    choose_connection,
)

from .events import EventBus
from .identity import Identity
from .transport import PeerConnection, accept_peer, dial_peer
from .trust import TrustStore

log = logging.getLogger("dizzy.peers")

#: first retry after a failed dial; doubles up to BACKOFF_MAX, each with +-25% jitter so
#: two devices that lost each other do not redial in lockstep
BACKOFF_MIN = 1.0
BACKOFF_MAX = 60.0
#: a request to a peer that takes longer than this is abandoned
REQUEST_TIMEOUT = 60.0
#: see PeerLink.serve_slots
SERVE_SLOTS = 16

class PeerGone(DizzyError):
    """The connection to the peer ended while we waited for it."""

    code = "peer-gone"


class RemoteError(DizzyError):
    """The peer answered a request with an error."""

    code = "remote-error"

    def __init__(self, message: str, remote_code: str) -> None:
        super().__init__(message)
        self.remote_code = remote_code


RequestHandler = Callable[["PeerLink", Request], Awaitable[dict[str, Any]]]


@dataclass
class PeerLink:
    """A live connection and the requests we have in flight on it."""

    conn: PeerConnection
    dialed: bool
    since: float = field(default_factory=time.time)
    pending: dict[int, trio.MemorySendChannel[Response | ErrorResponse]] = field(
        default_factory=dict
    )
    #: requests from this peer served at once: each may hold a chunk (<= 4 MiB) until
    #: its reply is written, so this bounds the memory one peer can make us spend
    serve_slots: trio.Semaphore = field(default_factory=lambda: trio.Semaphore(SERVE_SLOTS))
    #: why the connection ended, for the peer.offline event
    end_reason: str = "connection closed"

    @property
    def device_id(self) -> DeviceId:
        return self.conn.device_id

    async def request(self, kind: str, body: dict[str, Any] | None = None,
                      timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        req = self.conn.new_request(kind, body)
        send, receive = trio.open_memory_channel[Response | ErrorResponse](1)
        self.pending[req.id] = send
        try:
            await self.conn.send(req)
            with trio.fail_after(timeout):
                reply = await receive.receive()
        except trio.TooSlowError:
            raise PeerGone(f"peer {self.device_id.short} did not answer {kind!r}") from None
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
            raise PeerGone(f"peer {self.device_id.short} went away") from None
        finally:
            self.pending.pop(req.id, None)
        if isinstance(reply, ErrorResponse):
            raise RemoteError(f"peer {self.device_id.short}: {reply.message}", reply.code)
        return dict(reply.body)


class PeerManager:
    def __init__(self, identity: Identity, name: str, trust: TrustStore,
                 static_peers: list[tuple[str, int]], *, events: EventBus) -> None:
        self.identity = identity
        self.events = events
        self.name = name
        self.trust = trust
        self.static_peers = static_peers
        self.links: dict[DeviceId, PeerLink] = {}
        #: addresses learnt from discovery (or pairing) per device
        self.addresses: dict[DeviceId, list[tuple[str, int]]] = {}
        self.handlers: dict[str, RequestHandler] = {}
        #: one-way notices from peers, by kind (e.g. "folder.changed")
        self.notice_handlers: dict[str, Callable[[PeerLink, Notice], Awaitable[None]]] = {}
        #: called with every new link once it is up (e.g. to pull folder logs)
        self.on_link_up: list[Callable[[PeerLink], Awaitable[None]]] = []
        self._wake: dict[DeviceId, trio.Event] = {}
        self._dialing: set[DeviceId] = set()
        self._nursery: trio.Nursery | None = None
        self.link_changed = trio.Event()

    # -- public ---------------------------------------------------------------------

    def online(self, device: DeviceId) -> bool:
        return device in self.links

    def wake(self, device: DeviceId, address: tuple[str, int] | None = None) -> None:
        """Dial ``device`` now (a new address, a fresh pairing), skipping any backoff."""
        if address is not None:
            known = self.addresses.setdefault(device, [])
            if address in known:
                known.remove(address)
            known.insert(0, address)
        self._wake.setdefault(device, trio.Event()).set()
        self._ensure_dialer(device)

    async def disconnect(self, device: DeviceId, reason: str = "disconnected") -> None:
        link = self.links.pop(device, None)
        if link is not None:
            await link.conn.aclose()
            self._went_offline(link, reason)
            self._signal()

    async def accept(self, stream: trio.SocketStream, claimed: DeviceId | None) -> None:
        try:
            where = "{}:{}".format(*stream.socket.getpeername()[:2])
        except OSError:
            where = "?"
        try:
            conn = await accept_peer(stream, self.identity, self.trust.cert_pems(),
                                     claimed=claimed, name=self.name)
        except (PeerRefused, TimedOut) as exc:
            self._refused(claimed, where, exc)
            raise
        if self.trust.get(conn.device_id) is None:  # unpaired between handshake and now
            await conn.aclose()
            self._refused(conn.device_id, where, "not paired", logged=False)
            return
        link = await self._adopt(conn, dialed=False)
        if link is not None:
            # The listener closes the stream when this returns: run the link here.
            await self._run_link(link)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for host, port in self.static_peers:
                nursery.start_soon(self._static_dialer, host, port)
            nursery.start_soon(self._watch_trust)
            for peer in self.trust.all():
                self._ensure_dialer(peer.device_id)
            task_status.started()

    # -- dialing --------------------------------------------------------------------

    def _ensure_dialer(self, device: DeviceId) -> None:
        if self._nursery is None or device in self._dialing or device in self.links:
            return
        if self.trust.get(device) is None:
            return
        self._dialing.add(device)
        self._nursery.start_soon(self._dialer, device)

    def _candidates(self, device: DeviceId) -> list[tuple[str, int]]:
        out = list(self.addresses.get(device, []))
        peer = self.trust.get(device)
        if peer is not None and peer.address:
            host, _, port = peer.address.rpartition(":")
            if host and port.isdigit() and (host, int(port)) not in out:
                out.append((host, int(port)))
        return out

    async def _dialer(self, device: DeviceId) -> None:
        """Keep ``device`` connected for as long as it is paired."""
        delay = BACKOFF_MIN
        try:
            while self.trust.get(device) is not None:
                if device in self.links:  # it dialled us: wait until that link ends
                    await self._wait_link_change()
                    delay = BACKOFF_MIN
                    continue
                wake = self._wake.setdefault(device, trio.Event())
                if wake.is_set():
                    self._wake[device] = wake = trio.Event()
                    delay = BACKOFF_MIN
                for host, port in self._candidates(device):
                    if device in self.links or self.trust.get(device) is None:
                        break
                    try:
                        conn = await dial_peer(host, port, self.identity, self.trust.cert_pems(),
                                               expected=device, name=self.name)
                    except (OSError, DizzyError, trio.BrokenResourceError) as exc:
                        log.debug("dial %s at %s:%d failed: %s", device.short, host, port, exc)
                        if isinstance(exc, PeerRefused):
                            self._refused(device, f"{host}:{port}", exc)
                        continue
                    link = await self._adopt(conn, dialed=True)
                    if link is not None:
                        await self._run_link(link)
                        delay = BACKOFF_MIN
                    break
                else:
                    with trio.move_on_after(delay * random.uniform(0.75, 1.25)):
                        await wake.wait()
                    delay = min(delay * 2, BACKOFF_MAX)
        finally:
            self._dialing.discard(device)

    async def _static_dialer(self, host: str, port: int) -> None:
        """A ``--peer`` address: whoever paired device answers there, keep it connected."""
        delay = BACKOFF_MIN
        while True:
            if self.trust.cert_pems():
                try:
                    conn = await dial_peer(host, port, self.identity, self.trust.cert_pems(),
                                           name=self.name)
                except (OSError, DizzyError, trio.BrokenResourceError) as exc:
                    log.debug("dial static peer %s:%d failed: %s", host, port, exc)
                    if isinstance(exc, PeerRefused):
                        self._refused(None, f"{host}:{port}", exc)
                else:
                    device = conn.device_id
                    known = self.addresses.setdefault(device, [])
                    if (host, port) not in known:
                        known.append((host, port))
                    link = await self._adopt(conn, dialed=True)
                    if link is not None:
                        assert self._nursery is not None
                        self._nursery.start_soon(self._run_link, link)
                    delay = BACKOFF_MIN
                    while device in self.links:
                        await self._wait_link_change()
                    continue
            with trio.move_on_after(delay * random.uniform(0.75, 1.25)):
                await self.trust.changed.wait()
            delay = min(delay * 2, BACKOFF_MAX)

    async def _wait_link_change(self) -> None:
        # Also wake on trust changes, so an unpaired device's dialer ends.
        async with trio.open_nursery() as nursery:
            async def first(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(first, self.link_changed)
            nursery.start_soon(first, self.trust.changed)

    def _signal(self) -> None:
        self.link_changed.set()
        self.link_changed = trio.Event()

    async def _watch_trust(self) -> None:
        """On unpair: drop that device's connection.  On pair: start dialing it."""
        while True:
            await self.trust.changed.wait()
            for device in list(self.links):
                if self.trust.get(device) is None:
                    log.debug("device %s was unpaired; closing its connection", device)
                    await self.disconnect(device, "unpaired")
            for peer in self.trust.all():
                self._ensure_dialer(peer.device_id)

    # -- connections ----------------------------------------------------------------

    async def _adopt(self, conn: PeerConnection, *, dialed: bool) -> PeerLink | None:
        """Make ``conn`` the device's link, or close it if the tie-break says so."""
        device = conn.device_id
        existing = self.links.get(device)
        if existing is not None:
            # Both dialled at once: both sides keep the connection dialled by the lower ID.
            keep_new = (choose_connection(self.identity.device_id, device) == "dial") == dialed
            if not keep_new:
                await conn.aclose()
                return None
            self.links.pop(device, None)
            await existing.conn.aclose()
        link = PeerLink(conn, dialed)
        self.links[device] = link
        if existing is None:  # a link replacing a simultaneous dial is no news
            self.events.publish("peer.online", device_id=str(device), name=conn.peer_name,
                                address=conn.address)
        self._signal()
        host = conn.address
        peer = self.trust.get(device)
        if dialed and peer is not None:
            await self.trust.seen(device, host)
        else:
            await self.trust.seen(device, None)
        return link

    async def _run_link(self, link: PeerLink) -> None:
        device = link.device_id
        try:
            # Every task here catches its own errors: only cancellation leaves.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keepalive, link, nursery.cancel_scope)
                nursery.start_soon(self._link_up, link)
                await self._receive_loop(link, nursery)
                nursery.cancel_scope.cancel()
        finally:
            for waiter in list(link.pending.values()):
                waiter.close()  # wakes every request still waiting with PeerGone
            with trio.CancelScope(shield=True):
                await link.conn.aclose()
                if self.links.get(device) is link:
                    del self.links[device]
                    self._went_offline(link, link.end_reason)
                    self._signal()
                    await self.trust.seen(device, None)
            if self.links.get(device) is None:
                self._ensure_dialer(device)

    async def _run_notice(self, handler: Callable[[PeerLink, Notice], Awaitable[None]],
                          link: PeerLink, notice: Notice) -> None:
        try:
            await handler(link, notice)
        except Exception:
            log.exception("handling %s from %s failed", notice.kind, link.device_id.short)

    async def broadcast(self, kind: str, body: dict[str, Any]) -> None:
        """A notice to every connected peer; a peer that is gone is skipped."""
        for link in list(self.links.values()):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                     DizzyError):
                await link.conn.send(Notice(kind, body))

    async def _link_up(self, link: PeerLink) -> None:
        for hook in self.on_link_up:
            try:
                await hook(link)
            except Exception:
                log.exception("link-up hook for %s failed", link.device_id.short)

    async def _keepalive(self, link: PeerLink, scope: trio.CancelScope) -> None:
        try:
            await link.conn.keepalive()
        except (DizzyError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("keepalive for %s stopped: %s", link.device_id.short, exc)
            link.end_reason = str(exc) or type(exc).__name__
        finally:
            scope.cancel()

    async def _receive_loop(self, link: PeerLink, nursery: trio.Nursery) -> None:
        device = link.device_id
        try:
            async for message in link.conn:
                if isinstance(message, Request):
                    nursery.start_soon(self._serve_request, link, message)
                elif isinstance(message, (Response, ErrorResponse)):
                    waiter = link.pending.get(message.id)
                    if waiter is not None:
                        waiter.send_nowait(message)
                elif isinstance(message, Notice):
                    handler = self.notice_handlers.get(message.kind)
                    if handler is not None:
                        nursery.start_soon(self._run_notice, handler, link, message)
            link.end_reason = "the peer closed the connection"
        except (ProtocolError, DizzyError, trio.BrokenResourceError,
                trio.ClosedResourceError) as exc:
            link.end_reason = str(exc) or type(exc).__name__
        log.debug("connection to %s ended: %s", device.short, link.end_reason)

    async def _serve_request(self, link: PeerLink, request: Request) -> None:
        async with link.serve_slots:
            await self._serve_request_now(link, request)

    async def _serve_request_now(self, link: PeerLink, request: Request) -> None:
        handler = self.handlers.get(request.kind)
        reply: Response | ErrorResponse
        if handler is None:
            reply = ErrorResponse(request.id, "unknown-request",
                                  f"unknown request kind {request.kind!r}")
        else:
            try:
                reply = Response(request.id, await handler(link, request))
            except DizzyError as exc:
                reply = ErrorResponse(request.id, exc.code, exc.message[:1000])
            except Exception as exc:
                log.exception("serving %s to %s failed", request.kind, link.device_id.short)
                reply = ErrorResponse(request.id, "internal", f"internal error: {exc}"[:1000])
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await link.conn.send(reply)

    # -- reporting ------------------------------------------------------------------

    def _went_offline(self, link: PeerLink, reason: str) -> None:
        self.events.publish("peer.offline", device_id=str(link.device_id),
                            name=link.conn.peer_name, reason=reason)

    def _refused(self, device: DeviceId | None, where: str, reason: object, *,
                 logged: bool = True) -> None:
        # The transport logs its refusals itself, in words tests rely on.
        self.events.publish("peer.refused", already_logged=logged,
                            device_id=str(device) if device is not None else None,
                            address=where, reason=str(reason))

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for peer in self.trust.all():
            link = self.links.get(peer.device_id)
            out.append({
                "id": str(peer.device_id),
                "name": peer.name,
                "online": link is not None,
                "address": link.conn.address if link is not None else peer.address,
                "last_seen": time.time() if link is not None else peer.last_seen,
                "paired_at": peer.paired_at,
            })
        return out


