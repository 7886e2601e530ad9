"""Counts the generated inputs the fuzz targets really ran, and prints the total.

A fuzz test calls ``tick()`` once per input it feeds to the code under test (inside the
hypothesis test body, so shrinking and replayed examples count as what they are: inputs
that ran).  At the end of the session one line sums them up, so a CI log shows how many
inputs the run tried:

    fuzz: 123456 generated inputs across 30 targets (hypothesis seed 42; ...)

Every run draws a fresh seed unless ``--hypothesis-seed`` gives one; the line names it,
so any failure in the log can be replayed exactly with the same seed.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

_counts: Counter[str] = Counter()
_current: list[str] = []
_seed: list[int | str] = []


def tick(n: int = 1) -> None:
    """Record ``n`` inputs fed to the code under test by the running test."""
    _counts[_current[-1] if _current else "?"] += n


def counts() -> dict[str, int]:
    return dict(_counts)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Runs before hypothesis' own pytest_configure reads the option, so every
    # hypothesis test of this session uses one seed that the summary line can name.
    seed = config.getoption("hypothesis_seed", None)
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 32)
        config.option.hypothesis_seed = seed
    _seed[:] = [seed]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    # The test's name without its parameters: one target per fuzz function.
    _current.append(item.nodeid.split("[", 1)[0])
    try:
        yield
    finally:
        _current.pop()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config
                            ) -> None:
    if not _counts:
        return
    seed = _seed[0] if _seed else "?"
    if config.option.verbose > 0:
        for name, n in sorted(_counts.items()):
            terminalreporter.write_line(f"fuzz: {n:>8} {name}")
    terminalreporter.write_line(
        f"fuzz: {sum(_counts.values())} generated inputs across {len(_counts)} targets "
        f"(hypothesis seed {seed}; rerun with --hypothesis-seed={seed})"
    )
