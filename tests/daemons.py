"""Run real ``dizzy daemon`` processes and the real CLI, for tests.

Every daemon here runs with ``--no-mdns`` on loopback unless a test puts it inside a
network namespace (see tests/netns.py): multicast must never leave this host.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: a daemon must answer on its control socket this soon after starting
START_TIMEOUT = 20.0
#: a daemon must exit this soon after SIGTERM
STOP_TIMEOUT = 15.0


def dizzy_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "dizzy.client.cli", *args]


def run_cli(
    home: Path, *args: str, timeout: float = 120.0, input: bytes | None = None,
    check: bool = False, env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(
        dizzy_argv("--home", str(home), *args),
        capture_output=True,
        timeout=timeout,
        input=input,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"dizzy {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()}"
        )
    return proc


class DaemonProcess:
    def __init__(self, home: Path, extra: Sequence[str] = (), prefix: Sequence[str] = ()):
        self.home = home
        # Test daemons serve no web page unless asked (--gui HOST:PORT): the default
        # port would be contended by every daemon a test starts.
        wants_gui = any(a == "--no-gui" or a.startswith("--gui") for a in extra)
        self.extra = list(extra) if wants_gui else [*extra, "--no-gui"]
        self.prefix = list(prefix)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home.parent / f"{home.name}.daemon.log"

    def start(self, *, wait: bool = True) -> DaemonProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [*self.prefix, *dizzy_argv("--home", str(self.home), "daemon", *self.extra)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        from dizzy.client import Client, DizzyError

        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited early:\n{self.log()}")
            try:
                Client(self.home).status()
                return
            except DizzyError as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"daemon not ready in {timeout}s:\n{self.log()}"
                    ) from exc
                time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"daemon ignored SIGTERM:\n{self.log()}") from None

    def cli(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return run_cli(self.home, *args, **kwargs)


@contextmanager
def running_daemon(home: Path, *extra: str) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(home, ["--no-mdns", *extra]).start()
    try:
        yield daemon
    finally:
        daemon.stop()
