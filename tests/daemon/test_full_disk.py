"""A full disk during put and get: a clear error, nothing half-written, the daemon lives.

Each test mounts a small tmpfs (root only; CI runs as root) and removes it after.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from tests.daemons import DaemonProcess, running_daemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def error_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == 4, (proc.returncode, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]


def test_put_onto_a_full_store(small_disk: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 1024 * 1024))
    with running_daemon(small_disk / "home", "--listen", "127.0.0.1:0") as daemon:
        err = error_line(daemon.cli("put", str(big)))
        assert "no space left on device" in err
        assert leftovers(small_disk / "home" / "objects") == []
        assert leftovers(small_disk / "home" / "tmp") == []
        # The daemon is still there, and a put that fits still works.
        small = tmp_path / "small.bin"
        small.write_bytes(b"still fine")
        oid = daemon.cli("put", str(small), check=True).stdout.decode().strip()
        assert oid == blake3.blake3(b"still fine").hexdigest()


def test_get_onto_a_full_disk(daemon: DaemonProcess, small_disk: Path, tmp_path: Path) -> None:
    data = os.urandom(12 * 1024 * 1024)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    oid = daemon.cli("put", str(src), check=True).stdout.decode().strip()
    out = small_disk / "out.bin"
    err = error_line(daemon.cli("get", oid, "-o", str(out)))
    assert "no space left on device" in err
    assert leftovers(small_disk) == []  # neither `out.bin` nor a temp file beside it
    # A good file already there is not replaced by a half-written one.
    out.write_bytes(b"precious")
    error_line(daemon.cli("get", oid, "-o", str(out)))
    assert out.read_bytes() == b"precious"
    assert [p.name for p in leftovers(small_disk)] == ["out.bin"]
    assert daemon.cli("status", check=True).returncode == 0


def test_tree_get_onto_a_full_disk(daemon: DaemonProcess, small_disk: Path,
                                   tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    for i in range(4):
        (tree / "sub" / f"f{i}").write_bytes(os.urandom(3 * 1024 * 1024))
    tree_id = daemon.cli("put", str(tree), check=True).stdout.decode().strip()
    error_line(daemon.cli("get", tree_id, "-o", str(small_disk / "restored")))
    assert list(small_disk.iterdir()) == []
