"""The peer listen port: routes each connection by its preamble to TLS or pairing."""

from __future__ import annotations

import logging

import trio

from dizzy.protocol.errors import DizzyError, ProtocolError
from dizzy.protocol.peer_wire import PreambleKind

from .pairing_service import PairingService
from .peers import PeerManager
from .transport import receive_preamble

log = logging.getLogger("dizzy.listener")

#: the default listen port (TCP), when --listen gives none
DEFAULT_PORT = 22070
#: Connections not yet authenticated (preamble, TLS handshake, pairing exchange) held
#: at once; more are closed on arrival.  Each is cut after 10-25 s anyway, and a LAN has
#: a handful of devices dialling at once: the bound only stops a flood of them from
#: taking every file descriptor the daemon needs for files, SQLite and its clients.
MAX_PENDING_CONNECTIONS = 256


async def open_peer_listeners(host: str, port: int) -> list[trio.SocketListener]:
    return await trio.open_tcp_listeners(port, host=host)


def listen_port(listeners: list[trio.SocketListener]) -> int:
    return int(listeners[0].socket.getsockname()[1])


async def serve_peer_listeners(
    listeners: list[trio.SocketListener], peers: PeerManager, pairing: PairingService
) -> None:
    pending = trio.Semaphore(MAX_PENDING_CONNECTIONS)
    full = False  # logged once per episode of refusals, not once per connection

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal full
        try:
            addr = stream.socket.getpeername()
            where = f"{addr[0]}:{addr[1]}"
        except OSError:
            where = "?"
        try:
            pending.acquire_nowait()
        except trio.WouldBlock:
            if not full:
                log.warning("%d connections are already waiting to authenticate; closing "
                            "new ones until some finish or time out", MAX_PENDING_CONNECTIONS)
                full = True
            await trio.aclose_forcefully(stream)
            return
        held = True

        def release_slot() -> None:  # authenticated, or done (pairing over, refused, cut)
            nonlocal held, full
            if held:
                held, full = False, False
                pending.release()

        try:
            preamble = await receive_preamble(stream)
            if preamble.kind is PreambleKind.TRANSPORT:
                await peers.accept(stream, preamble.claimed_device, release_slot)
                return  # the peer manager owns the stream now
            await pairing.handle_incoming(stream, where)
            await stream.aclose()
        except (DizzyError, ProtocolError) as exc:
            log.info("connection from %s closed: %s", where, exc)
            await trio.aclose_forcefully(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("connection from %s broke: %s", where, exc)
            await trio.aclose_forcefully(stream)
        except Exception:
            # A bug in handling one connection (a parser raising something it should
            # not) costs that connection, never the daemon: serve_listeners would
            # otherwise let the exception stop every task of the daemon.
            log.exception("connection from %s failed; closing it", where)
            await trio.aclose_forcefully(stream)
        finally:
            release_slot()

    await trio.serve_listeners(handle, listeners)
