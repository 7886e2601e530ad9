"""Resource samples of running daemons for the soak: RSS, open descriptors, and the
files left in ``<home>/partial`` and ``<home>/tmp``, read from /proc and the home.

The daemons run inside network namespaces but share this pid namespace, so
/proc/PID is theirs.  ``summarize`` turns the samples into min / median / max and a
least-squares slope over the last half of the run: bounded memory shows a flat tail,
a leak a steady climb.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

KIB = 1024


@dataclass(frozen=True)
class Sample:
    t: float
    rss: int  # bytes
    hwm: int  # bytes, the peak so far
    fds: int
    partial: int
    tmp: int


@dataclass
class Series:
    name: str
    pid: int
    home: Path
    samples: list[Sample] = field(default_factory=list)


def read_status(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * KIB
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * KIB
    return rss, hwm


def count_entries(directory: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(directory))
    except FileNotFoundError:
        return 0


def sample(series: Series) -> Sample | None:
    try:
        rss, hwm = read_status(series.pid)
        fds = len(os.listdir(f"/proc/{series.pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None  # the daemon is gone: the caller notices elsewhere
    return Sample(time.monotonic(), rss, hwm, fds, count_entries(series.home / "partial"),
                  count_entries(series.home / "tmp"))


class Sampler:
    """Samples every daemon every ``interval`` seconds in a background thread."""

    def __init__(self, series: Sequence[Series], interval: float) -> None:
        self.series = list(series)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for s in self.series:
                got = sample(s)
                if got is not None:
                    s.samples.append(got)
            self._stop.wait(self.interval)


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute; 0 for < 2 points."""
    if len(points) < 2:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


@dataclass(frozen=True)
class Summary:
    name: str
    samples: int
    rss_min: int
    rss_median: int
    rss_max: int
    hwm: int
    #: bytes per minute over the second half of the window
    tail_slope: float
    #: median of the last quarter minus median of the second quarter, bytes
    tail_growth: int
    fds_min: int
    fds_max: int
    partial_max: int
    tmp_max: int


def summarize(series: Series, start: float, end: float) -> Summary | None:
    window = [s for s in series.samples if start <= s.t <= end]
    if not window:
        return None
    rss = [s.rss for s in window]
    half = start + (end - start) / 2
    tail = [(s.t - start, float(s.rss)) for s in window if s.t >= half]
    n = len(window)
    second_quarter = [s.rss for s in window[n // 4: n // 2]] or rss
    last_quarter = [s.rss for s in window[3 * n // 4:]] or rss
    return Summary(
        series.name, n, min(rss), int(statistics.median(rss)), max(rss),
        max(s.hwm for s in window), slope_per_minute(tail),
        int(statistics.median(last_quarter) - statistics.median(second_quarter)),
        min(s.fds for s in window), max(s.fds for s in window),
        max(s.partial for s in window), max(s.tmp for s in window),
    )
