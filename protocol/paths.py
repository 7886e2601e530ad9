"""Validation of untrusted names and relative paths (peers' manifests and logs).

A peer's path is joined under one of our folders, so anything that could climb out
(``..``, an absolute path, a backslash a Windows peer would treat as a separator)
or that the file system would misread (NUL, an empty component) is refused here,
before any code touches the disk.  Symlinks along the way are the daemon's concern:
this module sees only strings.
"""

from __future__ import annotations

from typing import Final

from .errors import UnsafePath

#: NAME_MAX of Linux, macOS and Windows file systems (bytes on Linux)
MAX_NAME_BYTES: Final = 255
#: PATH_MAX (4096, counting its NUL) on Linux, for the path *inside* the folder; a
#: longer path could never be created anyway, and the bound keeps peers' logs small
MAX_RELPATH_BYTES: Final = 4095
#: deeper than any real tree; bounds recursion in tree walks driven by a peer
MAX_DEPTH: Final = 256

_FORBIDDEN_CHARS: Final = ("/", "\\", "\x00")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_name(name: object) -> str:
    """Return ``name`` if it is one safe path component, else raise ``UnsafePath``."""
    if not isinstance(name, str):
        raise UnsafePath(f"a path component must be a string, not {type(name).__name__}")
    if name in ("", ".", ".."):
        raise UnsafePath(f"not a usable file name: {name!r}")
    for forbidden in _FORBIDDEN_CHARS:
        if forbidden in name:
            raise UnsafePath(f"file name contains {forbidden!r}: {_shown(name)}")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: no file system can store them
        raise UnsafePath(f"file name is not valid Unicode: {_shown(name)}") from exc
    if len(encoded) > MAX_NAME_BYTES:
        raise UnsafePath(
            f"file name is {len(encoded)} bytes, more than {MAX_NAME_BYTES}: {_shown(name)}"
        )
    return name


def validate_relpath(path: object) -> tuple[str, ...]:
    """Split a "/"-separated path relative to a folder root into safe components.

    Raises ``UnsafePath`` for an absolute or empty path, an empty component
    (``a//b``, a trailing ``/``), ``.`` or ``..``, a backslash or NUL, or a path
    longer or deeper than the bounds above.
    """
    if not isinstance(path, str):
        raise UnsafePath(f"a path must be a string, not {type(path).__name__}")
    if not path:
        raise UnsafePath("empty path")
    if path.startswith("/"):
        raise UnsafePath(f"absolute path: {_shown(path)}")
    # Cheap bounds first, so a hostile megabyte-long path is not split and scanned.
    if len(path) > MAX_RELPATH_BYTES:
        raise UnsafePath(f"path longer than {MAX_RELPATH_BYTES} bytes: {_shown(path)}")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise UnsafePath(f"path deeper than {MAX_DEPTH} components: {_shown(path)}")
    for part in parts:
        validate_name(part)
    # every component encodes (checked above), so this cannot fail now
    if len(path.encode("utf-8")) > MAX_RELPATH_BYTES:
        raise UnsafePath(f"path longer than {MAX_RELPATH_BYTES} bytes: {_shown(path)}")
    return tuple(parts)
