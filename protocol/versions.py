"""Version vectors: which device changed a file how many times.

A vector maps a device digest (the 32 bytes of a ``DeviceId``) to a counter >= 1;
a device absent from the vector has counter 0.  Comparing two vectors tells whether
one version descends from the other or whether they were made concurrently (a
conflict).

Wire form (embedded in log entries, canonical msgpack)::

    [[device: bin 32, counter: uint], ...]     # sorted by device bytes, no repeats

Equal vectors are equal bytes; ``from_wire`` refuses any other spelling.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final, Literal

import msgpack

from .errors import LocalProtocolError, RemoteProtocolError
from .framing import pack_value

Comparison = Literal["equal", "newer", "older", "concurrent"]

#: the length of a device digest (BLAKE3-256 of the device's public key)
DEVICE_DIGEST_BYTES: Final = 32
#: A vector holds one counter per device that ever changed the file.  A folder shared
#: by more than a thousand devices is far beyond what dizzy is for; the bound keeps a
#: hostile entry small (1024 * 43 bytes, about 44 KiB).
MAX_VECTOR_DEVICES: Final = 1024
#: counters live in SQLite integers and msgpack uint64 alike: stay within int64
MAX_COUNTER: Final = (1 << 63) - 1


def _check_device(device: object) -> bytes:
    if type(device) is not bytes or len(device) != DEVICE_DIGEST_BYTES:
        raise LocalProtocolError("a version vector is keyed by 32-byte device digests")
    return device


class VersionVector(Mapping[bytes, int]):
    """An immutable version vector; hashable, comparable with ``compare``."""

    __slots__ = ("_counters", "_items")

    _items: tuple[tuple[bytes, int], ...]
    _counters: dict[bytes, int]

    def __init__(self, counters: Mapping[bytes, int] | None = None) -> None:
        items = tuple(sorted((counters or {}).items()))
        if len(items) > MAX_VECTOR_DEVICES:
            raise LocalProtocolError(f"a version vector holds at most {MAX_VECTOR_DEVICES} devices")
        for device, counter in items:
            _check_device(device)
            if type(counter) is not int or not 1 <= counter <= MAX_COUNTER:
                raise LocalProtocolError(f"version counter {counter!r} out of range")
        self._items = items
        self._counters = dict(items)

    # -- Mapping ------------------------------------------------------------------

    def __getitem__(self, device: bytes) -> int:
        return self._counters[device]

    def __iter__(self) -> Iterator[bytes]:
        return (device for device, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VersionVector):
            return NotImplemented
        return self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        inner = ", ".join(f"{device.hex()[:8]}:{counter}" for device, counter in self._items)
        return f"VersionVector({{{inner}}})"

    # -- algebra ------------------------------------------------------------------

    def bump(self, device: bytes) -> VersionVector:
        """This vector with ``device``'s counter one higher: a change made on it."""
        _check_device(device)
        counters = dict(self._counters)
        counters[device] = counters.get(device, 0) + 1
        return VersionVector(counters)

    def merge(self, other: VersionVector) -> VersionVector:
        """The least vector that descends from both (per-device maximum)."""
        counters = dict(self._counters)
        for device, counter in other._items:
            counters[device] = max(counters.get(device, 0), counter)
        return VersionVector(counters)

    def compare(self, other: VersionVector) -> Comparison:
        """How this version relates to ``other``: ``"newer"`` means it descends from it."""
        ahead = behind = False
        for device in self._counters.keys() | other._counters.keys():
            mine, theirs = self._counters.get(device, 0), other._counters.get(device, 0)
            ahead |= mine > theirs
            behind |= mine < theirs
        if ahead and behind:
            return "concurrent"
        if ahead:
            return "newer"
        if behind:
            return "older"
        return "equal"

    # -- wire ---------------------------------------------------------------------

    def to_wire(self) -> list[list[Any]]:
        return [[device, counter] for device, counter in self._items]

    @classmethod
    def from_wire(cls, raw: object) -> VersionVector:
        """Validate a peer's vector; ``RemoteProtocolError`` unless canonical."""
        if type(raw) is not list:
            raise RemoteProtocolError("version vector: want an array")
        if len(raw) > MAX_VECTOR_DEVICES:
            raise RemoteProtocolError(f"version vector: more than {MAX_VECTOR_DEVICES} devices")
        previous = b""
        counters: dict[bytes, int] = {}
        for pair in raw:
            if not (type(pair) is list and len(pair) == 2):
                raise RemoteProtocolError("version vector: want [device, counter] pairs")
            device, counter = pair
            if type(device) is not bytes or len(device) != DEVICE_DIGEST_BYTES:
                raise RemoteProtocolError("version vector: a device is 32 bytes")
            if type(counter) is not int or not 1 <= counter <= MAX_COUNTER:
                raise RemoteProtocolError("version vector: counter out of range")
            # strictly increasing: sorted and without repeats, the canonical spelling
            if device <= previous:
                raise RemoteProtocolError("version vector: devices not sorted or repeated")
            previous = device
            counters[device] = counter
        return cls(counters)

    def encode(self) -> bytes:
        return pack_value(self.to_wire())

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> VersionVector:
        """A standalone encoded vector; refuses trailing bytes and other spellings."""
        # 1024 pairs of 2 + 34 + at most 9 bytes, plus the array header
        if len(data) > MAX_VECTOR_DEVICES * 45 + 5:
            raise RemoteProtocolError("version vector: too many bytes")
        try:
            raw = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
                msgpack.StackError) as exc:
            raise RemoteProtocolError(f"version vector: malformed msgpack: {exc}") from exc
        vector = cls.from_wire(raw)
        if vector.encode() != bytes(data):
            raise RemoteProtocolError("version vector: not in canonical encoding")
        return vector
