"""``dizzy service``: the unit it writes, and that its ExecStart starts this dizzy's
daemon on the right home.  No running systemd needed: PATH holds no ``systemctl``
(or a fake one that records what it was asked)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dizzy.client import Client, DizzyError
from dizzy.client import service as svc
from tests.daemons import STOP_TIMEOUT, DaemonProcess, dizzy_argv

#: a daemon answers on its control socket this soon after starting
START_TIMEOUT = 20.0


def service_env(tmp_path: Path, path_dirs: list[Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DIZZY_HOME", "SUDO_USER")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["PATH"] = os.pathsep.join(str(d) for d in path_dirs)
    return env


def run_service(tmp_path: Path, home: Path, *args: str,
                path_dirs: list[Path] | None = None) -> subprocess.CompletedProcess[str]:
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    return subprocess.run(dizzy_argv("--home", str(home), "service", *args),
                          capture_output=True, text=True, timeout=60,
                          env=service_env(tmp_path, path_dirs or [empty]))


# -- rendering (pure) ----------------------------------------------------------------


def test_unit_names_are_per_home() -> None:
    default = Path("/home/u/.local/share/dizzy")
    assert svc.unit_name(default, default) == "dizzy.service"
    a = svc.unit_name(Path("/srv/a"), default)
    b = svc.unit_name(Path("/srv/b"), default)
    assert a != b and a.startswith("dizzy-") and a.endswith(".service") and len(a) == 22
    assert svc.unit_name(Path("/srv/a"), default) == a  # stable


@pytest.mark.parametrize("arg", [
    "/plain/path", "with space", 'a "quoted" word', "back\\slash", "100%", "$HOME",
    "it's", "semi;colon", "", "tab\there", "%h $$ \\\" mix",
])
def test_exec_words_round_trip(arg: str) -> None:
    line = " ".join(svc.quote_exec_arg(a) for a in ["/usr/bin/dizzy", arg, "daemon"])
    assert svc.split_exec(line) == ["/usr/bin/dizzy", arg, "daemon"]
    if "%" in arg:
        assert "%%" in line  # a systemd specifier would otherwise expand
    if "$" in arg:
        assert "$$" in line


def test_newlines_cannot_go_into_a_unit() -> None:
    with pytest.raises(DizzyError, match="newline"):
        svc.quote_exec_arg("a\nb")


def test_user_and_system_units() -> None:
    home = Path("/data/my homes/100% dizzy")
    user = svc.render_unit(svc.ServiceSpec(home, ("/opt/venv/bin/dizzy",)))
    assert svc.exec_start_of(user) == ["/opt/venv/bin/dizzy", "--home", str(home), "daemon"]
    assert "Restart=on-failure\n" in user and "RestartSec=5\n" in user
    assert "(/data/my homes/100%% dizzy)" in user  # no specifier in the description
    assert "WantedBy=default.target\n" in user and "User=" not in user
    system = svc.render_unit(svc.ServiceSpec(home, ("/usr/bin/python3", "-m",
                                                    "dizzy.client.cli"), system=True,
                                             user="alice"))
    assert svc.exec_start_of(system)[:3] == ["/usr/bin/python3", "-m", "dizzy.client.cli"]
    assert "User=alice\n" in system and "WantedBy=multi-user.target\n" in system
    assert "After=network-online.target" in system


def test_dizzy_command_prefers_the_running_console_script(tmp_path: Path) -> None:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.symlink_to(sys.executable)
    script = bin_dir / "dizzy"
    # No console script: python -m, with the venv's python kept as it is (a symlink).
    assert svc.dizzy_command("/somewhere/cli.py", str(python)) == (
        str(python), "-m", "dizzy.client.cli")
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert svc.dizzy_command("/somewhere/cli.py", str(python)) == (str(script),)
    other = tmp_path / "other" / "dizzy"
    other.parent.mkdir()
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    assert svc.dizzy_command(str(other), str(python)) == (str(other),)


# -- the CLI, without systemd ----------------------------------------------------------


def test_install_without_systemd_writes_a_unit_that_starts_this_daemon(tmp_path: Path) -> None:
    home = tmp_path / "a home"  # a space, to exercise the quoting for real
    proc = run_service(tmp_path, home, "install")
    assert proc.returncode == 0, proc.stderr
    units = list((tmp_path / "config" / "systemd" / "user").glob("*.service"))
    assert len(units) == 1 and units[0].name.startswith("dizzy-"), units
    assert "systemd is not running here" in proc.stdout
    argv = svc.exec_start_of(units[0].read_text())
    assert argv[-3:] == ["--home", str(home), "daemon"]
    assert os.path.isabs(argv[0]) and os.access(argv[0], os.X_OK)
    # It prints the same command to run in the foreground.
    assert f"--home '{home}' daemon" in proc.stdout
    # The ExecStart really is a dizzy daemon on that home (loopback only, no mDNS).
    daemon = subprocess.Popen([*argv, "--no-mdns", "--listen", "127.0.0.1:0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                status = Client(home).status()
                break
            except DizzyError:
                assert daemon.poll() is None, daemon.communicate()[1]
                assert time.monotonic() < deadline, "the unit's daemon did not start"
                time.sleep(0.05)
        assert status["home"] == str(home) and status["pid"] == daemon.pid
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=STOP_TIMEOUT) == 0  # SIGTERM: a clean stop, no restart

    shown = run_service(tmp_path, home, "status")
    assert shown.returncode == 0, shown.stderr
    assert str(units[0]) in shown.stdout and "systemd  not running here" in shown.stdout
    removed = run_service(tmp_path, home, "uninstall")
    assert removed.returncode == 0 and not units[0].exists(), removed.stderr
    again = run_service(tmp_path, home, "uninstall")
    assert again.returncode == 3 and again.stderr.startswith("dizzy: no dizzy unit")
    assert "not installed" in run_service(tmp_path, home, "status").stdout


def test_system_unit_dir_unwritable_is_one_clear_error(tmp_path: Path) -> None:
    spec = svc.ServiceSpec(tmp_path / "h", ("/usr/bin/dizzy",), system=True, user="nobody")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(DizzyError, match=r"cannot write .*sudo"):
        svc.install(spec, blocker / "units", "dizzy.service", systemd=False)


# -- with a (fake) systemctl ------------------------------------------------------------


def test_with_systemd_it_reloads_enables_and_starts(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n'
                    'case "$*" in *is-active*) echo active;; *is-enabled*) echo enabled;; esac\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    unit_dir = tmp_path / "units"
    spec = svc.ServiceSpec(tmp_path / "h", ("/usr/bin/dizzy",))
    out = svc.install(spec, unit_dir, "dizzy.service", systemd=True)
    assert (unit_dir / "dizzy.service").exists()
    assert any("enabled and started dizzy.service" in line for line in out.lines)
    shown = svc.status(unit_dir, "dizzy.service", system=False, systemd=True)
    assert "systemd  active, enabled" in shown.lines
    svc.uninstall(unit_dir, "dizzy.service", system=False, systemd=True)
    assert not (unit_dir / "dizzy.service").exists()
    assert calls.read_text().splitlines() == [
        "--user daemon-reload", "--user enable --now dizzy.service",
        "--user is-active dizzy.service", "--user is-enabled dizzy.service",
        "--user disable --now dizzy.service", "--user daemon-reload",
    ]
    # A failing systemctl is reported with what it said, after the unit was written.
    fake.write_text("#!/bin/sh\necho 'Failed to connect to bus: No medium found' >&2\n"
                    "exit 1\n")
    with pytest.raises(DizzyError, match="Failed to connect to bus"):
        svc.install(spec, unit_dir, "dizzy.service", systemd=True)
    assert (unit_dir / "dizzy.service").exists()


def test_a_daemon_with_shared_folders_stops_promptly(daemon: DaemonProcess,
                                                     tmp_path: Path) -> None:
    """`systemctl stop` is a SIGTERM: watching folders must not hold it up (each
    shared folder used to add watchfiles' 5 s timeout)."""
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        assert daemon.cli("share", name, str(tmp_path / name)).returncode == 0
    deadline = time.monotonic() + START_TIMEOUT
    while not all(f["state"] == "idle" for f in Client(daemon.home).folders()):
        assert time.monotonic() < deadline, Client(daemon.home).folders()
        time.sleep(0.05)
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 2.0
