"""Progress shared between worker threads (which count) and trio (which reports)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class ProgressCounter:
    """Counters a worker thread bumps; plain int stores are atomic under the GIL."""

    total: int | None = None
    done: int = 0
    what: str = ""


@dataclass
class CancelFlag:
    """Lets trio ask a worker thread, which trio cannot interrupt, to stop early."""

    _event: threading.Event = field(default_factory=threading.Event)

    def set(self) -> None:
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()
