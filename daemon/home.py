"""Where a daemon keeps its state, and the lock that makes it the only one there."""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from dizzy.protocol.errors import DizzyError, StorageError

ENV_HOME = "DIZZY_HOME"


def resolve_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--home``, else ``$DIZZY_HOME``, else platformdirs' user data dir."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser().absolute()
    return default_home()


def default_home() -> Path:
    """The home used when neither ``--home`` nor ``$DIZZY_HOME`` names one."""
    return Path(platformdirs.user_data_dir("dizzy", appauthor=False))


class AlreadyRunning(DizzyError):
    code = "already-running"


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def control_socket(self) -> Path:
        return self.root / "control.sock"

    @property
    def lock_file(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def index_db(self) -> Path:
        return self.root / "index.sqlite"

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    @property
    def tmp(self) -> Path:
        # Temp files live on the same file system as the store so that completing
        # an object is a rename, never a copy.
        return self.root / "tmp"

    @property
    def partial(self) -> Path:
        return self.root / "partial"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "dizzy.log"

    def create(self) -> None:
        try:
            # 0700: the control socket and the device key live here.
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for sub in (self.objects, self.tmp, self.partial, self.log_file.parent):
                sub.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create dizzy home {self.root}: {exc.strerror}") from exc


class DaemonLock:
    """An exclusive ``flock`` on ``<home>/daemon.lock``, held for the daemon's life.

    The kernel drops the lock when the process dies, however it dies, so a killed
    daemon never blocks the next start (unlike a pid file).
    """

    def __init__(self, home: Home) -> None:
        self.home = home
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.home.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                who = f" (pid {holder})" if holder else ""
                raise AlreadyRunning(
                    f"another dizzy daemon is already running on {self.home.root}{who}"
                ) from exc
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
