"""``<home>/config.toml``: settings a daemon starts with; command-line flags win.

    name = "lab-box"               # this device's human name
    listen = "0.0.0.0:22070"       # peer listen address
    peers = ["10.0.0.7:22070"]     # static peers, dialled without discovery
    mdns = true                    # mDNS discovery on or off
    gui = "127.0.0.1:22080"        # the web page's loopback address; false: no page

A typo is an error that names the file and line, never a silently ignored setting.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dizzy.protocol.errors import UsageError

from .gui.address import parse_gui_address

CONFIG_FILE = "config.toml"


@dataclass
class FileConfig:
    name: str | None = None
    listen: str | None = None
    peers: list[str] = field(default_factory=list)
    mdns: bool | None = None
    #: "HOST:PORT" on loopback, or False for no page (None: not set)
    gui: str | bool | None = None


_KINDS: dict[str, type | tuple[type, ...]] = {
    "name": str, "listen": str, "peers": list, "mdns": bool, "gui": (str, bool),
}
_KIND_NAMES = {"gui": '"HOST:PORT" string or false'}


def _line_of(text: str, key: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if re.match(rf"\s*{re.escape(key)}\s*=", line):
            return number
    return 0


def load_config(home: Path) -> FileConfig:
    path = home / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return FileConfig()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: {exc}") from exc
    config = FileConfig()
    for key, value in data.items():
        line = _line_of(text, key)
        where = f"{path}, line {line}" if line else str(path)
        kind = _KINDS.get(key)
        if kind is None:
            known = ", ".join(sorted(_KINDS))
            raise UsageError(f"{where}: unknown setting {key!r} (known: {known})")
        if not isinstance(value, kind):
            wanted = _KIND_NAMES.get(key) or getattr(kind, "__name__", "")
            raise UsageError(f"{where}: {key} must be a {wanted}")
        if key == "gui" and value is True:
            raise UsageError(f'{where}: gui must be a "HOST:PORT" string or false')
        if key == "gui" and isinstance(value, str):
            try:
                parse_gui_address(value)
            except UsageError as exc:
                raise UsageError(f"{where}: {exc.message}") from None
        if isinstance(value, list) and not all(isinstance(p, str) for p in value):
            raise UsageError(f"{where}: peers must be a list of \"HOST:PORT\" strings")
        setattr(config, key, value)
    return config
