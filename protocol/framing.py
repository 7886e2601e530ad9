"""Length-prefixed msgpack frames, sans-IO.

A frame is a 4-byte big-endian length followed by that many bytes of one msgpack
value.  ``FrameDecoder`` follows h11's shape: feed it bytes with ``receive_data``
(``b""`` means EOF) and pull values with ``next_frame`` until it says ``NEED_DATA``.
The length is checked against a hard limit *before* any body is buffered, so a peer
announcing a 4 GiB frame costs us four bytes, not four gigabytes.
"""

from __future__ import annotations

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


class FrameDecoder:
    """Incremental decoder of length-prefixed msgpack frames."""

    def __init__(self, max_size: int = CONTROL_MAX_FRAME) -> None:
        self.max_size = max_size
        #: body size of the frame ``next_frame`` returned last (callers bound by kind)
        self.last_frame_size = 0
        self._buf = bytearray()
        self._eof = False

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof and data:
            raise LocalProtocolError("data received after EOF")
        if not data:
            self._eof = True
            return
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_frame(self) -> Any:
        """The next decoded value, ``NEED_DATA``, or ``EOF``.

        Raises ``FrameTooLarge`` or ``RemoteProtocolError`` on a bad frame; after
        that the stream is out of sync and the connection must be dropped.
        """
        buf = self._buf
        if len(buf) < HEADER.size:
            if self._eof:
                if buf:
                    raise RemoteProtocolError("stream ended inside a frame header")
                return EOF
            return NEED_DATA
        (length,) = HEADER.unpack_from(buf)
        if length > self.max_size:
            raise FrameTooLarge(f"frame of {length} bytes exceeds limit {self.max_size}")
        end = HEADER.size + length
        if len(buf) < end:
            if self._eof:
                raise RemoteProtocolError("stream ended inside a frame body")
            return NEED_DATA
        # Unpack straight from the buffer (msgpack copies what it keeps), then drop
        # the frame: one copy of a 1 MiB chunk fewer than slicing it out first.
        with memoryview(buf) as view:
            body = view[HEADER.size : end]
            try:
                value = _unpack(body)
            finally:
                body.release()
        del buf[:end]
        self.last_frame_size = length
        return value
