"""Read a running CLI's stdout line by line with deadlines (``dizzy events``,
``dizzy log -f``), and stop it with Ctrl-C."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.daemons import dizzy_argv

#: a CLI process reacts (starts, prints, exits on SIGINT) well inside this
CLI_DEADLINE = 15.0


class LineReader:
    """Lines of a running process's stdout, each waited for with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.selector = selectors.DefaultSelector()
        self.selector.register(proc.stdout, selectors.EVENT_READ)
        self.buffer = b""
        self.lines: list[str] = []

    def until(self, predicate: Any, what: str, timeout: float = CLI_DEADLINE) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if predicate(line):
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout:g} s; got {self.lines!r}")
            if self.selector.select(timeout=left):
                assert self.proc.stdout is not None
                data = os.read(self.proc.stdout.fileno(), 65536)
                if not data:
                    raise AssertionError(f"output ended before {what}: {self.lines!r}")
                self.buffer += data
                *done, self.buffer = self.buffer.split(b"\n")
                self.lines += [d.decode() for d in done]

    def interrupt(self) -> tuple[int, bytes]:
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=CLI_DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError("the CLI ignored Ctrl-C") from None
        return self.proc.returncode, err

    def events(self) -> list[dict[str, Any]]:
        """Every line so far, parsed (for ``dizzy events --json``)."""
        return [json.loads(line) for line in self.lines]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def popen(home: Path, *args: str) -> LineReader:
    return LineReader(subprocess.Popen(dizzy_argv("--home", str(home), *args),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE))


def recent_events(home: Path) -> list[dict[str, Any]]:
    """Every event a daemon still holds, read through the Python client (no waiting:
    a stream from id 0 up to the newest id at the moment of asking)."""
    from dizzy.client import Client

    out: list[dict[str, Any]] = []
    with Client(home).events(since=0) as stream:
        newest = stream.last_id
        if newest == 0:
            return out
        for event in stream:
            if event["type"] != "events.dropped":
                out.append(event)
            if event["id"] >= newest:
                return out
    return out
