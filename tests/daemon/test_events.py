"""The event bus: ordered ids, replay from an id, bounded memory, dropped counts."""

from __future__ import annotations

import trio

from dizzy.daemon.events import EventBus


async def _take(bus: EventBus, n: int, **kw: object) -> list[tuple[int, str]]:
    got: list[tuple[int, str]] = []
    async for event in bus.subscribe(**kw):  # type: ignore[arg-type]
        got.append((event.id, event.type))
        if len(got) == n:
            break
    return got


async def test_subscriber_sees_new_events_in_order() -> None:
    bus = EventBus(clock=lambda: 1.0)
    bus.publish("old")
    result: list[tuple[int, str]] = []

    async def reader() -> None:
        result.extend(await _take(bus, 3))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        for name in ("a", "b", "c"):
            bus.publish(name, n=1)
    assert result == [(2, "a"), (3, "b"), (4, "c")]


async def test_replay_from_an_id_and_type_filter() -> None:
    bus = EventBus()
    for i in range(5):
        bus.publish("even" if i % 2 == 0 else "odd", i=i)
    assert await _take(bus, 3, after=0) == [(1, "even"), (2, "odd"), (3, "even")]
    assert await _take(bus, 2, after=0, types={"odd"}) == [(2, "odd"), (4, "odd")]
    assert bus.recent(types={"even"}, limit=1)[0].data == {"i": 4}


async def test_slow_reader_is_told_what_it_missed_and_memory_is_bounded() -> None:
    bus = EventBus(history=10)
    for i in range(25):
        bus.publish("x", i=i)
    assert len(bus.recent()) == 10
    got = []
    async for event in bus.subscribe(after=3):
        got.append(event)
        if len(got) == 2:
            break
    assert got[0].type == "events.dropped" and got[0].data == {"count": 12}
    assert got[1].id == 16


async def test_an_id_from_before_a_restart_replays_everything() -> None:
    bus = EventBus()
    bus.publish("first")
    assert await _take(bus, 1, after=500) == [(1, "first")]
