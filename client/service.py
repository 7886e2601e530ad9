"""``dizzy service``: run the daemon of a home under systemd.

A user unit (``~/.config/systemd/user/``, started at login) by default; with
``--system`` a system unit (``/etc/systemd/system/``, started at boot, ``User=`` the
invoking user).  The unit's name is per home, so two homes each get their own:
``dizzy.service`` for the default home, ``dizzy-<8 hex of the home's path>.service``
for any other.  Rendering is pure; installing writes the file and, where systemd runs,
enables and starts the unit.  Where it does not, the unit is still written and the
foreground command is printed instead.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dizzy.protocol.errors import DizzyError, NotFound, StorageError, UsageError

SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
#: systemd creates this directory at boot; its absence means systemd is not PID 1
SYSTEMD_RUNTIME_DIR = Path("/run/systemd/system")
#: wait this long before restarting a daemon that failed: a crash loop costs little,
#: and five restarts never fall inside systemd's default 10 s start-limit window
RESTART_SEC = 5
#: systemctl answers in milliseconds; this only bounds a wedged bus
SYSTEMCTL_TIMEOUT = 60.0


@dataclass(frozen=True)
class ServiceSpec:
    """What one unit is: which home, which command, user or system."""

    home: Path
    command: tuple[str, ...]  # the dizzy executable (or python -m ...), absolute
    system: bool = False
    user: str | None = None  # User= of a system unit

    @property
    def exec_argv(self) -> list[str]:
        return [*self.command, "--home", str(self.home), "daemon"]


# -- pure ----------------------------------------------------------------------------


def unit_name(home: Path, default_home: Path) -> str:
    """``dizzy.service`` for the default home; a stable per-home name otherwise."""
    if home == default_home:
        return "dizzy.service"
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:8]
    return f"dizzy-{digest}.service"


def quote_exec_arg(arg: str) -> str:
    """One ExecStart word, as systemd reads it back (specifiers and variables off)."""
    if any(c in arg for c in "\n\r\0"):
        raise UsageError(f"cannot put {arg!r} in a systemd unit (newline or NUL)")
    text = arg.replace("%", "%%").replace("$", "$$")
    if text and not any(c in text for c in ' \t"\'\\;'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_exec(line: str) -> list[str]:
    """The words of an ExecStart value: the inverse of ``quote_exec_arg``."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        if line[i] in " \t":
            i += 1
            continue
        word: list[str] = []
        quote = line[i] if line[i] in "\"'" else None
        if quote:
            i += 1
        while i < n:
            c = line[i]
            if quote is None and c in " \t":
                break
            if c == quote:
                i += 1
                break
            if c == "\\" and i + 1 < n:
                i += 1
                c = line[i]
            elif c in "%$" and i + 1 < n and line[i + 1] == c:
                i += 1
            word.append(c)
            i += 1
        words.append("".join(word))
    return words


def render_unit(spec: ServiceSpec) -> str:
    exec_start = " ".join(quote_exec_arg(a) for a in spec.exec_argv)
    lines = [
        "# Written by `dizzy service install`; `dizzy service uninstall` removes it.",
        "[Unit]",
        # % starts a specifier in every unit setting, not only in ExecStart
        f"Description=dizzy peer-to-peer sync daemon ({str(spec.home).replace('%', '%%')})",
    ]
    if spec.system:
        lines += ["After=network-online.target", "Wants=network-online.target"]
    lines += [
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_start}",
        # SIGTERM is the daemon's clean shutdown; a non-zero exit (a crash) restarts it.
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        "TimeoutStopSec=30",
    ]
    if spec.system and spec.user:
        lines.append(f"User={spec.user}")
    lines += [
        "",
        "[Install]",
        f"WantedBy={'multi-user.target' if spec.system else 'default.target'}",
        "",
    ]
    return "\n".join(lines)


def exec_start_of(unit_text: str) -> list[str]:
    for line in unit_text.splitlines():
        if line.startswith("ExecStart="):
            return split_exec(line[len("ExecStart="):])
    raise DizzyError("the unit has no ExecStart line")


# -- the environment -----------------------------------------------------------------


def dizzy_command(argv0: str | None = None, executable: str | None = None) -> tuple[str, ...]:
    """The absolute command that runs this installation of dizzy.

    The console script that is running (``argv[0]``), else the one beside this Python
    (a venv's ``bin/dizzy``), else ``python -m dizzy.client.cli``.  Paths are made
    absolute but symlinks are kept: a venv's python is a symlink out of the venv.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    candidates = []
    if os.path.basename(argv0) == "dizzy":
        candidates.append(os.path.abspath(argv0))
    candidates.append(os.path.join(os.path.dirname(os.path.abspath(executable)), "dizzy"))
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return (path,)
    return (os.path.abspath(executable), "-m", "dizzy.client.cli")


def user_unit_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    config = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "systemd" / "user"


def systemd_running() -> bool:
    """systemd is this machine's init and ``systemctl`` is here to talk to it."""
    return SYSTEMD_RUNTIME_DIR.is_dir() and shutil.which("systemctl") is not None


def invoking_user() -> str:
    """Who asked: under sudo the user behind it, not root."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def default_home_of(user: str) -> Path | None:
    """That user's default dizzy home (for ``sudo dizzy service install --system``)."""
    try:
        return Path(pwd.getpwnam(user).pw_dir) / ".local" / "share" / "dizzy"
    except KeyError:
        return None


# -- install / uninstall / status ----------------------------------------------------


@dataclass
class Outcome:
    unit_path: Path
    lines: list[str]


def _systemctl(system: bool, *args: str) -> subprocess.CompletedProcess[str]:
    scope = [] if system else ["--user"]
    try:
        return subprocess.run(["systemctl", *scope, *args], capture_output=True, text=True,
                              timeout=SYSTEMCTL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(["systemctl", *args], 1, "", str(exc))


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise DizzyError(f"`{' '.join(proc.args)}` failed while {what}: "
                         f"{detail[-1] if detail else f'exit {proc.returncode}'}")


def foreground_command(spec: ServiceSpec) -> str:
    return " ".join(shlex.quote(a) for a in spec.exec_argv)


def install(spec: ServiceSpec, unit_dir: Path, name: str, *,
            systemd: bool | None = None) -> Outcome:
    systemd = systemd_running() if systemd is None else systemd
    path = unit_dir / name
    text = render_unit(spec)
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        hint = " (a system unit needs root: sudo)" if spec.system else ""
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}{hint}") from exc
    lines = [f"wrote {path}"]
    if not systemd:
        lines += [
            "systemd is not running here, so nothing was enabled or started.",
            "Run the daemon in the foreground instead:",
            f"  {foreground_command(spec)}",
        ]
        return Outcome(path, lines)
    _check(_systemctl(spec.system, "daemon-reload"), "reloading units")
    _check(_systemctl(spec.system, "enable", "--now", name), f"enabling {name}")
    scope = "" if spec.system else " --user"
    lines.append(f"enabled and started {name} (see `systemctl{scope} status {name}`)")
    if not spec.system:
        lines.append("it starts at login; to start it at boot without a login: "
                     f"`loginctl enable-linger {invoking_user()}`")
    return Outcome(path, lines)


def uninstall(unit_dir: Path, name: str, *, system: bool,
              systemd: bool | None = None) -> Outcome:
    systemd = systemd_running() if systemd is None else systemd
    path = unit_dir / name
    if not path.exists():
        raise NotFound(f"no dizzy unit installed at {path}")
    lines = []
    if systemd:
        proc = _systemctl(system, "disable", "--now", name)
        if proc.returncode == 0:
            lines.append(f"stopped and disabled {name}")
        else:  # not loaded, say: removing the file is what matters
            lines.append(f"could not disable {name}: {(proc.stderr or '').strip()}")
    try:
        path.unlink()
    except OSError as exc:
        raise StorageError(f"cannot remove {path}: {exc.strerror or exc}") from exc
    lines.append(f"removed {path}")
    if systemd:
        _systemctl(system, "daemon-reload")
    return Outcome(path, lines)


def status(unit_dir: Path, name: str, *, system: bool,
           systemd: bool | None = None) -> Outcome:
    systemd = systemd_running() if systemd is None else systemd
    path = unit_dir / name
    lines = []
    if path.exists():
        lines.append(f"unit     {path}")
        try:
            lines.append(f"runs     {' '.join(exec_start_of(path.read_text()))}")
        except (OSError, DizzyError) as exc:
            lines.append(f"runs     ? ({exc})")
    else:
        lines.append(f"unit     not installed (no {path}; `dizzy service install`)")
    if systemd:
        active = _systemctl(system, "is-active", name).stdout.strip() or "unknown"
        enabled = _systemctl(system, "is-enabled", name).stdout.strip() or "unknown"
        lines.append(f"systemd  {active}, {enabled}")
    else:
        lines.append("systemd  not running here")
    return Outcome(path, lines)


def spec_for(home: Path, *, system: bool, command: Sequence[str] | None = None) -> ServiceSpec:
    return ServiceSpec(home=home, command=tuple(command or dizzy_command()), system=system,
                       user=invoking_user() if system else None)
