"""Day-to-day operation commands: ``dizzy events``, ``dizzy log``, ``dizzy service``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from dizzy.daemon.event_text import describe
from dizzy.daemon.home import ENV_HOME, Home, default_home, resolve_home
from dizzy.protocol.errors import NotFound, StorageError, UsageError

from . import logview, service
from ._client import Client

#: lines ``dizzy log`` shows by default (like tail)
DEFAULT_LOG_LINES = 50


def event_line(event: dict[str, Any]) -> str:
    """``HH:MM:SS  ID  TYPE  what happened``: one event for a human."""
    when = time.strftime("%H:%M:%S", time.localtime(event.get("time") or 0))
    data = event.get("data") or {}
    return f"{when} {event.get('id', 0):>6}  {event.get('type', '?'):<18} " \
           f"{describe(str(event.get('type')), data)}"


def cmd_events(args: argparse.Namespace) -> int:
    try:
        with Client(args.home).events(since=args.since, types=args.type or None) as stream:
            for event in stream:
                line = json.dumps(event, sort_keys=True) if args.json else event_line(event)
                # One flush per event: `| jq` and tests reading the pipe see each live.
                print(line, flush=True)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how one stops watching: not an error
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    path = Home(resolve_home(args.home)).log_file
    if args.lines < 0:
        raise UsageError("-n must be 0 or more")
    try:
        if path.exists():
            for line in logview.tail_lines(path, args.lines):
                print(line)
        elif not args.follow:
            raise NotFound(f"no log at {path} yet (the daemon writes it once started)")
        sys.stdout.flush()
        if args.follow:
            for line in logview.follow(path):
                print(line, flush=True)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:  # unreadable (permissions), a directory in its place...
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return 0


def _service_target(args: argparse.Namespace) -> tuple[Path, Path, str]:
    """(home, unit directory, unit name) for this invocation."""
    default = default_home()
    if args.system and os.environ.get("SUDO_USER") not in (None, "", "root"):
        # `sudo dizzy service install --system`: the unit runs as the user behind sudo,
        # so its home is theirs unless one was named.
        default = service.default_home_of(service.invoking_user()) or default
    named = args.home or os.environ.get(ENV_HOME)
    home = resolve_home(named) if named else default
    unit_dir = service.SYSTEM_UNIT_DIR if args.system else service.user_unit_dir()
    return home, unit_dir, service.unit_name(home, default)


def cmd_service(args: argparse.Namespace) -> int:
    home, unit_dir, name = _service_target(args)
    if args.action == "install":
        outcome = service.install(service.spec_for(home, system=args.system), unit_dir, name)
    elif args.action == "uninstall":
        outcome = service.uninstall(unit_dir, name, system=args.system)
    else:
        outcome = service.status(unit_dir, name, system=args.system)
    for line in outcome.lines:
        print(line)
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("events", help="stream the daemon's events as they happen")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--since", type=int, default=None, metavar="ID",
                   help="replay from this event id on (0: every event the daemon holds)")
    p.add_argument("--type", action="append", default=[], metavar="TYPE",
                   help="only events of this type (repeatable)")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("log", help="show the daemon's log (works while it is stopped)")
    p.add_argument("-n", "--lines", type=int, default=DEFAULT_LOG_LINES, metavar="N",
                   help=f"how many of the last lines to show (default {DEFAULT_LOG_LINES})")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("service", help="run the daemon under systemd (install/uninstall/status)")
    p.add_argument("action", choices=["install", "uninstall", "status"])
    p.add_argument("--system", action="store_true",
                   help="a system unit started at boot (needs root) instead of a user unit")
    p.set_defaults(func=cmd_service)
