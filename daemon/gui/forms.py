"""Checks on what the page submits, each failure one clear line for the page to show."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dizzy.protocol.errors import UsageError

from ..folders import MODES

#: a form is a few hundred bytes; anything near this is not one of ours
MAX_FORM_BYTES = 64 * 1024


def parse_json_object(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_FORM_BYTES:
        raise UsageError("the form is too large")
    try:
        value = json.loads(body.decode("utf-8")) if body.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError("the form is not valid JSON") from None
    if not isinstance(value, dict):
        raise UsageError("the form must be a JSON object")
    return value


def share_params(form: dict[str, Any]) -> dict[str, Any]:
    """``name``, ``path``, ``mode`` for the control API's ``share``, or a UsageError."""
    name = form.get("name")
    if not isinstance(name, str) or not name.strip():
        raise UsageError("a folder name is required")
    raw_path = form.get("path")
    if not isinstance(raw_path, str) or not raw_path.strip():
        raise UsageError("a folder path is required")
    if "\0" in raw_path:
        raise UsageError("the path contains a NUL byte")
    path = Path(raw_path.strip()).expanduser()
    if not path.is_absolute():
        raise UsageError(f"the path must be absolute (like /home/you/Pictures), "
                         f"not {raw_path.strip()!r}")
    if not path.exists():
        raise UsageError(f"no such directory: {path}")
    if not path.is_dir():
        raise UsageError(f"not a directory: {path}")
    mode = form.get("mode", "send-receive")
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}")
    return {"name": name.strip(), "path": str(path), "mode": mode}
