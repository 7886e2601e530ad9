"""The daemon's event bus: what happened, in order, for the CLI, scripts and the GUI.

Modelled on Syncthing's event API: every event has a global, increasing ``id``, a Unix
``time``, a ``type`` (``peer.online``, ``transfer.progress``, ...) and a ``data`` dict
of plain msgpack/JSON values.  The bus keeps the last ``HISTORY`` events in a ring;
a subscriber reads from an ``id`` onwards, so a client that reconnects with the last
id it saw loses nothing that is still in the ring.

Publishing never blocks and never fails: a subscriber that falls more than ``HISTORY``
events behind is told how many it missed (a ``events.dropped`` event) instead of making
the daemon wait for it.  Memory is bounded by the ring, whatever the subscribers do.

``publish`` must be called from the trio thread; worker threads go through
``trio.from_thread.run_sync(bus.publish, ...)``.

Every event worth knowing is also logged, here, as one line (daemon/event_text.py):
the log and the event stream come from the same calls and say the same things.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from .event_text import describe, log_level, logger_name

#: events kept for late or slow readers; ~1,000 events of a few hundred bytes each
HISTORY = 1000


@dataclass(frozen=True)
class Event:
    id: int
    time: float
    type: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "time": self.time, "type": self.type, "data": self.data}


class EventBus:
    def __init__(
        self, *, history: int = HISTORY, clock: Callable[[], float] = time.time
    ) -> None:
        self._ring: deque[Event] = deque(maxlen=history)
        self._last_id = 0
        self._clock = clock
        self._wakeup = trio.Event()
        self._readers = 0

    @property
    def readers(self) -> int:
        """Subscriptions open now (a hung-up client's ends with its request)."""
        return self._readers

    @property
    def last_id(self) -> int:
        return self._last_id

    def publish(self, type: str, /, *, already_logged: bool = False, **data: Any) -> Event:
        """Record an event, wake its readers, and log it (unless the caller did, in
        words tests and users already rely on: ``already_logged``)."""
        self._last_id += 1
        event = Event(self._last_id, self._clock(), type, data)
        self._ring.append(event)
        wakeup, self._wakeup = self._wakeup, trio.Event()
        wakeup.set()
        level = None if already_logged else log_level(type, data)
        if level is not None:
            logging.getLogger(logger_name(type)).log(level, "%s", describe(type, data))
        return event

    def recent(self, types: set[str] | None = None, limit: int | None = None) -> list[Event]:
        """The events still in the ring, oldest first, optionally of some types only."""
        events = [e for e in self._ring if types is None or e.type in types]
        return events[-limit:] if limit is not None else events

    def since(self, after: int) -> tuple[int, list[Event]]:
        """(missed, events with id > after still in the ring)."""
        if not self._ring:
            return 0, []
        first = self._ring[0].id
        missed = max(0, first - after - 1)
        start = max(0, after + 1 - first)
        return missed, [self._ring[i] for i in range(start, len(self._ring))]

    async def subscribe(
        self, after: int | None = None, types: set[str] | None = None
    ) -> AsyncGenerator[Event, None]:
        """Yield events with id > ``after`` (default: only new ones), forever.

        A reader that fell behind the ring gets one synthetic ``events.dropped`` event
        (id 0, ``data.count`` = how many it missed) before the oldest one still held.
        """
        cursor = self._last_id if after is None else after
        if cursor > self._last_id:
            cursor = 0  # an id from before a daemon restart: everything since it started
        self._readers += 1
        try:
            while True:
                missed, events = self.since(cursor)
                if missed:
                    yield Event(0, self._clock(), "events.dropped", {"count": missed})
                if not events:
                    await self._wakeup.wait()
                    continue
                for event in events:
                    cursor = event.id
                    if types is None or event.type in types:
                        yield event
        finally:
            self._readers -= 1
