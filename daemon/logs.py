"""The daemon's log: one line per record to stderr and to ``<home>/log/dizzy.log``.

stderr is what a terminal, ``journalctl`` or a test harness sees; the file is there
for ``dizzy log`` whoever started the daemon, and survives it.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

from .home import Home

#: rotate at 5 MiB and keep 3 old files: a busy daemon logs a few hundred bytes per
#: transfer or peer change, so this holds weeks of history in at most 20 MiB
LOG_MAX_BYTES = 5 * 1024 * 1024
LOG_BACKUPS = 3
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_daemon_logging(home: Home, *, debug: bool = False) -> None:
    """Send every ``dizzy.*`` record to stderr and the home's rotated log file."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        # watchfiles logs every batch of file changes at INFO: the folder events say
        # what matters about them.
        logging.getLogger("watchfiles").setLevel(logging.WARNING)
    formatter = logging.Formatter(LOG_FORMAT)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    root.addHandler(stderr)
    home.create()
    try:
        handler = logging.handlers.RotatingFileHandler(
            home.log_file, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
        )
    except OSError as exc:
        # A log file we cannot open must not keep the daemon from running.
        logging.getLogger("dizzy.daemon").warning(
            "not logging to %s: %s", home.log_file, exc.strerror or exc)
        return
    handler.setFormatter(formatter)
    root.addHandler(handler)
