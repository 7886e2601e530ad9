"""Length-prefixed msgpack frames, sans-IO.

A frame is a 4-byte big-endian length followed by that many bytes of one msgpack
value.  ``FrameDecoder`` follows h11's shape: feed it bytes with ``receive_data``
(``b""`` means EOF) and pull values with ``next_frame`` until it says ``NEED_DATA``.
The length is checked against a hard limit *before* any body is buffered, so a peer
announcing a 4 GiB frame costs us four bytes, not four gigabytes.
"""

from __future__ import annotations

import collections
import struct
from typing import Any, Final

import msgpack

from .errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError

HEADER = struct.Struct(">I")

#: Control-socket frames: requests are small, replies carry at most one data block
#: (1 MiB) plus envelope, so 8 MiB leaves room without letting a client pin memory.
CONTROL_MAX_FRAME: Final = 8 * 1024 * 1024
#: Peer frames carry at most one chunk (FastCDC max 4 MiB) plus envelope.
PEER_MAX_FRAME: Final = 5 * 1024 * 1024


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


class _Eof:
    def __repr__(self) -> str:
        return "EOF"


#: returned by ``next_frame`` once the stream ended cleanly between frames
EOF: Final = _Eof()

#: the sentinels' types, for isinstance checks and annotations
NeedData = _NeedData
Eof = _Eof


def _unpack(body: bytes | memoryview) -> Any:
    # strict_map_key=False would let peers use any hashable as a key; we only ever
    # use str keys, so keep msgpack's strict default.  raw=False: str stays str.
    try:
        return msgpack.unpackb(body, raw=False, use_list=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as exc:
        raise RemoteProtocolError(f"malformed frame body: {exc}") from exc


def unpack_one(data: bytes | bytearray | memoryview, what: str) -> Any:
    """Exactly one msgpack value and nothing after it (canonical formats' decoders)."""
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except msgpack.ExtraData as exc:
        raise RemoteProtocolError(f"{what}: trailing bytes after the value") from exc
    except (ValueError, TypeError, msgpack.FormatError, msgpack.StackError) as exc:
        # truncated input raises ValueError ("Unpack failed: incomplete input")
        raise RemoteProtocolError(f"{what}: malformed msgpack: {exc}") from exc


def pack_value(value: Any) -> bytes:
    """The canonical msgpack encoding dizzy uses (bin for bytes, str for text)."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def encode_frame(value: Any, max_size: int = CONTROL_MAX_FRAME) -> bytes:
    body = pack_value(value)
    if len(body) > max_size:
        raise LocalProtocolError(f"frame of {len(body)} bytes exceeds limit {max_size}")
    return HEADER.pack(len(body)) + body


#: bytes values at least this large are not copied into the encoding by
#: ``encode_frame_parts``: a chunk reply's data goes to the socket as it is
LARGE_BYTES: Final = 64 * 1024


def encode_frame_parts(value: Any, max_size: int = CONTROL_MAX_FRAME
                       ) -> list[bytes | memoryview]:
    """The bytes of ``encode_frame(value)``, as parts whose concatenation equals it.

    Large ``bytes`` values inside ``value`` come back as parts of their own, by
    reference: sending a 1 MiB chunk costs no copy into a msgpack buffer and none into
    a frame.  Values without one are encoded by ``encode_frame`` in one part.
    """
    if not _has_large_bytes(value, 3):
        return [encode_frame(value, max_size)]
    parts: list[bytes | memoryview] = []
    pending = bytearray()
    _pack_parts(value, msgpack.Packer(use_bin_type=True), pending, parts)
    if pending:
        parts.append(bytes(pending))
    size = sum(len(part) for part in parts)
    if size > max_size:
        raise LocalProtocolError(f"frame of {size} bytes exceeds limit {max_size}")
    # (the first part is always the small envelope before a large value)
    return [HEADER.pack(size) + parts[0], *parts[1:]]


def _has_large_bytes(value: Any, depth: int) -> bool:
    if isinstance(value, bytes):
        return len(value) >= LARGE_BYTES
    if depth and isinstance(value, dict):
        return any(_has_large_bytes(v, depth - 1) for v in value.values())
    if depth and isinstance(value, list | tuple):
        return any(_has_large_bytes(v, depth - 1) for v in value)
    return False


def _pack_parts(value: Any, packer: msgpack.Packer, pending: bytearray,
                parts: list[bytes | memoryview]) -> None:
    # The same bytes msgpack.packb(use_bin_type=True) writes: containers' headers
    # from the packer, a large bin's header by hand (bin 8/16/32, the smallest that
    # fits, as msgpack chooses), its body by reference.
    if isinstance(value, bytes) and len(value) >= LARGE_BYTES:
        n = len(value)
        pending += (b"\xc5" + n.to_bytes(2, "big")) if n < 1 << 16 else \
            (b"\xc6" + n.to_bytes(4, "big"))
        parts.append(bytes(pending))
        pending.clear()
        parts.append(value)
    elif isinstance(value, dict):
        pending += packer.pack_map_header(len(value))
        for key, item in value.items():
            pending += packer.pack(key)
            _pack_parts(item, packer, pending, parts)
    elif isinstance(value, list | tuple):
        pending += packer.pack_array_header(len(value))
        for item in value:
            _pack_parts(item, packer, pending, parts)
    else:
        pending += packer.pack(value)


#: received pieces smaller than this are appended to a buffer, not kept as segments
#: of their own: a peer trickling a frame in tiny TLS records must not cost us a
#: segment (~200 bytes of bookkeeping) per byte
SEGMENT_MIN: Final = 4096


class FrameDecoder:
    """Incremental decoder of length-prefixed msgpack frames.

    Received data is kept as the caller's own ``bytes`` objects (a list of segments),
    not appended to one growing buffer: a 1 MiB chunk reply that arrives in a few
    reads is copied once, into its frame's body, instead of once on every append and
    again whenever the buffer compacts.  A frame that lies inside one segment is
    decoded straight from it, with no copy at all.  Small pieces are gathered in a
    ``bytearray`` segment (see SEGMENT_MIN).
    """

    def __init__(self, max_size: int = CONTROL_MAX_FRAME) -> None:
        self.max_size = max_size
        #: body size of the frame ``next_frame`` returned last (callers bound by kind)
        self.last_frame_size = 0
        #: views of received ``bytes``, and bytearrays that gather small pieces (no
        #: view of a bytearray outlives a call, so it may grow and shrink)
        self._segments: collections.deque[memoryview | bytearray] = collections.deque()
        self._buffered = 0
        self._eof = False

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof and data:
            raise LocalProtocolError("data received after EOF")
        if not data:
            self._eof = True
            return
        segments = self._segments
        if len(data) < SEGMENT_MIN:
            if segments and isinstance(segments[-1], bytearray):
                segments[-1] += data
            else:
                segments.append(bytearray(data))
        else:
            # Keep bytes as they are (immutable); copy what the caller may reuse.
            segments.append(memoryview(data if isinstance(data, bytes) else bytes(data)))
        self._buffered += len(data)

    @property
    def buffered(self) -> int:
        return self._buffered

    def next_frame(self) -> Any:
        """The next decoded value, ``NEED_DATA``, or ``EOF``.

        Raises ``FrameTooLarge`` or ``RemoteProtocolError`` on a bad frame; after
        that the stream is out of sync and the connection must be dropped.
        """
        if self._buffered < HEADER.size:
            if self._eof:
                if self._buffered:
                    raise RemoteProtocolError("stream ended inside a frame header")
                return EOF
            return NEED_DATA
        (length,) = HEADER.unpack(self._peek(HEADER.size))
        if length > self.max_size:
            raise FrameTooLarge(f"frame of {length} bytes exceeds limit {self.max_size}")
        if self._buffered < HEADER.size + length:
            if self._eof:
                raise RemoteProtocolError("stream ended inside a frame body")
            return NEED_DATA
        self._take(HEADER.size)
        body = self._take(length)
        try:
            value = _unpack(body)  # msgpack copies what it keeps
        finally:
            if isinstance(body, memoryview):
                body.release()
        self.last_frame_size = length
        return value

    def _peek(self, size: int) -> bytes:
        out = bytearray()
        for segment in self._segments:
            out += segment[: size - len(out)]
            if len(out) == size:
                break
        return bytes(out)

    def _take(self, size: int) -> memoryview | bytes:
        """The next ``size`` buffered bytes: a view when one ``bytes`` holds them all."""
        segments = self._segments
        self._buffered -= size
        pieces: list[memoryview | bytes] = []
        left = size
        while left:
            segment = segments[0]
            if isinstance(segment, bytearray):
                n = min(left, len(segment))
                pieces.append(bytes(segment[:n]))
                if n == len(segment):
                    segments.popleft()
                else:
                    del segment[:n]  # cheap at the front of a bytearray
            elif len(segment) <= left:
                n = len(segment)
                segments.popleft()
                pieces.append(segment)
            else:
                n = left
                pieces.append(segment[:n])
                segments[0] = segment[n:]
            left -= n
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)  # one copy, and no zero-filling first
