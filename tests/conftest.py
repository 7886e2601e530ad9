from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import DaemonProcess, running_daemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """One real daemon process on a fresh home, loopback only, no mDNS."""
    with running_daemon(tmp_path / "home", "--listen", "127.0.0.1:0") as d:
        yield d
