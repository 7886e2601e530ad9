"""One human line per event: the daemon's log line and ``dizzy events``' output.

Pure (no trio, no I/O), so the CLI formats events exactly as the daemon logs them.
``log_level`` says whether an event is worth a log line at all: progress ticks and
folder state flips are for live views, not for the log file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

Data = Mapping[str, Any]

#: event types logged as warnings: something the user may have to act on
_WARNINGS = frozenset({"peer.refused", "pairing.failed", "transfer.failed", "conflict"})
#: never logged: a transfer's ticks (its start and end are)
_QUIET = frozenset({"transfer.progress", "events.dropped"})


def short(device_id: object) -> str:
    """The first group of a dashed device ID (what logs and conflict names use)."""
    return str(device_id).split("-", 1)[0] if device_id else "?"


def human_bytes(n: object) -> str:
    if not isinstance(n, int | float):
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop always returns


def _rate(data: Data) -> str:
    rate = data.get("rate")
    return f"{rate / 1e6:.1f} MB/s" if isinstance(rate, int | float) else "? MB/s"


def _transfer_finished(d: Data) -> str:
    # "fetched ID: N bytes in S s, R MB/s" is what people (and tests) grep for.
    text = (f"fetched {d.get('object_id')}: {d.get('bytes')} bytes in "
            f"{d.get('seconds', 0):.2f} s, {_rate(d)}")
    if d.get("already"):
        text += f" ({d['already']} bytes were already here)"
    return text


def _transfer_progress(d: Data) -> str:
    total = d.get("total")
    done = d.get("done", 0)
    share = f" ({100 * done / total:.0f}%)" if isinstance(total, int) and total else ""
    return (f"fetching {d.get('object_id')}: {human_bytes(done)} of "
            f"{human_bytes(total)}{share}, {_rate(d)}")


def _folder_state(d: Data) -> str:
    if d.get("state") == "error":
        return f"folder {d.get('folder')} paused: {d.get('error')}"
    text = f"folder {d.get('folder')} is {d.get('state')}"
    if d.get("previous") == "error":
        text += " (no longer in error)"
    return text


_FORMATS: dict[str, Callable[[Data], str]] = {
    "peer.online": lambda d: f"peer {d.get('device_id')} ({d.get('name')}) is online at "
                             f"{d.get('address')}",
    "peer.offline": lambda d: f"peer {d.get('device_id')} ({d.get('name')}) is offline: "
                              f"{d.get('reason')}",
    "peer.refused": lambda d: f"refused {d.get('device_id') or 'an unnamed device'} at "
                              f"{d.get('address')}: {d.get('reason')}",
    "peer.paired": lambda d: f"paired with {d.get('device_id')} ({d.get('name')})",
    "peer.unpaired": lambda d: f"unpaired {d.get('device_id')}",
    "pairing.started": lambda d: f"pairing invitation {d.get('nameplate')} open",
    "pairing.failed": lambda d: f"pairing failed: {d.get('reason')}",
    "folder.state": _folder_state,
    "folder.scanned": lambda d: f"folder {d.get('folder')}: {d.get('files')} files "
                                f"({human_bytes(d.get('bytes'))}); {d.get('added', '?')} "
                                f"added, {d.get('modified', '?')} changed, "
                                f"{d.get('removed', '?')} removed; scanned in "
                                f"{d.get('seconds', 0):.2f} s",
    "folder.shared": lambda d: f"sharing folder {d.get('folder')} at {d.get('path')}",
    "folder.unshared": lambda d: f"stopped sharing folder {d.get('folder')} at "
                                 f"{d.get('path')} (its files are untouched)",
    "transfer.started": lambda d: f"fetching {d.get('object_id')} "
                                  f"({human_bytes(d.get('total'))}) from "
                                  f"{', '.join(short(p) for p in d.get('peers') or [])}"
                                  + (f" for {d['what']}" if d.get("what") else ""),
    "transfer.progress": _transfer_progress,
    "transfer.finished": _transfer_finished,
    "transfer.failed": lambda d: f"fetching {d.get('object_id')} failed: {d.get('error')}",
    "conflict": lambda d: f"folder {d.get('folder')}: conflict on {d.get('path')}; this "
                          f"device's version kept as {d.get('conflict_path')}",
    "error": lambda d: f"{d.get('where')}: {d.get('message')}",
    "events.dropped": lambda d: f"{d.get('count')} events were missed (the reader was slow)",
}


def describe(type: str, data: Data) -> str:
    """The event as one line of text (without its time and type)."""
    fmt = _FORMATS.get(type)
    if fmt is not None:
        try:
            return fmt(data)
        except (TypeError, ValueError):  # a malformed event must not stop a reader
            pass
    return " ".join(f"{k}={v}" for k, v in sorted(data.items()))


def log_level(type: str, data: Data) -> int | None:
    """The level to log the event at, or None for events not worth a log line."""
    if type in _QUIET:
        return None
    if type == "folder.state":
        # Scans flip scanning/idle all day: only going into an error and coming back
        # from one are news (repeats of the same error are not published at all).
        if data.get("state") == "error":
            return logging.WARNING
        return logging.INFO if data.get("previous") == "error" else None
    if type == "error":
        return logging.ERROR
    if type in _WARNINGS:
        return logging.WARNING
    return logging.INFO


def logger_name(type: str) -> str:
    """``dizzy.peer``, ``dizzy.transfer``...: the part of the daemon it is about."""
    return "dizzy." + type.split(".", 1)[0]
