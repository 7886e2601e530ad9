from __future__ import annotations

import json
from pathlib import Path

import pytest

from dizzy.daemon.config import load_config
from dizzy.protocol.errors import UsageError
from tests.daemons import running_daemon


def write(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)
    return home


def test_missing_file_is_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path)
    assert config.name is None and config.peers == [] and config.mdns is None


def test_all_settings(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'name = "lab"\nlisten = "127.0.0.1:1"\n'
                                         'peers = ["a:1", "b:2"]\nmdns = false\n'))
    assert (config.name, config.listen, config.peers, config.mdns) == (
        "lab", "127.0.0.1:1", ["a:1", "b:2"], False)


@pytest.mark.parametrize(
    "text, needle",
    [
        ('name = "x"\nlisen = "a:1"\n', "line 2: unknown setting 'lisen'"),
        ("peers = [1]\n", "line 1: peers must be a list"),
        ("mdns = 'yes'\n", "line 1: mdns must be a bool"),
        ('name = "x\n', "line 1"),
    ],
)
def test_typos_name_the_line(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        load_config(write(tmp_path, text))


def test_daemon_uses_config_and_flags_win(tmp_path: Path) -> None:
    home = write(tmp_path / "home", 'name = "from-config"\nmdns = false\n')
    with running_daemon(home, "--listen", "127.0.0.1:0") as daemon:
        status = json.loads(daemon.cli("status", "--json", check=True).stdout)
        assert status["name"] == "from-config"
    with running_daemon(home, "--listen", "127.0.0.1:0", "--name", "flag") as daemon:
        status = json.loads(daemon.cli("status", "--json", check=True).stdout)
        assert status["name"] == "flag"


def test_daemon_refuses_a_bad_config(tmp_path: Path) -> None:
    from tests.daemons import run_cli

    home = write(tmp_path / "home", "lisen = 1\n")
    proc = run_cli(home, "daemon", "--no-mdns", "--listen", "127.0.0.1:0", timeout=30)
    assert proc.returncode == 2
    assert b"unknown setting 'lisen'" in proc.stderr
