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
        self._last_time: float | None = None
        self._last_done = already

    def start(self, peers: list[str], what: str) -> None:
        self.bus.publish("transfer.started", object_id=self.object_id, total=self.total,
                         peers=peers, what=what, done=self.already)

    def landed(self, done: int) -> None:
        """A chunk landed (``done`` bytes on disk now): a progress event for the first
        one, so even a short transfer shows one, then at most every
        PROGRESS_EVENT_INTERVAL."""
        now = self._clock()
        if self._last_time is not None and now - self._last_time < PROGRESS_EVENT_INTERVAL:
            return
        since_time = self._last_time if self._last_time is not None else self.started
        rate = (done - self._last_done) / max(now - since_time, 1e-6)
        self.bus.publish("transfer.progress", object_id=self.object_id, done=done,
                         total=self.total, rate=round(rate))
        self._last_time, self._last_done = now, done

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
