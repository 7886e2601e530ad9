"""``serve_daemon``: the daemon's one root nursery and everything it owns."""

from __future__ import annotations

import logging
import os
import signal
import socket

import trio

from dizzy.protocol.errors import DizzyError

from . import api_store
from .api import ControlApi
from .context import DaemonConfig, DaemonContext
from .control_server import serve_control
from .fsutil import remove_quietly
from .home import DaemonLock
from .identity import load_or_create_identity
from .index import Index
from .store import ObjectStore

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
            api = ControlApi()
            api_store.register(api, ctx)
            await nursery.start(serve_control, api, home.control_socket)
            log.info(
                "dizzy daemon ready: device %s, home %s", identity.device_id, home.root
            )
            task_status.started(ctx)
    finally:
        if store is not None:
            store.close()
        if index is not None:
            index.close()
        lock.release()


async def run_daemon(config: DaemonConfig) -> None:
    """``serve_daemon`` plus clean shutdown on SIGINT/SIGTERM (main thread only)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def wait_for_signal() -> None:
                async for signum in signals:
                    log.info("received %s; shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(wait_for_signal)
            try:
                await serve_daemon(config)
            except DizzyError:
                raise
            finally:
                nursery.cancel_scope.cancel()
