"""What a running daemon is made of, handed to every control handler."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import trio

from .events import EventBus
from .home import Home
from .identity import Identity
from .index import Index
from .store import ObjectStore


@dataclass
class DaemonConfig:
    home: Home
    name: str | None = None
    listen: tuple[str, int] | None = None
    static_peers: list[tuple[str, int]] = field(default_factory=list)
    mdns: bool = True
    #: the web page's loopback (host, port); None: no page
    gui: tuple[str, int] | None = None
    #: True when ``gui`` is only the built-in default: a busy port turns the page off
    #: with a warning instead of stopping the daemon
    gui_optional: bool = False


@dataclass
class DaemonContext:
    config: DaemonConfig
    identity: Identity
    index: Index
    store: ObjectStore
    nursery: trio.Nursery
    name: str
    started: float = field(default_factory=time.time)
    #: what happened, for `dizzy events`, Client.events() and the GUI
    events: EventBus = field(default_factory=EventBus)
    #: services added by later layers (peers, discovery...) keyed by name
    services: dict[str, Any] = field(default_factory=dict)
