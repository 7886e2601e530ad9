"""LAN discovery over mDNS/DNS-SD (python-zeroconf), bridged into trio.

Every daemon registers one ``_dizzy._tcp.local.`` service whose TXT record carries
``id`` (the full device ID), ``v`` (the wire protocol version), optionally ``n`` (the
device name) and, only while a pairing invitation is open, ``np`` (its nameplate
number).  Never a secret: anyone on the LAN reads these.

Threads: python-zeroconf's *sync* API is used on purpose.  ``Zeroconf`` runs its
asyncio loop in its own thread and ``ServiceBrowser`` calls our handler in one more
dedicated thread, where blocking resolution (``get_service_info`` with a timeout) is
the documented pattern.  So this module never owns an asyncio loop and trio never
blocks: the blocking calls (start, register, update, goodbye, close) go through
``trio.to_thread``.  The browser thread hands each event to trio with
``trio.from_thread.run_sync(..., trio_token=...)`` into a *bounded* memory channel and
never waits for room: when trio falls behind, events are dropped and counted
(``Discovery.dropped_events``) rather than stalling zeroconf.

A trio task folds the events into a ``PeerTable`` (who is on the LAN right now, and
who offers which nameplate) and forwards the ones that change something to
``Discovery.events``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import ifaddr  # zeroconf's own interface lister, so no extra dependency
import trio
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from dizzy.protocol.errors import BadDeviceId
from dizzy.protocol.ids import DeviceId
from dizzy.protocol.peer_wire import PROTOCOL_VERSION

log = logging.getLogger(__name__)

SERVICE_TYPE = "_dizzy._tcp.local."
#: TXT keys; short because every announcement repeats them
TXT_ID, TXT_VERSION, TXT_NAME, TXT_NAMEPLATE = "id", "v", "n", "np"
#: TXT key ``s``: a serial that changes with every update of our TXT record.  mDNS
#: caches keep a record younger than 1 s through a cache flush, and a TXT equal to one
#: still cached fires no update: without it, clearing a nameplate right after setting
#: it left peers seeing the old nameplate (caught by the netns test).  Starting at a
#: random value keeps a restarted daemon's first record distinct from its last one.
TXT_SERIAL = "s"
#: serials are decimal in TXT; 32 bits never repeat within any cache lifetime
SERIAL_MODULUS = 2**32
#: a DNS TXT string holds at most 255 bytes; a short cap keeps the whole record
#: (and the announcement) small and leaves room for the other keys
TXT_NAME_MAX_BYTES = 63
#: nameplates are small numbers a human types; anything longer is not ours
NAMEPLATE_MAX = 999_999
#: how long one resolution (SRV + TXT + A) may take after a PTR arrives; the records
#: usually come with the announcement, so this only bites for lossy links
RESOLVE_TIMEOUT_MS = 3000
#: events in flight between the zeroconf thread and trio, and towards the consumer;
#: a LAN holds a handful of dizzy peers, so 64 only fills when trio is stuck
EVENT_BUFFER = 64
#: bound on the goodbye + close work at shutdown (3 goodbyes at 125 ms, a browser
#: thread possibly inside one resolution, socket close) so cancellation stays prompt
SHUTDOWN_TIMEOUT = 5.0
#: IPv4 only: peers dial the advertised addresses with plain TCP, and IPv6 link-local
#: addresses would need scope IDs everywhere downstream
IP_VERSION = IPVersion.V4Only


@dataclass(frozen=True)
class PeerSeen:
    """A dizzy device is on the LAN (first sight, or its advertisement changed)."""

    device_id: DeviceId
    addresses: list[tuple[str, int]]
    version: int
    name: str | None
    nameplate: int | None


@dataclass(frozen=True)
class PeerGone:
    """The device said goodbye, or its records expired."""

    device_id: DeviceId


PeerEvent = PeerSeen | PeerGone


# ---------------------------------------------------------------- pure helpers


def instance_name(device_id: DeviceId) -> str:
    """The DNS-SD instance label: readable short ID plus 32 more bits of the digest.

    Stable across restarts on purpose: a daemon that crashed and came back overwrites
    its stale records in peers' caches instead of showing up twice.
    """
    return f"dizzy-{device_id.short}-{device_id.digest[:4].hex()}"


def build_txt(
    device_id: DeviceId, version: int, name: str | None, nameplate: int | None, serial: int = 0
) -> dict[str, str]:
    txt = {TXT_ID: str(device_id), TXT_VERSION: str(version), TXT_SERIAL: str(serial)}
    if name:
        txt[TXT_NAME] = _truncate_utf8(name, TXT_NAME_MAX_BYTES)
    if nameplate is not None:
        if not 0 <= nameplate <= NAMEPLATE_MAX:
            raise ValueError(f"nameplate out of range: {nameplate}")
        txt[TXT_NAMEPLATE] = str(nameplate)
    return txt


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


class MalformedAdvert(ValueError):
    """A ``_dizzy._tcp`` TXT record we cannot use; the peer's fault, never fatal."""


def parse_txt(
    properties: Mapping[bytes, bytes | None],
) -> tuple[DeviceId, int, str | None, int | None]:
    """(device ID, version, name, nameplate) from a TXT record, or ``MalformedAdvert``."""

    def text(key: str) -> str | None:
        raw = properties.get(key.encode("ascii"))
        return None if raw is None else raw.decode("utf-8", errors="replace")

    raw_id, raw_version, raw_np = text(TXT_ID), text(TXT_VERSION), text(TXT_NAMEPLATE)
    if raw_id is None or raw_version is None:
        raise MalformedAdvert("TXT lacks id or v")
    try:
        device_id = DeviceId.parse(raw_id)
    except BadDeviceId as exc:
        raise MalformedAdvert(str(exc)) from exc
    if not raw_version.isdigit():
        raise MalformedAdvert(f"bad version {raw_version!r}")
    nameplate: int | None = None
    if raw_np is not None:
        if not (raw_np.isdigit() and int(raw_np) <= NAMEPLATE_MAX):
            raise MalformedAdvert(f"bad nameplate {raw_np!r}")
        nameplate = int(raw_np)
    return device_id, int(raw_version), text(TXT_NAME), nameplate


def local_ipv4_addresses(interfaces: Sequence[str] | None) -> list[str]:
    """What to put in our A records: the chosen interface addresses, or every
    non-loopback IPv4 address (loopback is useless to anyone else)."""
    if interfaces is not None:
        return list(interfaces)
    found = {
        ip.ip
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if ip.is_IPv4 and not str(ip.ip).startswith("127.")
    }
    return sorted(str(a) for a in found)


@dataclass
class PeerTable:
    """The devices currently seen on the LAN, by device ID."""

    peers: dict[DeviceId, PeerSeen] = field(default_factory=dict)

    def apply(self, event: PeerEvent) -> bool:
        """Fold one event in; False when it changes nothing (a repeat)."""
        if isinstance(event, PeerSeen):
            if self.peers.get(event.device_id) == event:
                return False
            self.peers[event.device_id] = event
            return True
        return self.peers.pop(event.device_id, None) is not None

    def find_nameplate(self, nameplate: int) -> PeerSeen | None:
        """The device currently advertising this pairing nameplate, if any."""
        for peer in self.peers.values():
            if peer.nameplate == nameplate:
                return peer
        return None


# ------------------------------------------------------- zeroconf-thread side


class _BrowserHandler:
    """Runs in the ServiceBrowser thread: resolve, parse, hand over to trio.

    Every exception is caught here: one escaping would end the browser thread and
    silently stop discovery for the rest of the daemon's life.
    """

    def __init__(self, own_id: DeviceId, deliver: Callable[[PeerEvent], None]) -> None:
        self._own_id = own_id
        self._deliver = deliver
        # instance name -> device; Removed events carry only the name
        self._names: dict[str, DeviceId] = {}

    def on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        try:
            if state_change is ServiceStateChange.Removed:
                self._removed(name)
            else:
                self._resolve(zeroconf, service_type, name)
        except Exception:
            log.exception("discovery: handling %s of %r failed", state_change, name)

    def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        info = zeroconf.get_service_info(service_type, name, timeout=RESOLVE_TIMEOUT_MS)
        if info is None or info.port is None:
            log.debug("discovery: %r did not resolve in time", name)
            return
        try:
            device_id, version, peer_name, nameplate = parse_txt(info.properties)
        except MalformedAdvert as exc:
            log.debug("discovery: ignoring %r: %s", name, exc)
            return
        if device_id == self._own_id:
            return
        self._names[name] = device_id
        addresses = [(a, info.port) for a in info.parsed_addresses(IP_VERSION)]
        self._deliver(PeerSeen(device_id, addresses, version, peer_name, nameplate))

    def _removed(self, name: str) -> None:
        device_id = self._names.pop(name, None)
        # the same device may still be up under another instance name (a rename)
        if device_id is not None and device_id not in self._names.values():
            self._deliver(PeerGone(device_id))


# ----------------------------------------------------------------- trio side


class Discovery:
    """Handle on a running discovery; see ``open_discovery``."""

    def __init__(
        self,
        zc: Zeroconf,
        info: ServiceInfo,
        *,
        device_id: DeviceId,
        version: int,
        name: str | None,
        serial: int,
    ) -> None:
        self._serial = serial
        self._zc = zc
        self._device_id = device_id
        self._info = info
        self._version = version
        self._name = name
        self._nameplate: int | None = None
        self._update_lock = trio.Lock()
        self._changed = trio.Event()
        self.table = PeerTable()
        #: events lost because a channel was full (zeroconf side or consumer side)
        self.dropped_events = 0
        self._events_send, self.events = trio.open_memory_channel[PeerEvent](EVENT_BUFFER)
        self._raw_send, self._raw_recv = trio.open_memory_channel[PeerEvent](EVENT_BUFFER)

    @property
    def service_name(self) -> str:
        """Our registered instance name (zeroconf may have renamed it on a clash)."""
        return self._info.name

    @property
    def nameplate(self) -> int | None:
        return self._nameplate

    def find_nameplate(self, nameplate: int) -> PeerSeen | None:
        return self.table.find_nameplate(nameplate)

    async def wait_nameplate(self, nameplate: int) -> PeerSeen:
        """Wait until some device advertises ``nameplate``; the caller bounds the wait."""
        while True:
            found = self.table.find_nameplate(nameplate)
            if found is not None:
                return found
            await self._changed.wait()

    async def set_nameplate(self, nameplate: int | None) -> None:
        """Advertise (or, with None, withdraw) a pairing nameplate in our TXT record."""
        async with self._update_lock:
            if nameplate == self._nameplate:
                return
            serial = (self._serial + 1) % SERIAL_MODULUS
            txt = build_txt(self._device_id, self._version, self._name, nameplate, serial)
            info = ServiceInfo(
                SERVICE_TYPE,
                self._info.name,
                port=self._info.port,
                properties=txt,
                server=self._info.server,
                addresses=self._info.addresses,
            )
            await trio.to_thread.run_sync(self._zc.update_service, info)
            self._info = info
            self._nameplate = nameplate
            self._serial = serial

    # -- plumbing

    def _deliver_from_zeroconf(self, event: PeerEvent) -> None:
        # Runs in trio (via from_thread.run_sync); must never block.
        try:
            self._raw_send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped_events += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # shutting down

    async def _pump(self) -> None:
        async with self._raw_recv, self._events_send:
            async for event in self._raw_recv:
                if not self.table.apply(event):
                    continue
                self._changed.set()
                self._changed = trio.Event()
                try:
                    self._events_send.send_nowait(event)
                except trio.WouldBlock:
                    # the consumer is behind; the table stays exact regardless
                    self.dropped_events += 1
                except trio.BrokenResourceError:
                    pass  # nobody listens to events; the table is enough


def _bridge(
    token: trio.lowlevel.TrioToken, deliver: Callable[[PeerEvent], None]
) -> Callable[[PeerEvent], None]:
    """A deliver function the zeroconf thread can call."""

    def from_zeroconf_thread(event: PeerEvent) -> None:
        # RunFinishedError: trio is gone, nobody left to tell
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(deliver, event, trio_token=token)

    return from_zeroconf_thread


@asynccontextmanager
async def open_discovery(
    device_id: DeviceId,
    *,
    port: int,
    version: int = PROTOCOL_VERSION[0],
    name: str | None = None,
    interfaces: Sequence[str] | None = None,
) -> AsyncIterator[Discovery]:
    """Register this device and browse for others until the block exits.

    ``version`` goes into TXT ``v``: the wire protocol's major, the only part that
    decides whether two devices can talk (minors are negotiated in the session).

    ``interfaces``: IPv4 addresses to bind and advertise; None means every interface
    (inside a test network namespace: its veth and lo).  Exiting (or cancellation)
    sends goodbyes and closes zeroconf, bounded by ``SHUTDOWN_TIMEOUT``.
    """
    choice: InterfaceChoice | list[str | int] = (
        InterfaceChoice.All if interfaces is None else list(interfaces)
    )
    zc = await trio.to_thread.run_sync(partial(Zeroconf, interfaces=choice, ip_version=IP_VERSION))
    browser: ServiceBrowser | None = None
    try:
        label = instance_name(device_id)
        serial = secrets.randbelow(SERIAL_MODULUS)
        info = ServiceInfo(
            SERVICE_TYPE,
            f"{label}.{SERVICE_TYPE}",
            port=port,
            properties=build_txt(device_id, version, name, None, serial),
            server=f"{label}.local.",
            parsed_addresses=local_ipv4_addresses(interfaces),
        )
        disc = Discovery(zc, info, device_id=device_id, version=version, name=name, serial=serial)
        handler = _BrowserHandler(
            device_id, _bridge(trio.lowlevel.current_trio_token(), disc._deliver_from_zeroconf)
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(disc._pump)
            # Browse first: we hear others while our own name is still being probed.
            browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[handler.on_change])
            await trio.to_thread.run_sync(
                partial(zc.register_service, info, allow_name_change=True)
            )
            try:
                yield disc
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(SHUTDOWN_TIMEOUT) as cleanup_scope:
            cleanup_scope.shield = True
            await trio.to_thread.run_sync(_shutdown, zc, browser, abandon_on_cancel=True)
        if cleanup_scope.cancelled_caught:
            log.warning("discovery: zeroconf shutdown took over %.0f s", SHUTDOWN_TIMEOUT)


def _shutdown(zc: Zeroconf, browser: ServiceBrowser | None) -> None:
    # Goodbyes first so peers drop us at once, then stop the browser thread (it may
    # be inside one resolution), then the sockets and zeroconf's loop thread.
    try:
        zc.unregister_all_services()
    except Exception:
        log.debug("discovery: goodbye failed", exc_info=True)
    if browser is not None:
        browser.cancel()
    zc.close()
