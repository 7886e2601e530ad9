"""The ``dizzy`` command line.

Every failure is one line on stderr and a non-zero exit status (the error's
``exit_code``); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dizzy import __version__
from dizzy.daemon.home import Home, resolve_home
from dizzy.protocol.errors import DizzyError, UsageError
from dizzy.protocol.ids import parse_object_id

from . import cli_ops
from ._client import Client
from .progress import ProgressBar, human_bytes

Command = Callable[[argparse.Namespace], int]


def parse_hostport(text: str, *, default_host: str | None = None) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        if default_host is None:
            raise UsageError(f"expected HOST:PORT, got {text!r}")
        host, port = default_host, text
    host = host.strip("[]") or (default_host or "")
    try:
        number = int(port)
    except ValueError:
        raise UsageError(f"bad port in {text!r}") from None
    if not 0 <= number <= 65535 or not host:
        raise UsageError(f"expected HOST:PORT, got {text!r}")
    return host, number


def _client(args: argparse.Namespace) -> Client:
    return Client(args.home)


def cmd_daemon(args: argparse.Namespace) -> int:
    import trio

    from dizzy.daemon.context import DaemonConfig
    from dizzy.daemon.logs import configure_daemon_logging
    from dizzy.daemon.serve import run_daemon

    home = Home(resolve_home(args.home))
    configure_daemon_logging(home, debug=args.debug)  # stderr and <home>/log/dizzy.log
    from dizzy.daemon.config import load_config

    file_config = load_config(home.root)  # flags below override it
    listen = args.listen or file_config.listen
    config = DaemonConfig(
        home=home,
        name=args.name or file_config.name,
        listen=parse_hostport(listen, default_host="0.0.0.0") if listen else None,
        static_peers=[parse_hostport(p) for p in [*file_config.peers, *args.peer]],
        mdns=not args.no_mdns and file_config.mdns is not False,
        **_gui_settings(args.gui, args.no_gui, file_config.gui),
    )
    trio.run(run_daemon, config)
    return 0


def _gui_settings(flag: str | None, off: bool, configured: str | bool | None
                  ) -> dict[str, Any]:
    """DaemonConfig's ``gui``/``gui_optional``: the flag, else the file, else the default."""
    from dizzy.daemon.gui import DEFAULT_GUI_HOST, DEFAULT_GUI_PORT, parse_gui_address

    if off or (flag is None and configured is False):
        return {"gui": None}
    if flag is not None or isinstance(configured, str):
        return {"gui": parse_gui_address(flag if flag is not None else str(configured))}
    return {"gui": (DEFAULT_GUI_HOST, DEFAULT_GUI_PORT), "gui_optional": True}


def cmd_gui(args: argparse.Namespace) -> int:
    from dizzy.daemon.gui import read_token

    status = _client(args).status()
    token = read_token(Path(status["home"]))
    if not status.get("gui"):
        raise UsageError("the daemon serves no web page (it runs with --no-gui, "
                         "or its port was taken: see its log)")
    if token is None:
        raise UsageError(f"no web page token in {status['home']}; restart the daemon")
    url = f"{status['gui']}?token={token}"
    print(url)
    if args.open:
        import webbrowser

        if not webbrowser.open(url):
            raise DizzyError("no web browser to open; paste the address above into one")
    return 0


def cmd_id(args: argparse.Namespace) -> int:
    from dizzy.daemon.identity import load_or_create_identity

    home = Home(resolve_home(args.home))
    home.create()
    print(load_or_create_identity(home.root).device_id)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = _client(args).status()
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    print(f"device   {status['device_id']}")
    print(f"name     {status['name']}")
    print(f"home     {status['home']}")
    print(f"daemon   pid {status['pid']}, up {status['uptime']:.0f} s, v{status['version']}")
    print(f"objects  {status['objects']} ({human_bytes(status['object_bytes'])})")
    for key in ("listen", "peers_online", "peers_paired", "gui"):
        if status.get(key) is not None:
            print(f"{key.replace('_', ' '):8} {status[key]}")
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists() and not path.is_symlink():
        raise UsageError(f"no such file or directory: {args.path}")
    bar = ProgressBar("put")
    try:
        info = _client(args).put_info(path, progress=bar)
    finally:
        bar.finish()
    for skipped in info.get("skipped", []):
        print(f"dizzy: skipped special file {skipped}", file=sys.stderr)
    print(info["id"])
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    object_id = parse_object_id(args.id)
    dest = Path(args.output) if args.output else Path(object_id)
    if not dest.absolute().parent.is_dir():
        raise UsageError(f"output directory does not exist: {dest.absolute().parent}")
    bar = ProgressBar("get")
    try:
        path = _client(args).get(object_id, dest, progress=bar, timeout=args.timeout,
                                 wait=args.wait)
    finally:
        bar.finish()
    if not args.output:
        print(path)
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    object_id = parse_object_id(args.id)
    out = sys.stdout.buffer
    with _client(args).open(object_id, timeout=args.timeout, wait=args.wait) as stream:
        while block := stream.read1(1024 * 1024):
            out.write(block)
    out.flush()
    return 0


def cmd_pair(args: argparse.Namespace) -> int:
    client = _client(args)
    params: dict[str, Any] = {"timeout": args.timeout}
    if args.code is None:
        def show_code(notice: Any) -> None:
            if notice.kind == "code":
                # The code alone on the first line of stdout: scripts read it from there.
                print(notice.value, flush=True)
                if sys.stderr.isatty():
                    print(f"On the other device run: dizzy pair {notice.value}",
                          file=sys.stderr, flush=True)

        result = client.call("pair_invite", params, notice=show_code)
    else:
        params["code"] = args.code
        if args.address:
            host, port = parse_hostport(args.address)
            params["address"] = [host, port]
        result = client.call("pair_join", params)
    print(result["device_id"])
    if sys.stderr.isatty():
        print(f"paired with {result['name']}", file=sys.stderr)
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    info = _client(args).call("peers")
    if args.json:
        print(json.dumps(info["paired"] if not args.all else info, indent=2, sort_keys=True))
        return 0
    if not info["paired"]:
        print("no paired devices (pair one with `dizzy pair`)")
    for peer in info["paired"]:
        state = "online " if peer["online"] else "offline"
        print(f"{state}  {peer['id']}  {peer['name']}  {peer['address'] or '-'}")
    if info["nearby"]:
        print("nearby, not paired:")
        for seen in info["nearby"]:
            flag = "  (offering a pairing code)" if seen["pairing"] else ""
            print(f"         {seen['id']}  {seen['name'] or '-'}  "
                  f"{', '.join(seen['addresses'])}{flag}")
    return 0


def cmd_unpair(args: argparse.Namespace) -> int:
    from dizzy.protocol.ids import DeviceId

    device = DeviceId.parse(args.device_id)
    _client(args).call("unpair", {"id": str(device)})
    return 0


def cmd_share(args: argparse.Namespace) -> int:
    path = Path(args.path).absolute()
    if not path.is_dir():
        raise UsageError(f"not a directory: {args.path}")
    _client(args).call("share", {"name": args.name, "path": str(path), "mode": args.mode})
    return 0


def cmd_unshare(args: argparse.Namespace) -> int:
    _client(args).call("unshare", {"name": args.name})
    return 0


def cmd_folders(args: argparse.Namespace) -> int:
    folders = _client(args).call("folders")
    if args.json:
        print(json.dumps(folders, indent=2, sort_keys=True))
        return 0
    if not folders:
        print("no shared folders (share one with `dizzy share NAME PATH`)")
    for f in folders:
        state = f["state"] + (f": {f['error']}" if f.get("error") else "")
        print(f"{f['name']:16} {f['mode']:13} {state:10} {f['files']:7} files "
              f"{human_bytes(f['bytes']):>10}  {f['path']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dizzy",
        description="Peer-to-peer object sync: pair devices, share folders, fetch by hash.",
    )
    parser.add_argument(
        "--home", help="state directory (default: $DIZZY_HOME or the user data dir)"
    )
    parser.add_argument("--debug", action="store_true", help="tracebacks and debug logs")
    parser.add_argument("--version", action="version", version=f"dizzy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("daemon", help="run the daemon in the foreground")
    p.add_argument("--listen", metavar="HOST:PORT", help="peer listening address")
    p.add_argument("--peer", metavar="HOST:PORT", action="append", default=[],
                   help="a peer to dial without discovery (repeatable)")
    p.add_argument("--no-mdns", action="store_true", help="turn mDNS discovery off")
    p.add_argument("--name", help="this device's human name (default: host name)")
    p.add_argument("--gui", metavar="HOST:PORT",
                   help="the web page's loopback address (default: 127.0.0.1:22080)")
    p.add_argument("--no-gui", action="store_true", help="serve no web page")
    p.set_defaults(func=cmd_daemon)

    p = sub.add_parser("gui", help="print the web page's address (with its token)")
    p.add_argument("--open", action="store_true", help="open it in a web browser too")
    p.set_defaults(func=cmd_gui)

    p = sub.add_parser("id", help="print this device's ID")
    p.set_defaults(func=cmd_id)

    p = sub.add_parser("status", help="show the daemon's status")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("put", help="store a file or directory, print its ID")
    p.add_argument("path")
    p.set_defaults(func=cmd_put)

    p = sub.add_parser("get", help="write an object to a path")
    p.add_argument("id")
    p.add_argument("-o", "--output", metavar="PATH", help="where to write (default: ./ID)")
    _fetch_options(p)
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("cat", help="write an object's bytes to stdout")
    p.add_argument("id")
    _fetch_options(p)
    p.set_defaults(func=cmd_cat)

    p = sub.add_parser("pair", help="pair with another device using a one-time code")
    p.add_argument("code", nargs="?", help="the code shown by `dizzy pair` on the other device")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait (default: 600 to invite, 30 to join)")
    p.add_argument("--address", metavar="HOST:PORT",
                   help="the inviting daemon's listen address, where mDNS does not reach")
    p.set_defaults(func=cmd_pair)

    p = sub.add_parser("peers", help="list paired devices (and unpaired ones nearby)")
    p.add_argument("--json", action="store_true",
                   help="JSON list of paired devices (with --all: {paired, nearby})")
    p.add_argument("--all", action="store_true", help="with --json: include nearby devices")
    p.set_defaults(func=cmd_peers)

    p = sub.add_parser("unpair", help="stop trusting a device")
    p.add_argument("device_id")
    p.set_defaults(func=cmd_unpair)

    p = sub.add_parser("share", help="share a folder under a name")
    p.add_argument("name")
    p.add_argument("path")
    p.add_argument("--mode", choices=["send-receive", "send-only", "receive-only"],
                   default="send-receive")
    p.set_defaults(func=cmd_share)

    p = sub.add_parser("unshare", help="stop sharing a folder (deletes nothing)")
    p.add_argument("name")
    p.set_defaults(func=cmd_unshare)

    p = sub.add_parser("folders", help="list shared folders")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_folders)

    for extend in _EXTENSIONS:
        extend(sub)
    return parser


def _fetch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="give up fetching from peers after S seconds (exit 6)")
    p.add_argument("--wait", action="store_true",
                   help="wait for a device that has the object to come online")


#: later layers add their subcommands here (events, log, service: cli_ops)
_EXTENSIONS: list[Callable[[Any], None]] = [cli_ops.add_commands]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
    except DizzyError as exc:
        if args.debug:
            raise
        print(f"dizzy: {exc.message}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("dizzy: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        # `dizzy cat ID | head`: the reader left; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except Exception as exc:
        if args.debug:
            raise
        print(f"dizzy: internal error: {type(exc).__name__}: {exc} (rerun with --debug)",
              file=sys.stderr)
        code = 1
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
