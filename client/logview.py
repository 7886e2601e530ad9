"""``dizzy log``: the tail of the daemon's log file, and following it across rotations.

Reads the file directly, so it works whether or not the daemon is running.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

#: how often ``follow`` looks for new lines: quick enough to feel live, cheap when idle
FOLLOW_POLL = 0.2
#: bytes read backwards per step while looking for the last lines
_TAIL_BLOCK = 64 * 1024


def tail_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of ``path`` (without newlines), reading only the end."""
    if count <= 0:
        return []
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        data = b""
        pos = end
        # count + 1 newlines guarantee `count` whole lines after the first one
        while pos > 0 and data.count(b"\n") <= count:
            step = min(_TAIL_BLOCK, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[-count:]


def follow(path: Path, *, from_end: bool = True, poll: float = FOLLOW_POLL,
           stop: Callable[[], bool] = lambda: False) -> Iterator[str]:
    """Yield lines appended to ``path`` as they come, forever (or until ``stop()``).

    Survives rotation (the file renamed away and a new one created: the rest of the
    old file is read first, then the new one from its start), truncation, and a file
    that does not exist yet.
    """
    f = _open(path)
    if f is not None and from_end:
        f.seek(0, os.SEEK_END)
    pending = b""
    try:
        while not stop():
            chunk = f.read() if f is not None else b""
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace")
                continue
            if f is None:
                f = _open(path)
                if f is None:
                    time.sleep(poll)
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:  # between a rotation's rename and the new file
                time.sleep(poll)
                continue
            current = os.fstat(f.fileno())
            if (st.st_ino, st.st_dev) != (current.st_ino, current.st_dev):
                f.close()  # rotated, and everything of the old file is read
                f = _open(path)
                pending = b""
                continue
            if st.st_size < f.tell():  # truncated in place
                f.seek(0)
                pending = b""
                continue
            time.sleep(poll)
    finally:
        if f is not None:
            f.close()


def _open(path: Path) -> BinaryIO | None:
    try:
        return open(path, "rb")  # follow() closes it
    except FileNotFoundError:
        return None
