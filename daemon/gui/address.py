"""Where the web page listens: a loopback address only, never the network."""

from __future__ import annotations

import ipaddress

from dizzy.protocol.errors import UsageError

#: 22070 is the peer port; the page sits beside it (Syncthing's GUI is 8384, taken often)
DEFAULT_GUI_PORT = 22080
DEFAULT_GUI_HOST = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP literal, or ``localhost``) can only be this machine."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def parse_gui_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``PORT``) on loopback; anything reachable from outside is refused."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        host, port_text = DEFAULT_GUI_HOST, text.strip()
    host = host.strip("[]") or DEFAULT_GUI_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"bad GUI address {text!r}: expected HOST:PORT") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"bad GUI address {text!r}: port must be 0-65535")
    if not is_loopback(host):
        raise UsageError(
            f"the web page listens on loopback only; {host} is not a loopback address "
            f"(use 127.0.0.1:{port})"
        )
    if host.lower() == "localhost":
        host = DEFAULT_GUI_HOST  # one address, not whatever the resolver says today
    return host, port


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
