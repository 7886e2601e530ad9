"""The web status page: this device, peers, folders, transfers, problems; pair and share.

Served on loopback only, behind the token in ``<home>/gui-token``; see ``auth``.
"""

from .address import DEFAULT_GUI_HOST, DEFAULT_GUI_PORT, parse_gui_address
from .server import serve_gui
from .token import read_token

__all__ = ["DEFAULT_GUI_HOST", "DEFAULT_GUI_PORT", "parse_gui_address", "read_token",
           "serve_gui"]
