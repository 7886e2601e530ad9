"""The whole-object hash computed while chunks land: in any order, across restarts."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import blake3
import pytest

from dizzy.daemon.ordered_hash import OrderedHasher
from dizzy.protocol.outboard import Outboard, outboard_of

SIZE = 9 * 1024 * 1024  # several FastCDC chunks (1 MiB average)


@contextmanager
def partial_file(tmp_path: Path, size: int) -> Iterator[tuple[bytes, Outboard, int]]:
    data = random.Random(size).randbytes(size)
    fd = os.open(tmp_path / "partial", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, size)
    try:
        yield data, outboard_of(data), fd
    finally:
        os.close(fd)


def land(hasher: OrderedHasher, fd: int, data: bytes, outboard: Outboard, index: int) -> None:
    ref = outboard.chunks[index]
    piece = data[ref.offset:ref.offset + ref.length]
    os.pwrite(fd, piece, ref.offset)
    hasher.landed(index, piece)


def test_object_has_several_chunks(tmp_path: Path) -> None:
    with partial_file(tmp_path, SIZE) as (_, outboard, _fd):
        assert len(outboard.chunks) >= 5


@pytest.mark.parametrize("order", ["in order", "reversed", "shuffled"])
def test_any_landing_order_gives_the_object_id(tmp_path: Path, order: str) -> None:
    with partial_file(tmp_path, SIZE) as (data, outboard, fd):
        indices = list(range(len(outboard.chunks)))
        if order == "reversed":
            indices.reverse()
        elif order == "shuffled":
            random.Random(7).shuffle(indices)
        hasher = OrderedHasher(outboard, fd, set())
        for i in indices:
            land(hasher, fd, data, outboard, i)
        assert hasher.hexdigest() == blake3.blake3(data).hexdigest()


def test_chunks_from_before_a_restart_are_read_back(tmp_path: Path) -> None:
    with partial_file(tmp_path, SIZE) as (data, outboard, fd):
        n = len(outboard.chunks)
        earlier = {0, 1, n - 1}
        for i in earlier:
            ref = outboard.chunks[i]
            os.pwrite(fd, data[ref.offset:ref.end], ref.offset)
        hasher = OrderedHasher(outboard, fd, earlier)
        for i in range(2, n - 1):
            land(hasher, fd, data, outboard, i)
        assert hasher.hexdigest() == blake3.blake3(data).hexdigest()


def test_wrong_bytes_in_the_file_change_the_id(tmp_path: Path) -> None:
    """Read-back chunks are hashed from the file, not trusted: a damaged one shows."""
    with partial_file(tmp_path, SIZE) as (data, outboard, fd):
        hasher = OrderedHasher(outboard, fd, set())
        for i in reversed(range(1, len(outboard.chunks))):
            land(hasher, fd, data, outboard, i)
        os.pwrite(fd, b"\x00" * 16, outboard.chunks[1].offset)  # read back after chunk 0
        land(hasher, fd, data, outboard, 0)
        assert hasher.hexdigest() != blake3.blake3(data).hexdigest()


def test_landing_from_many_threads(tmp_path: Path) -> None:
    with partial_file(tmp_path, SIZE) as (data, outboard, fd):
        hasher = OrderedHasher(outboard, fd, set())
        indices = list(range(len(outboard.chunks)))
        random.Random(3).shuffle(indices)
        threads = [threading.Thread(target=lambda part=indices[k::4]: [
            land(hasher, fd, data, outboard, i) for i in part]) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert hasher.hexdigest() == blake3.blake3(data).hexdigest()


def test_empty_object(tmp_path: Path) -> None:
    with partial_file(tmp_path, 0) as (_, outboard, fd):
        assert OrderedHasher(outboard, fd, set()).hexdigest() == blake3.blake3(b"").hexdigest()
