from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.daemons import DaemonProcess, running_daemon

# the fuzz input counter's hooks (see tests/fuzz_counter.py)
from tests.fuzz_counter import (  # noqa: F401
    pytest_configure,
    pytest_runtest_call,
    pytest_terminal_summary,
)

# The machines running this suite are shared and noisy: timing-based health checks and
# per-example deadlines would fail tests for the machine's load, not for a defect.
settings.register_profile(
    "dizzy", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("dizzy")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """One real daemon process on a fresh home, loopback only, no mDNS."""
    with running_daemon(tmp_path / "home", "--listen", "127.0.0.1:0") as d:
        yield d
