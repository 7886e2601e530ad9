"""Content-defined chunking: where an object's bytes are cut into chunks.

Two peers must cut the same bytes at the same offsets, or they cannot reuse each
other's chunks, so the parameters below are part of the protocol: changing any of
them (or the pyfastcdc version's behaviour) changes every outboard.  The golden
vectors in ``tests/protocol/test_chunking.py`` pin them.

``chunk_spans`` cuts an in-memory buffer; ``StreamChunker`` cuts a stream fed in
blocks of any size and yields exactly the same spans.  It relies on one property of
FastCDC's cut function: the cut of a chunk depends only on the first ``CHUNK_MAX``
bytes from its start, and a cut point found *before* the end of the available bytes
is the same cut the whole stream would give (the scan visits the same positions with
the same masks, and stops at the first match).  So a chunk is final once either
``CHUNK_MAX`` bytes from its start are known or a cut was found short of the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from pyfastcdc import FastCDC

#: Below this a chunk costs more in per-request overhead (frame, hash, index row)
#: than it saves in deduplication; small files are one chunk anyway.
CHUNK_MIN: Final = 256 * 1024
#: pyfastcdc's ``avg_size`` is the mean distance *past* the minimum (cut-point
#: skipping, FastCDC paper section 3.4), so the real mean is about
#: ``CHUNK_MIN + _FASTCDC_AVG_PARAM`` = 1 MiB: small enough that an edit re-sends
#: little, large enough that a 1 GiB file is about a thousand chunks.
_FASTCDC_AVG_PARAM: Final = 768 * 1024
#: the intended mean chunk size (documentation and capacity planning only)
CHUNK_AVG: Final = CHUNK_MIN + _FASTCDC_AVG_PARAM
#: One chunk must fit in one peer frame (framing.PEER_MAX_FRAME is 5 MiB) with room
#: for the envelope, and bounds what a receiver buffers before it can verify.
CHUNK_MAX: Final = 4 * 1024 * 1024
#: NC level 1 (the pyfastcdc and fastcdc-rs default): narrows the size spread
#: without hurting deduplication much.  Fixed, because it changes the boundaries.
_NORMALIZED_CHUNKING: Final = 1
#: The default gear table of the FastCDC reference code; a seed would only help
#: to hide chunk sizes, which the outboard reveals anyway.
_GEAR_SEED: Final = 0

Span = tuple[int, int]
"""(offset, length) of one chunk within its object."""

Buffer = bytes | bytearray | memoryview


def _new_cutter() -> FastCDC:
    return FastCDC(
        _FASTCDC_AVG_PARAM,
        min_size=CHUNK_MIN,
        max_size=CHUNK_MAX,
        normalized_chunking=_NORMALIZED_CHUNKING,
        seed=_GEAR_SEED,
    )


# The cutter holds only its parameters; sharing one is safe as each cut_buf call
# returns an independent iterator.
_CUTTER: Final = _new_cutter()


def chunk_spans(data: Buffer) -> list[Span]:
    """The (offset, length) of every chunk of ``data``; no chunks for empty data."""
    return [(c.offset, c.length) for c in _CUTTER.cut_buf(data)]


class StreamChunker:
    """Cuts a stream fed in blocks of any size, sans-IO.

    ``feed(block)`` returns the spans that became final; ``finish()`` returns the
    rest.  The concatenated result equals ``chunk_spans`` of the whole stream.
    At most ``CHUNK_MAX`` bytes stay buffered between calls; a large block is cut in
    place and only its undecided tail is copied.

    ``on_chunk``, if given, is called with the bytes of each final chunk, in order,
    before ``feed``/``finish`` returns: a caller that hashes chunks needs no copy
    of its own.  The view is only valid during the call; do not keep it.
    """

    # Class attributes so a test can subclass with tiny parameters and exercise
    # every boundary case with small inputs; the protocol uses only these values.
    _cutter: FastCDC = _CUTTER
    _min: int = CHUNK_MIN
    _max: int = CHUNK_MAX

    def __init__(self, on_chunk: Callable[[memoryview], None] | None = None) -> None:
        self._on_chunk = on_chunk
        # bytes of the stream from ``self._offset`` on that are not in a span yet;
        # they always begin at a chunk boundary
        self._carry = bytearray()
        self._offset = 0
        self._finished = False

    @property
    def offset(self) -> int:
        """Stream offset up to which spans have been returned."""
        return self._offset

    @property
    def buffered(self) -> int:
        return len(self._carry)

    def feed(self, block: Buffer) -> list[Span]:
        if self._finished:
            raise RuntimeError("StreamChunker.feed() after finish()")
        spans: list[Span] = []
        view = memoryview(block).cast("B")
        size = len(view)
        pos = 0  # first byte of ``view`` not yet in the carry nor in a span
        while self._carry:
            # Lend the carry just enough of the block to decide its first chunk.
            borrowed = min(size - pos, max(self._max - len(self._carry), 0))
            own = len(self._carry)
            self._carry += view[pos : pos + borrowed]
            pos += borrowed
            if len(self._carry) < self._max:
                return spans  # the block is used up and nothing is decided yet
            used = self._drain(self._carry, spans, final=False)
            if used >= own:
                # The carry is spent; what is left of it is still in the block,
                # which is cheaper to cut in place than to copy.
                pos -= len(self._carry) - used
                self._carry = bytearray()
            else:
                del self._carry[:used]
        used = self._drain(view[pos:], spans, final=False)
        self._carry = bytearray(view[pos + used :])
        return spans

    def finish(self) -> list[Span]:
        """Spans of everything fed and not yet returned; the chunker is then done."""
        if self._finished:
            raise RuntimeError("StreamChunker.finish() called twice")
        self._finished = True
        spans: list[Span] = []
        self._drain(self._carry, spans, final=True)
        self._carry = bytearray()
        return spans

    def _drain(self, buf: Buffer, spans: list[Span], *, final: bool) -> int:
        """Append the final spans found at the start of ``buf``; return bytes used."""
        size = len(buf)
        used = 0
        # Stepping the iterator by hand: each step scans up to ``_max`` bytes, so
        # we stop *before* a step whose answer could not be trusted.
        chunks = self._cutter.cut_buf(buf)
        on_chunk = self._on_chunk
        while used < size:
            remaining = size - used
            if not final and remaining <= self._min:
                break  # the cutter would just return everything: not a decision
            chunk = next(chunks)
            if not final and remaining < self._max and chunk.length >= remaining:
                # no cut found before the end of what we have: more bytes could
                # still move it, so keep these bytes for the next feed
                break
            if on_chunk is not None:
                with memoryview(buf)[used : used + chunk.length] as data:
                    on_chunk(data)
            spans.append((self._offset, chunk.length))
            self._offset += chunk.length
            used += chunk.length
        # returning drops ``chunks`` and with it its export of ``buf``, so a
        # bytearray passed in can be resized again by the caller
        return used
