"""The object store through the real CLI against a real daemon process."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from dizzy.client import Client
from dizzy.protocol.errors import BadObjectId, DaemonNotRunning, NotFound
from tests.daemons import DaemonProcess, run_cli


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def one_line_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert err.count("\n") == 1 and err.startswith("dizzy: "), err
    assert "Traceback" not in err
    return err


def test_status_and_id(daemon: DaemonProcess) -> None:
    status = daemon.cli("status", "--json", check=True)
    import json

    info = json.loads(status.stdout)
    ident = daemon.cli("id", check=True).stdout.decode().strip()
    assert info["device_id"] == ident
    assert info["pid"] == daemon.proc.pid  # type: ignore[union-attr]
    human = daemon.cli("status", check=True).stdout.decode()
    assert ident in human


def test_put_get_file_round_trip(daemon: DaemonProcess, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    put = daemon.cli("put", str(src), check=True)
    oid = put.stdout.decode().strip()
    assert oid == b3(data)
    out = tmp_path / "out.bin"
    daemon.cli("get", oid, "-o", str(out), check=True)
    assert out.read_bytes() == data
    cat = daemon.cli("cat", oid, check=True)
    assert cat.stdout == data
    # Putting the same content again stores it once.
    again = tmp_path / "again.bin"
    again.write_bytes(data)
    assert daemon.cli("put", str(again), check=True).stdout.decode().strip() == oid
    stored = list((daemon.home / "objects").rglob(oid))
    assert len(stored) == 1


def test_empty_file(daemon: DaemonProcess, tmp_path: Path) -> None:
    src = tmp_path / "empty"
    src.write_bytes(b"")
    oid = daemon.cli("put", str(src), check=True).stdout.decode().strip()
    assert oid == b3(b"")
    assert daemon.cli("cat", oid, check=True).stdout == b""


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    (root / "sub" / "secret").write_bytes(os.urandom(5000))
    os.chmod(root / "sub" / "secret", 0o600)
    (root / "sub" / "deeper" / "big.bin").write_bytes(os.urandom(2_500_000))
    (root / "sub" / "dup.txt").write_bytes(b"alpha\n")
    os.symlink("a.txt", root / "link-to-a")
    os.chmod(root / "sub", 0o750)


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    out: dict[str, tuple[int, bytes | str | None]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = (0, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = (stat.S_IMODE(st.st_mode), None)
            else:
                out[rel] = (stat.S_IMODE(st.st_mode), p.read_bytes())
    return out


def test_tree_round_trip_with_modes(daemon: DaemonProcess, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    make_tree(src)
    tree_id = daemon.cli("put", str(src), check=True).stdout.decode().strip()
    assert len(tree_id) == 64
    # The same tree has the same ID.
    assert daemon.cli("put", str(src), check=True).stdout.decode().strip() == tree_id
    out = tmp_path / "restored"
    daemon.cli("get", tree_id, "-o", str(out), check=True)
    assert snapshot(out) == snapshot(src)
    # A tree cannot be cat'ed, and an existing directory is not overwritten.
    assert "directory tree" in one_line_error(daemon.cli("cat", tree_id))
    assert "already exists" in one_line_error(daemon.cli("get", tree_id, "-o", str(out)))


def test_get_without_output_writes_id_in_cwd(daemon: DaemonProcess, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"hello")
    oid = daemon.cli("put", str(src), check=True).stdout.decode().strip()
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "dizzy.client.cli", "--home", str(daemon.home), "get", oid],
        cwd=work, capture_output=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert (work / oid).read_bytes() == b"hello"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["get", "xyz", "-o", "/tmp/x"], "not an object ID"),
        (["get", "0" * 64, "-o", "/tmp/x"], "is not here"),
        (["cat", "0" * 64], "is not here"),
        (["put", "/nonexistent/file"], "no such file"),
        (["get", "0" * 64, "-o", "/nonexistent-dir/out"], "output directory does not exist"),
    ],
)
def test_bad_input_one_line(daemon: DaemonProcess, args: list[str], needle: str) -> None:
    assert needle in one_line_error(daemon.cli(*args))


def test_unreadable_file(daemon: DaemonProcess, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root reads everything; use a directory we cannot list instead via a socket file
        sock_dir = tmp_path / "d"
        sock_dir.mkdir()
        import socket

        s = socket.socket(socket.AF_UNIX)
        s.bind(str(sock_dir / "sock"))
        err = one_line_error(daemon.cli("put", str(sock_dir / "sock")))
        s.close()
        assert "not a regular file" in err
    else:
        f = tmp_path / "locked"
        f.write_bytes(b"x")
        f.chmod(0)
        assert "permission denied" in one_line_error(daemon.cli("put", str(f)))


def test_daemon_not_running(tmp_path: Path) -> None:
    proc = run_cli(tmp_path / "nohome", "status")
    assert "not running" in one_line_error(proc)
    with pytest.raises(DaemonNotRunning):
        Client(tmp_path / "nohome").status()


def test_python_client(daemon: DaemonProcess, tmp_path: Path) -> None:
    client = Client(daemon.home)
    data = os.urandom(2_000_000)
    src = tmp_path / "x"
    src.write_bytes(data)
    seen: list[int] = []
    oid = client.put(src, progress=lambda done, total, what: seen.append(done))
    assert oid == b3(data)
    assert client.get(oid, tmp_path / "y").read_bytes() == data
    with client.open(oid) as stream:
        assert stream.read(10) == data[:10]
        assert stream.read() == data[10:]
    assert client.status()["objects"] >= 1
    with pytest.raises(NotFound):
        client.open("1" * 64)
    with pytest.raises(BadObjectId):
        client.get("nope", tmp_path / "z")
