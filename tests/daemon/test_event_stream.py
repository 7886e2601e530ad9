"""The ``events`` control method through a real control socket and the blocking
``Client.events()``: replay, filters, hang-ups, slow readers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from dizzy.client import Client, EventStream
from dizzy.daemon import api_events
from dizzy.daemon.api import ControlApi
from dizzy.daemon.control_server import serve_control
from dizzy.daemon.events import EventBus
from dizzy.protocol.errors import UsageError

#: every wait for the other side is bounded by this
DEADLINE = 10.0


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[EventBus, Path]]:
    """A bus behind a real control socket at ``tmp_path/control.sock``."""
    bus = EventBus(history=50)
    api = ControlApi()
    api_events.register(api, bus)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, api, tmp_path / "control.sock")
        yield bus, tmp_path
        nursery.cancel_scope.cancel()


def take(stream: EventStream, n: int) -> list[dict[str, Any]]:
    got = []
    for event in stream:
        got.append(event)
        if len(got) == n:
            break
    return got


async def in_thread(fn: Any, *args: Any) -> Any:
    with trio.fail_after(DEADLINE):
        return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


async def wait_for(predicate: Any, what: str) -> None:
    with trio.fail_after(DEADLINE):
        while not predicate():
            await trio.sleep(0.01)


async def test_replay_since_an_id_and_filter_by_type(served: tuple[EventBus, Path]) -> None:
    bus, home = served
    for i in range(6):
        bus.publish("peer.online" if i % 2 else "folder.state", i=i)

    def replay() -> list[dict[str, Any]]:
        with Client(home).events(since=2) as stream:
            return take(stream, 4)

    got = await in_thread(replay)
    assert [e["id"] for e in got] == [3, 4, 5, 6]
    assert got[0]["type"] == "folder.state" and got[0]["data"] == {"i": 2}
    assert all(isinstance(e["time"], float) for e in got)

    def only_peers() -> list[dict[str, Any]]:
        with Client(home).events(since=0, types=["peer.online"]) as stream:
            return take(stream, 3)

    assert [e["data"]["i"] for e in await in_thread(only_peers)] == [1, 3, 5]


async def test_without_since_only_new_events_and_none_missed(
    served: tuple[EventBus, Path],
) -> None:
    bus, home = served
    bus.publish("old")
    # events() returns once subscribed: whatever is published after it arrives.
    stream = await in_thread(lambda: Client(home).events())
    bus.publish("new", n=1)
    try:
        got = await in_thread(take, stream, 1)
    finally:
        stream.close()
    assert [(e["id"], e["type"]) for e in got] == [(2, "new")]


async def test_hang_up_ends_the_subscription(served: tuple[EventBus, Path]) -> None:
    bus, home = served
    streams = [await in_thread(lambda: Client(home).events()) for _ in range(5)]
    assert bus.readers == 5
    for stream in streams[:4]:
        stream.close()
    await wait_for(lambda: bus.readers == 1, "hung-up readers to go")
    # A generator left mid-loop hangs up too.
    stream = streams[4]
    bus.publish("x")
    await in_thread(take, stream, 1)
    stream.close()
    await wait_for(lambda: bus.readers == 0, "the last reader to go")


async def test_a_slow_reader_blocks_nobody_and_hears_what_it_missed(
    served: tuple[EventBus, Path],
) -> None:
    bus, home = served  # a ring of 50 events
    slow = await in_thread(lambda: Client(home).events())  # subscribed, never read yet
    fast = await in_thread(lambda: Client(home).events())
    padding = "x" * 4096  # enough to fill the slow reader's socket buffers many times
    started = time.monotonic()
    for i in range(2000):
        bus.publish("tick", i=i, pad=padding)
        if i % 20 == 19:
            await trio.sleep(0)  # let the daemon's senders run, as in a real daemon
    assert time.monotonic() - started < 5.0  # publishing never waited for anyone
    bus.publish("last")

    def until_last(stream: EventStream) -> list[dict[str, Any]]:
        got = []
        for event in stream:
            got.append(event)
            if event["type"] == "last":
                return got
        raise AssertionError("stream ended")

    fast_got = await in_thread(until_last, fast)
    slow_got = await in_thread(until_last, slow)
    fast.close()
    slow.close()
    # The slow one was told how much it missed, and still got the newest events.
    dropped = [e for e in slow_got if e["type"] == "events.dropped"]
    assert dropped and all(e["data"]["count"] > 0 for e in dropped)
    assert slow_got[-1]["id"] == 2001
    received = len([e for e in slow_got if e["type"] != "events.dropped"])
    assert received + sum(e["data"]["count"] for e in dropped) == 2001
    assert fast_got[-1]["id"] == 2001


async def test_bad_parameters_are_one_clear_error(served: tuple[EventBus, Path]) -> None:
    _, home = served
    for kwargs in ({"since": -1}, {"types": []}):
        with pytest.raises(UsageError, match="events:"):
            await in_thread(lambda kw=kwargs: Client(home).events(**kw))
