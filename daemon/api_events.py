"""Control handler ``events``: the event bus streamed to a client until it hangs up.

Params: ``since`` (an event id, or null for only new events) and ``types`` (a list of
event types, or null for all).  Each event goes out as a ``Notice("event", {...})``;
the call never replies on its own.  A first ``Notice("subscribed", {"last_id"})``
tells the client it is subscribed.  A client that reads slowly only holds up its own
stream: the bus never waits for a reader, and one that falls a whole ring behind gets
an ``events.dropped`` event saying how many it missed.
"""

from __future__ import annotations

from contextlib import aclosing

from dizzy.protocol.errors import UsageError

from .api import Call, ControlApi
from .events import EventBus

#: a filter longer than this is a mistake, not a subscription
MAX_TYPES = 100


def register(api: ControlApi, bus: EventBus) -> None:
    async def events(call: Call) -> None:
        since = call.param("since", int, default=None, allow_none=True)
        if since is not None and since < 0:
            raise UsageError("events: since must be an event id (>= 0)")
        types = call.param("types", list, default=None, allow_none=True)
        wanted: set[str] | None = None
        if types is not None:
            if not types or len(types) > MAX_TYPES or not all(
                isinstance(t, str) and 0 < len(t) <= 64 for t in types
            ):
                raise UsageError(f"events: types must be a list of 1 to {MAX_TYPES} names")
            wanted = set(types)
        # Fix the starting point, then confirm: the client returns from events() only
        # now, and misses nothing published after that.
        start = bus.last_id if since is None else since
        await call.send_notice("subscribed", {"last_id": bus.last_id})
        # aclosing: a hang-up ends the subscription now, not whenever it is collected
        async with aclosing(bus.subscribe(after=start, types=wanted)) as stream:
            async for event in stream:
                await call.send_notice("event", event.to_dict())

    api.register("events", events)
