"""A fetch's life as events: ``transfer.started``, ``.progress`` (throttled),
``.finished`` with its size and rate, or ``.failed`` with why."""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from .events import EventBus

#: transfer.progress at most this often per transfer: smooth enough for a GUI bar or
#: a script, and a 1 GiB fetch costs ~10 events, not one per chunk
PROGRESS_EVENT_INTERVAL = 0.5


class TransferReport:
    def __init__(self, bus: EventBus, object_id: str, total: int, *, already: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self.object_id = object_id
        self.total = total
        #: bytes that were here before this run (a resumed transfer)
        self.already = already
        self._clock = clock
        self.started = clock()

    def start(self, peers: list[str], what: str) -> None:
        self.bus.publish("transfer.started", object_id=self.object_id, total=self.total,
                         peers=peers, what=what, done=self.already)

    async def report_progress(self, done: Callable[[], int]) -> None:
        """Publish progress every PROGRESS_EVENT_INTERVAL while it moves; runs until
        cancelled (when the transfer ends)."""
        last_done, last_time = done(), self._clock()
        while True:
            await trio.sleep(PROGRESS_EVENT_INTERVAL)
            now, current = self._clock(), done()
            if current == last_done:
                continue
            rate = (current - last_done) / max(now - last_time, 1e-6)
            self.bus.publish("transfer.progress", object_id=self.object_id, done=current,
                             total=self.total, rate=round(rate))
            last_done, last_time = current, now

    def finished(self) -> tuple[int, float, float]:
        """Publish the end; returns (bytes fetched now, seconds, bytes/s)."""
        seconds = self._clock() - self.started
        fetched = self.total - self.already
        rate = fetched / max(seconds, 1e-6)
        self.bus.publish("transfer.finished", object_id=self.object_id, bytes=fetched,
                         seconds=round(seconds, 3), rate=round(rate), already=self.already)
        return fetched, seconds, rate

    def failed(self, error: BaseException) -> None:
        if isinstance(error, trio.Cancelled):
            reason = "stopped (the request was cancelled or the daemon is stopping)"
        else:
            reason = str(error) or type(error).__name__
        self.bus.publish("transfer.failed", object_id=self.object_id, error=reason)
