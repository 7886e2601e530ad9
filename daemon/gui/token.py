"""The web page's access token: ``<home>/gui-token``, 32 random bytes, mode 0600.

Whoever can read the home can use the page (the home already holds the device key);
nobody else can, even from this machine.  The CLI reads the same file for ``dizzy gui``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

from dizzy.protocol.errors import StorageError

TOKEN_FILE = "gui-token"
#: 32 random bytes: far beyond guessing, even at loopback request rates
TOKEN_BYTES = 32
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43,}")


def token_path(home_root: Path) -> Path:
    return home_root / TOKEN_FILE


def read_token(home_root: Path) -> str | None:
    """The home's token, or None if there is none (yet) or it is not one of ours."""
    try:
        text = token_path(home_root).read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {token_path(home_root)}: {exc.strerror}") from exc
    return text if _TOKEN_SHAPE.fullmatch(text) else None


def load_or_create_token(home_root: Path) -> str:
    """The home's token, made once (a damaged file is replaced) and kept private."""
    path = token_path(home_root)
    token = read_token(home_root)
    if token is not None:
        os.chmod(path, 0o600)  # a copied home may have come with wider bits
        return token
    token = secrets.token_urlsafe(TOKEN_BYTES)
    tmp = path.with_name(f".{TOKEN_FILE}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror}") from exc
    return token
