"""Small file-system helpers: atomic completion, fsync of directories, errors that read well."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

from dizzy.protocol.errors import DizzyError, NotFound, StorageError, UsageError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name_beside(dest: Path) -> Path:
    """A hidden temp path in ``dest``'s directory, so completion is one rename."""
    return dest.with_name(f".{dest.name}.dizzy-{secrets.token_hex(4)}.tmp")


def storage_error(exc: OSError, doing: str) -> DizzyError:
    """Turn an OSError into the one-line error a user should read."""
    if exc.errno == errno.ENOSPC:
        return StorageError(f"no space left on device while {doing}")
    if exc.errno == errno.EDQUOT:
        return StorageError(f"disk quota exceeded while {doing}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StorageError(f"permission denied while {doing}")
    if exc.errno == errno.ENOENT:
        return NotFound(f"no such file or directory while {doing}")
    if exc.errno == errno.EISDIR:
        return UsageError(f"is a directory while {doing}")
    if exc.errno == errno.EROFS:
        return StorageError(f"read-only file system while {doing}")
    return StorageError(f"{exc.strerror or exc} while {doing}")


def remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


class TempFile:
    """A temp file that is removed, and its descriptor closed, unless ``keep()``.

    Used as ``with TempFile(path, doing) as tmp:``; an ``OSError`` inside becomes the
    one-line ``storage_error`` for ``doing``.  ``close()`` is idempotent, so a
    descriptor is never closed twice (a second close could hit a reused number that
    another thread now owns).
    """

    def __init__(self, path: Path, doing: str, mode: int = 0o600) -> None:
        self.path = path
        self.doing = doing
        try:
            self.fd: int | None = os.open(
                path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode
            )
        except OSError as exc:
            raise storage_error(exc, doing) from exc
        self._kept = False

    def fileno(self) -> int:
        assert self.fd is not None, "temp file already closed"
        return self.fd

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def keep(self) -> None:
        """It was renamed into place: do not remove it on exit."""
        self._kept = True

    def __enter__(self) -> TempFile:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        with contextlib.suppress(OSError):
            self.close()
        if not self._kept:
            remove_quietly(self.path)
        if isinstance(exc, OSError):
            raise storage_error(exc, self.doing) from exc


def finish_file(path: Path, mode: int, mtime_ns: int) -> None:
    """Give a file written for a shared folder its recorded mode and mtime."""
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))
