"""Killed in the middle: no half-written file ever sits under a final name."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import blake3

from tests.daemons import DaemonProcess, dizzy_argv

SIZE = 400 * 1024 * 1024


def big_file(path: Path) -> bytes:
    data = os.urandom(SIZE)
    path.write_bytes(data)
    return data


def wait_for_temp(directory: Path, pattern: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(p.stat().st_size > 0 for p in directory.glob(pattern)):
        assert time.monotonic() < deadline, f"no {pattern} appeared in {directory}"
        time.sleep(0.005)


def test_killed_put_client_leaves_nothing(daemon: DaemonProcess, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    data = big_file(src)
    proc = subprocess.Popen(dizzy_argv("--home", str(daemon.home), "put", str(src)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_temp(daemon.home / "tmp", "*.tmp")
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while list((daemon.home / "tmp").iterdir()):
        assert time.monotonic() < deadline, "the daemon did not drop the cancelled put"
        time.sleep(0.05)
    assert not list((daemon.home / "objects").rglob(blake3.blake3(data).hexdigest()))
    # and a put afterwards works
    out = daemon.cli("put", str(src), check=True).stdout.decode().strip()
    assert out == blake3.blake3(data).hexdigest()


def test_daemon_killed_during_put_and_get(tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    data = big_file(src)
    oid = blake3.blake3(data).hexdigest()
    daemon = DaemonProcess(tmp_path / "home", ["--no-mdns", "--listen", "127.0.0.1:0"]).start()
    try:
        put = subprocess.Popen(dizzy_argv("--home", str(daemon.home), "put", str(src)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for_temp(daemon.home / "tmp", "*.tmp")
        daemon.kill9()
        _, err = put.communicate(timeout=30)
        assert put.returncode != 0 and err.decode().count("\n") == 1, err
        assert not list((daemon.home / "objects").rglob(oid))
        daemon.start()  # a stale socket and temp files do not block a new start
        assert list((daemon.home / "tmp").iterdir()) == []
        daemon.cli("put", str(src), check=True)

        out_dir = tmp_path / "out"
        out_dir.mkdir()
        (out_dir / "result.bin").write_bytes(b"the old, good version")
        get = subprocess.Popen(
            dizzy_argv("--home", str(daemon.home), "get", oid, "-o",
                       str(out_dir / "result.bin")),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for_temp(out_dir, ".result.bin.*.tmp")
        daemon.signal(signal.SIGKILL)
        get.communicate(timeout=30)
        assert get.returncode != 0
        # The final name still holds the old file, whole.
        assert (out_dir / "result.bin").read_bytes() == b"the old, good version"
    finally:
        daemon.stop()
