"""A one-line progress bar on a terminal; nothing at all when stderr is piped."""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: redraw at most this often: a bar must not cost more than the work it shows
REDRAW_INTERVAL = 0.1
BAR_WIDTH = 28


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class ProgressBar:
    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int | None, what: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw < REDRAW_INTERVAL and (total is None or done < total):
            return
        self._last_draw = now
        elapsed = max(now - self._start, 1e-6)
        rate = done / elapsed
        if total:
            frac = min(done / total, 1.0)
            filled = int(frac * BAR_WIDTH)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            eta = (total - done) / rate if rate > 0 else 0.0
            line = (
                f"{self.label} [{bar}] {frac * 100:5.1f}% {human_bytes(done)}/"
                f"{human_bytes(total)} {human_bytes(rate)}/s ETA {eta:4.0f}s"
            )
        else:
            line = f"{self.label} {human_bytes(done)} {human_bytes(rate)}/s"
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
