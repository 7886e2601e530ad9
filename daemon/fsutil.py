"""Small file-system helpers: atomic completion, fsync of directories, errors that read well."""

from __future__ import annotations

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
