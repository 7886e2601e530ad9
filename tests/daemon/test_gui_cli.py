"""``dizzy gui``, ``--gui``/``--no-gui`` and the ``gui`` config key, with real daemons."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from dizzy.client.cli import _gui_settings
from dizzy.daemon.config import load_config
from dizzy.daemon.gui import DEFAULT_GUI_PORT
from dizzy.protocol.errors import UsageError
from tests.daemons import DaemonProcess, run_cli, running_daemon

LOOPBACK = ("--listen", "127.0.0.1:0")


def _one_line_error(proc: object, code: int, needle: str) -> None:
    assert proc.returncode == code, proc.stderr  # type: ignore[attr-defined]
    err = proc.stderr.decode()  # type: ignore[attr-defined]
    assert err.count("\n") == 1 and err.startswith("dizzy: ") and needle in err, err


def test_dizzy_gui_prints_a_working_address_with_the_token(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with running_daemon(home, *LOOPBACK, "--gui", "127.0.0.1:0") as daemon:
        status = json.loads(daemon.cli("status", "--json", check=True).stdout)
        assert status["gui"].startswith("http://127.0.0.1:") and status["gui"].endswith("/")
        assert f"gui      {status['gui']}\n" in daemon.cli("status").stdout.decode()
        url = daemon.cli("gui", check=True).stdout.decode().strip()
        token = (home / "gui-token").read_text().strip()
        assert url == f"{status['gui']}?token={token}"
        assert stat.S_IMODE(os.stat(home / "gui-token").st_mode) == 0o600
        with httpx.Client(follow_redirects=True, timeout=10) as http:
            page = http.get(url)
            assert page.status_code == 200 and "<title>dizzy</title>" in page.text
            assert str(page.url) == status["gui"]  # the token left the address bar
            state = http.get(status["gui"] + "api/state").json()
            assert state["device"]["device_id"] == status["device_id"]
        # --open hands the same address to the user's browser ($BROWSER here).
        opener = tmp_path / "browser"
        seen = tmp_path / "opened"
        opener.write_text(f"#!/bin/sh\necho \"$1\" > {seen}\n")
        opener.chmod(0o755)
        proc = daemon.cli("gui", "--open", env={**os.environ, "BROWSER": f"{opener} %s"})
        assert proc.returncode == 0, proc.stderr
        assert seen.read_text().strip() == url
    # The token survives restarts: a bookmarked address keeps working.
    with running_daemon(home, *LOOPBACK, "--gui", "127.0.0.1:0") as daemon:
        assert (home / "gui-token").read_text().strip() == token


def test_no_gui(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "home", *LOOPBACK, "--no-gui") as daemon:
        status = json.loads(daemon.cli("status", "--json", check=True).stdout)
        assert status["gui"] is None
        lines = daemon.cli("status").stdout.decode().splitlines()
        assert not [line for line in lines if line.startswith("gui ")], lines
        _one_line_error(daemon.cli("gui"), 2, "serves no web page")


@pytest.mark.parametrize("address", ["0.0.0.0:0", "192.0.2.1:22080", "[::]:1", "x:y"])
def test_a_non_loopback_gui_address_stops_the_daemon(tmp_path: Path, address: str) -> None:
    proc = run_cli(tmp_path / "home", "daemon", "--no-mdns", *LOOPBACK, "--gui", address,
                   timeout=30)
    _one_line_error(proc, 2, "bad GUI address" if address == "x:y" else "loopback only")


def _status_with_only(home: Path, *flags: str) -> dict[str, Any]:
    """Status of a daemon started with exactly these flags (no test default --no-gui)."""
    daemon = DaemonProcess(home)
    daemon.extra = ["--no-mdns", *LOOPBACK, *flags]
    daemon.start()
    try:
        status: dict[str, Any] = json.loads(daemon.cli("status", "--json", check=True).stdout)
        return status
    finally:
        daemon.stop()


def test_config_gui_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('name = "n"\ngui = "127.0.0.1:0"\n')
    assert _status_with_only(home)["gui"].startswith("http://127.0.0.1:")
    (home / "config.toml").write_text("gui = false\n")
    assert _status_with_only(home)["gui"] is None
    with running_daemon(home, *LOOPBACK, "--gui", "127.0.0.1:0") as daemon:  # flag wins
        assert json.loads(daemon.cli("status", "--json").stdout)["gui"]
    (home / "config.toml").write_text('mdns = false\n\ngui = "0.0.0.0:22080"\n')
    proc = run_cli(home, "daemon", "--no-mdns", *LOOPBACK, timeout=30)
    _one_line_error(proc, 2, "config.toml, line 3: the web page listens on loopback only")
    (home / "config.toml").write_text("gui = 22080\n")
    proc = run_cli(home, "daemon", "--no-mdns", *LOOPBACK, timeout=30)
    _one_line_error(proc, 2, 'line 1: gui must be a "HOST:PORT" string or false')
    (home / "config.toml").write_text("gu = false\n")
    proc = run_cli(home, "daemon", "--no-mdns", *LOOPBACK, timeout=30)
    _one_line_error(proc, 2, "line 1: unknown setting 'gu'")


def test_flags_win_over_the_file_and_the_default_is_optional(tmp_path: Path) -> None:
    assert _gui_settings(None, False, None) == {
        "gui": ("127.0.0.1", DEFAULT_GUI_PORT), "gui_optional": True}
    assert _gui_settings(None, False, False) == {"gui": None}
    assert _gui_settings(None, False, "127.0.0.1:1") == {"gui": ("127.0.0.1", 1)}
    assert _gui_settings("localhost:2", False, False) == {"gui": ("127.0.0.1", 2)}
    assert _gui_settings("[::1]:3", False, "127.0.0.1:1") == {"gui": ("::1", 3)}
    assert _gui_settings(None, True, "127.0.0.1:1") == {"gui": None}
    assert _gui_settings("4", False, None) == {"gui": ("127.0.0.1", 4)}
    with pytest.raises(UsageError, match="line 1: gui must be"):
        (tmp_path / "config.toml").write_text("gui = true\n")
        load_config(tmp_path)
