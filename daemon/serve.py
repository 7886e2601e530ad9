"""``serve_daemon``: the daemon's one root nursery and everything it owns."""

from __future__ import annotations

import logging
import os
import signal
import socket

import trio

from dizzy.protocol.errors import DizzyError

from . import api_events, api_folders, api_peers, api_store, object_service, small_objects
from .api import ControlApi
from .context import DaemonConfig, DaemonContext
from .control_server import serve_control
from .fetch import Fetcher
from .folders import FolderManager
from .fsutil import remove_quietly
from .gui import serve_gui
from .home import DaemonLock
from .identity import load_or_create_identity
from .index import Index
from .listener import DEFAULT_PORT, listen_port, open_peer_listeners, serve_peer_listeners
from .memory import return_large_blocks
from .nurseries import unwrap_single_errors
from .outboards import Outboards
from .pairing_service import PairingService
from .peers import PeerManager
from .store import ObjectStore
from .trust import TrustStore
from .write_behind import WriteBehind, read_boot_id

log = logging.getLogger("dizzy.daemon")


def _clean_tmp(ctx_home_tmp: os.PathLike[str]) -> int:
    """Remove temp files a killed daemon left; they never sit under a final name."""
    removed = 0
    for entry in os.scandir(ctx_home_tmp):
        remove_quietly(entry.path)  # type: ignore[arg-type]
        removed += 1
    return removed


async def serve_daemon(
    config: DaemonConfig,
    *,
    task_status: trio.TaskStatus[DaemonContext] = trio.TASK_STATUS_IGNORED,
) -> None:
    home = config.home
    home.create()
    lock = DaemonLock(home)
    lock.acquire()
    index: Index | None = None
    store: ObjectStore | None = None
    try:
        identity = load_or_create_identity(home.root)
        index = Index.open(home.index_db)
        store = ObjectStore(home, index)
        leftovers = _clean_tmp(home.tmp)
        if leftovers:
            log.info("removed %d temp file(s) left by an earlier run", leftovers)
        async with trio.open_nursery() as nursery:
            ctx = DaemonContext(
                config=config,
                identity=identity,
                index=index,
                store=store,
                nursery=nursery,
                name=config.name or socket.gethostname(),
            )
            trust = await TrustStore.load(index)
            host, port = config.listen or ("0.0.0.0", DEFAULT_PORT)
            try:
                listeners = await open_peer_listeners(host, port)
            except OSError as exc:
                raise DizzyError(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                    "(choose another with --listen HOST:PORT)"
                ) from exc
            port = listen_port(listeners)
            bus = ctx.events
            peers = PeerManager(identity, ctx.name, trust, list(config.static_peers),
                                events=bus)
            pairing = PairingService(identity, ctx.name, trust, peers, port, events=bus)
            ctx.services["peers"] = _PeerStatus(peers, f"{host}:{port}")
            api = ControlApi()
            api_store.register(api, ctx)
            api_peers.register(api, ctx, trust, peers, pairing)
            outboards = Outboards(store)
            write_behind = WriteBehind(index, home.objects, read_boot_id())
            await write_behind.recover()  # before anything is served from the store
            fetcher = Fetcher(home, index, store, outboards, peers, events=bus,
                              write_behind=write_behind)
            folders = FolderManager(index, home.root, identity, trust, peers, store, fetcher,
                                    events=bus)
            outboards.locate = folders.sync_find_object
            ctx.services["folders"] = folders
            api_folders.register(api, folders)
            api_events.register(api, bus)
            object_service.register(peers, store, outboards, locate=folders.sync_find_object,
                                    stale=folders.rehash_object)
            small_objects.register(peers, store, folders.sync_find_object,
                                   stale=folders.rehash_object)
            ctx.services["outboards"] = outboards
            ctx.services["fetcher"] = fetcher
            ctx.services["write_behind"] = write_behind
            await nursery.start(write_behind.serve)
            await nursery.start(peers.serve)
            await nursery.start(folders.serve)
            nursery.start_soon(fetcher.resume_all)
            nursery.start_soon(serve_peer_listeners, listeners, peers, pairing)
            if config.mdns:
                await nursery.start(_serve_discovery, ctx, peers, pairing, port)
            await nursery.start(serve_gui, ctx, api)  # before control: status names it
            await nursery.start(serve_control, api, home.control_socket)
            log.info(
                "dizzy daemon ready: device %s (%s), peers on %s:%d, mDNS %s, home %s",
                identity.device_id, ctx.name, host, port, "on" if config.mdns else "off",
                home.root,
            )
            task_status.started(ctx)
    finally:
        if store is not None:
            store.close()
        if index is not None:
            index.close()
        lock.release()


class _PeerStatus:
    def __init__(self, peers: PeerManager, listen: str) -> None:
        self.peers = peers
        self.listen = listen

    async def status(self) -> dict[str, object]:
        return {
            "listen": self.listen,
            "peers_paired": len(self.peers.trust.all()),
            "peers_online": len(self.peers.links),
        }


async def _serve_discovery(
    ctx: DaemonContext,
    peers: PeerManager,
    pairing: PairingService,
    port: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """mDNS: advertise this device, and dial paired devices the moment they appear."""
    from .discovery import PeerSeen, open_discovery

    async with open_discovery(ctx.identity.device_id, port=port, name=ctx.name) as disc:
        ctx.services["discovery"] = disc
        pairing.discovery = disc
        task_status.started()
        try:
            async for event in disc.events:
                if isinstance(event, PeerSeen) and peers.trust.get(event.device_id):
                    for address in reversed(event.addresses):
                        peers.wake(event.device_id, address)
        finally:
            pairing.discovery = None
            ctx.services.pop("discovery", None)


async def run_daemon(config: DaemonConfig) -> None:
    """``serve_daemon`` plus clean shutdown on SIGINT/SIGTERM (main thread only)."""
    return_large_blocks()  # before any worker thread exists
    with unwrap_single_errors(), trio.open_signal_receiver(
        signal.SIGINT, signal.SIGTERM
    ) as signals:
        async with trio.open_nursery() as nursery:

            async def wait_for_signal() -> None:
                async for signum in signals:
                    log.info("received %s; shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(wait_for_signal)
            try:
                with unwrap_single_errors():
                    await serve_daemon(config)
            finally:
                nursery.cancel_scope.cancel()
