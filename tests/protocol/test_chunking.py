"""Chunk boundaries: golden vectors, and the stream chunker agrees with the buffer one."""

from __future__ import annotations

import random

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyfastcdc import FastCDC

from dizzy.protocol.chunking import (
    CHUNK_AVG,
    CHUNK_MAX,
    CHUNK_MIN,
    StreamChunker,
    chunk_spans,
)

GOLDEN_LEN = 8 * 1024 * 1024 + 12345


def golden_data(length: int = GOLDEN_LEN, seed: bytes = b"dizzy-golden") -> bytes:
    return blake3.blake3(seed).digest(length=length)


# Two peers must cut the same bytes the same way: if this changes, every outboard
# ever published changes with it.  Never edit these numbers to make a test pass.
GOLDEN_8M = [
    (0, 1833907, "266f049d03d3213e5dc7e6214ce90d109ffbadc5a897798b5a7080435cfc1ec1"),
    (1833907, 1446335, "0ad722ac403a124263dc770f6f3ee78a3652f44f39be115f6c9efa6bc02bedf7"),
    (3280242, 1581142, "9c046045ed7f799001aba2f1ca5b00320b651f9b2dd9869738a5fd1d1fb7716a"),
    (4861384, 1565681, "6d514282fbbfdf13bb484fe83eb9447ca4231d7160d2dda34d369d257bd68597"),
    (6427065, 358420, "61dd325e86b7b96decbc81b88d2473b176b1c12b92ad51afdafe38c120db92de"),
    (6785485, 316214, "7becf56e4f2788d7fe5ddbb2b3bfad31a467b91103c00894deeccea979cf8edb"),
    (7101699, 1299254, "8ee959f90f91dfddff32313483dbd2ce638ee11a1a8404202433464adb75f1c4"),
]
# Zeros never match the gear mask, so this pins the forced cut at CHUNK_MAX.
GOLDEN_ZEROS = [
    (0, 4194304, "04e52cd2da6a0e1f338b0078369130d96585c1de65057da5dd1283b12fb853e1"),
    (4194304, 4194304, "04e52cd2da6a0e1f338b0078369130d96585c1de65057da5dd1283b12fb853e1"),
    (8388608, 1048577, "c9b3e89559bb623b5e2dc19daebf3933c1afe5ee5dca08428522e60a40fcb998"),
]


@pytest.fixture(scope="module")
def golden() -> bytes:
    return golden_data()


def with_hashes(data: bytes, spans: list[tuple[int, int]]) -> list[tuple[int, int, str]]:
    return [(o, n, blake3.blake3(data[o : o + n]).hexdigest()) for o, n in spans]


def test_parameters_are_the_documented_ones() -> None:
    assert (CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) == (256 * 1024, 1024 * 1024, 4 * 1024 * 1024)


def test_golden_8mib(golden: bytes) -> None:
    assert with_hashes(golden, chunk_spans(golden)) == GOLDEN_8M
    assert GOLDEN_8M[-1][0] + GOLDEN_8M[-1][1] == GOLDEN_LEN


def test_golden_zeros_cut_at_max() -> None:
    data = bytes(9 * 1024 * 1024 + 1)
    assert with_hashes(data, chunk_spans(data)) == GOLDEN_ZEROS


def test_golden_small_is_one_chunk() -> None:
    data = golden_data(1000)
    assert chunk_spans(data) == [(0, 1000)]
    assert blake3.blake3(data).hexdigest() == (
        "daac4f25853d65c2c2deaf40ecd494debe787ec0affe72e78a063b5186036254"
    )


def test_empty_has_no_chunks() -> None:
    assert chunk_spans(b"") == []
    chunker = StreamChunker()
    assert chunker.feed(b"") == []
    assert chunker.finish() == []


@pytest.mark.parametrize("length", [1, CHUNK_MIN - 1, CHUNK_MIN])
def test_below_minimum_is_one_chunk(length: int) -> None:
    data = golden_data(length)
    assert chunk_spans(data) == [(0, length)]
    assert chunk_spans(bytearray(data)) == [(0, length)]


def test_sizes_within_bounds(golden: bytes) -> None:
    spans = chunk_spans(golden)
    assert all(CHUNK_MIN <= n <= CHUNK_MAX for _, n in spans[:-1])
    assert 0 < spans[-1][1] <= CHUNK_MAX


def stream(chunker: StreamChunker, data: bytes, sizes: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    pos = 0
    turn = 0
    while pos < len(data):
        size = sizes[turn % len(sizes)]
        turn += 1
        out += chunker.feed(data[pos : pos + size])
        pos += size
        # bounded memory, whatever the block sizes
        assert chunker.buffered <= chunker._max
        assert chunker.offset + chunker.buffered <= pos
    out += chunker.finish()
    return out


@pytest.mark.parametrize(
    "sizes",
    [
        [GOLDEN_LEN],
        [16 * 1024 * 1024],
        [8 * 1024 * 1024],
        [4 * 1024 * 1024],
        [CHUNK_MAX - 1, CHUNK_MAX + 1],
        [1024 * 1024 + 7],
        [65536],
        [1, 3, 7, 333_333, 2_000_001],
    ],
)
def test_stream_matches_golden(golden: bytes, sizes: list[int]) -> None:
    assert stream(StreamChunker(), golden, sizes) == [(o, n) for o, n, _ in GOLDEN_8M]


def test_stream_accepts_memoryview_and_bytearray(golden: bytes) -> None:
    chunker = StreamChunker()
    view = memoryview(golden)
    out = chunker.feed(view[:5_000_000]) + chunker.feed(bytearray(view[5_000_000:]))
    assert out + chunker.finish() == chunk_spans(golden)


def test_stream_misuse_is_refused() -> None:
    chunker = StreamChunker()
    chunker.finish()
    with pytest.raises(RuntimeError):
        chunker.feed(b"x")
    with pytest.raises(RuntimeError):
        chunker.finish()


class TinyChunker(StreamChunker):
    """pyfastcdc's smallest legal parameters: every boundary case in a few KiB."""

    _cutter = FastCDC(256, min_size=64, max_size=1024)
    _min = 64
    _max = 1024


def tiny_spans(data: bytes) -> list[tuple[int, int]]:
    return [(c.offset, c.length) for c in TinyChunker._cutter.cut_buf(data)]


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=6000),
        # long runs without a cut point exercise the forced cut at the maximum
        st.integers(0, 6000).map(bytes),
        st.tuples(st.integers(0, 2**32), st.integers(0, 20000)).map(
            lambda t: golden_data(t[1], t[0].to_bytes(5, "big"))
        ),
    ),
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=20),
)
def test_tiny_stream_equals_buffer(data: bytes, sizes: list[int]) -> None:
    assert stream(TinyChunker(), data, sizes) == tiny_spans(data)


def test_tiny_one_byte_at_a_time() -> None:
    rng = random.Random(7)
    for trial in range(20):
        data = golden_data(rng.randrange(0, 5000), trial.to_bytes(2, "big"))
        assert stream(TinyChunker(), data, [1]) == tiny_spans(data)


@settings(max_examples=8, deadline=None)
@given(
    seed=st.binary(min_size=1, max_size=8),
    length=st.integers(0, 12 * 1024 * 1024),
    sizes=st.lists(st.integers(1, 9 * 1024 * 1024), min_size=1, max_size=4),
)
def test_real_stream_equals_buffer(seed: bytes, length: int, sizes: list[int]) -> None:
    # keep the block count bounded so tiny sizes do not make this slow
    sizes = [max(s, length // 64 + 1) for s in sizes]
    data = golden_data(length, seed)
    assert stream(StreamChunker(), data, sizes) == chunk_spans(data)
