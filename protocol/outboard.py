"""An object's outboard: its chunk list, so a receiver can verify every chunk.

Wire form (canonical msgpack, one value)::

    ["dizzy/outboard/1", object_id: bin 32, size: uint, lengths: [uint, ...],
     hashes: bin (32 bytes per chunk, concatenated)]

Offsets are implied by the lengths, so an outboard cannot contradict itself about
where a chunk starts.  Every chunk but the last is at least ``CHUNK_MIN`` long (the
chunker never cuts shorter), which keeps a hostile outboard from splitting an object
into one-byte chunks, each costing a request and an index row.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Final

import blake3

from .chunking import CHUNK_MAX, CHUNK_MIN, Buffer, StreamChunker
from .errors import LocalProtocolError, RemoteProtocolError, UsageError
from .framing import pack_value, unpack_one

OUTBOARD_MAGIC: Final = "dizzy/outboard/1"
HASH_LEN: Final = 32
#: The encoded outboard must fit in one peer frame (framing.PEER_MAX_FRAME, 5 MiB):
#: 2**17 chunks take 2**17 * (32-byte hash + 5-byte length) = 4.6 MiB.  That is an
#: object of at least 32 GiB (every chunk at CHUNK_MIN), about 140 GiB typically.
MAX_CHUNKS: Final = 1 << 17
#: a cap on what a peer may claim, so size arithmetic stays in sane integers
MAX_OBJECT_SIZE: Final = MAX_CHUNKS * CHUNK_MAX
# canonical form only (lowercase): one object, one spelling
_OBJECT_ID: Final = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One chunk of an object: where it sits and the BLAKE3 that names it."""

    offset: int
    length: int
    hash: bytes

    def __post_init__(self) -> None:
        if type(self.offset) is not int or self.offset < 0:
            raise LocalProtocolError(f"bad chunk offset {self.offset!r}")
        if type(self.length) is not int or not 1 <= self.length <= CHUNK_MAX:
            raise LocalProtocolError(f"bad chunk length {self.length!r}")
        if type(self.hash) is not bytes or len(self.hash) != HASH_LEN:
            raise LocalProtocolError("a chunk hash is 32 bytes")

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def hash_hex(self) -> str:
        return self.hash.hex()


@dataclass(frozen=True)
class Outboard:
    """The chunk list of the object ``object_id``; validates itself on construction.

    Raises ``LocalProtocolError`` when built from inconsistent values; ``decode``
    turns every problem into ``RemoteProtocolError``.
    """

    object_id: str
    size: int
    chunks: tuple[ChunkRef, ...]
    _ends: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.object_id) is not str or not _OBJECT_ID.fullmatch(self.object_id):
            raise LocalProtocolError(f"bad object ID {self.object_id!r}")
        if type(self.size) is not int or not 0 <= self.size <= MAX_OBJECT_SIZE:
            raise LocalProtocolError(f"bad object size {self.size!r}")
        if type(self.chunks) is not tuple:
            raise LocalProtocolError("chunks must be a tuple")
        if len(self.chunks) > MAX_CHUNKS:
            raise LocalProtocolError(f"more than {MAX_CHUNKS} chunks")
        position = 0
        last = len(self.chunks) - 1
        for index, chunk in enumerate(self.chunks):
            if type(chunk) is not ChunkRef:
                raise LocalProtocolError("chunks must be ChunkRef")
            if chunk.offset != position:
                raise LocalProtocolError(
                    f"chunk {index} starts at {chunk.offset}, not at {position}"
                )
            if index != last and chunk.length < CHUNK_MIN:
                raise LocalProtocolError(f"chunk {index} is shorter than {CHUNK_MIN}")
            position += chunk.length
        if position != self.size:
            raise LocalProtocolError(f"chunks cover {position} bytes, object is {self.size}")
        object.__setattr__(self, "_ends", tuple(c.offset + c.length for c in self.chunks))

    @classmethod
    def from_lengths(
        cls, object_id: str, lengths: list[int] | tuple[int, ...], hashes: bytes
    ) -> Outboard:
        """Build from chunk lengths and the concatenated chunk hashes."""
        if len(hashes) != HASH_LEN * len(lengths):
            raise LocalProtocolError("need one 32-byte hash per chunk")
        chunks = []
        offset = 0
        for i, length in enumerate(lengths):
            chunks.append(ChunkRef(offset, length, hashes[i * HASH_LEN : (i + 1) * HASH_LEN]))
            offset += length
        return cls(object_id, offset, tuple(chunks))

    def encode(self) -> bytes:
        return pack_value(
            [
                OUTBOARD_MAGIC,
                bytes.fromhex(self.object_id),
                self.size,
                [c.length for c in self.chunks],
                b"".join(c.hash for c in self.chunks),
            ]
        )

    @classmethod
    def decode(cls, data: Buffer, expected_object_id: str | None = None) -> Outboard:
        """Parse and validate a peer's outboard; ``RemoteProtocolError`` if bad."""
        value = unpack_one(data, "outboard")
        if not (type(value) is list and len(value) == 5):
            raise RemoteProtocolError("outboard: want a 5-element array")
        magic, raw_id, size, lengths, hashes = value
        if magic != OUTBOARD_MAGIC:
            raise RemoteProtocolError(f"outboard: unknown format {str(magic)[:40]!r}")
        if type(raw_id) is not bytes or len(raw_id) != HASH_LEN:
            raise RemoteProtocolError("outboard: object ID must be 32 bytes")
        if type(lengths) is not list or any(type(n) is not int for n in lengths):
            raise RemoteProtocolError("outboard: lengths must be an array of integers")
        if type(hashes) is not bytes:
            raise RemoteProtocolError("outboard: hashes must be bytes")
        if type(size) is not int:
            raise RemoteProtocolError("outboard: size must be an integer")
        if len(lengths) > MAX_CHUNKS:
            raise RemoteProtocolError(f"outboard: more than {MAX_CHUNKS} chunks")
        try:
            outboard = cls.from_lengths(raw_id.hex(), lengths, hashes)
        except LocalProtocolError as exc:
            raise RemoteProtocolError(f"outboard: {exc}") from exc
        if outboard.size != size:
            raise RemoteProtocolError(
                f"outboard: chunks cover {outboard.size} bytes, header says {size}"
            )
        if outboard.encode() != data:
            # e.g. an integer in a wider encoding than needed: equal outboards must be
            # equal bytes, so caches keyed by the bytes cannot disagree
            raise RemoteProtocolError("outboard: not in canonical encoding")
        if expected_object_id is not None and outboard.object_id != expected_object_id:
            raise RemoteProtocolError(
                f"outboard is for {outboard.object_id}, not {expected_object_id}"
            )
        return outboard

    def chunk_index_at(self, offset: int) -> int:
        """Index of the chunk holding byte ``offset``; ``IndexError`` past the end."""
        if not 0 <= offset < self.size:
            raise IndexError(f"offset {offset} outside object of {self.size} bytes")
        return bisect.bisect_right(self._ends, offset)

    def verify_chunk(self, index: int, data: Buffer) -> bool:
        """True if ``data`` is exactly chunk ``index`` (length and BLAKE3)."""
        chunk = self.chunks[index]
        return len(data) == chunk.length and blake3.blake3(data).digest() == chunk.hash




class OutboardBuilder:
    """Computes an object's ID and outboard from its bytes fed in blocks, sans-IO."""

    def __init__(self) -> None:
        # whole-object hash: the object ID, what b3sum prints
        self._whole = blake3.blake3(max_threads=blake3.blake3.AUTO)
        self._lengths: list[int] = []
        self._hashes: list[bytes] = []
        self._chunker = StreamChunker(on_chunk=self._add_chunk)
        self._size = 0

    def _add_chunk(self, data: memoryview) -> None:
        if len(self._lengths) >= MAX_CHUNKS:
            raise UsageError(f"object too large: more than {MAX_CHUNKS} chunks")
        self._lengths.append(len(data))
        self._hashes.append(blake3.blake3(data).digest())

    @property
    def size(self) -> int:
        """Bytes fed so far."""
        return self._size

    def feed(self, block: Buffer) -> None:
        view = memoryview(block).cast("B")
        self._whole.update(view)
        self._size += len(view)
        self._chunker.feed(view)

    def finish(self) -> Outboard:
        self._chunker.finish()
        return Outboard.from_lengths(
            self._whole.hexdigest(), self._lengths, b"".join(self._hashes)
        )


def outboard_of(data: Buffer) -> Outboard:
    """The outboard of a whole in-memory object."""
    builder = OutboardBuilder()
    builder.feed(data)
    return builder.finish()
