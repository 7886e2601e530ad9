"""Object IDs and device IDs.

An object ID is the BLAKE3-256 of the object's bytes in lowercase hex, exactly what
``b3sum`` prints.  A device ID is the BLAKE3 of the device's raw Ed25519 public key in
base32, split into four 13-character groups, each followed by a Luhn mod 32 check
character (the scheme Syncthing uses), and shown as eight dash-separated groups of
seven.  A single mistyped character changes a check character and is caught.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import blake3

from .errors import BadDeviceId, BadObjectId

OBJECT_ID_HEX_LEN = 64
_HEX64 = re.compile(r"[0-9a-f]{64}")

_B32_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
# 32 bytes of hash -> 52 base32 characters (without padding) -> 4 groups of 13.
_GROUP = 13
_DISPLAY_GROUP = 7


def parse_object_id(text: str) -> str:
    """Return the canonical (lowercase hex) object ID, or raise ``BadObjectId``."""
    candidate = text.strip().lower()
    if not _HEX64.fullmatch(candidate):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise BadObjectId(f"not an object ID (want 64 hex characters): {shown!r}")
    return candidate


def object_id_of(data: bytes | bytearray | memoryview) -> str:
    """The object ID of a whole in-memory object."""
    return blake3.blake3(data).hexdigest()


def _luhn32_check(group: str) -> str:
    # Luhn mod N over the base32 alphabet, as in Syncthing's device IDs.
    factor = 1
    total = 0
    n = len(_B32_ALPHABET)
    for ch in group:
        code = _B32_ALPHABET.index(ch)
        addend = factor * code
        factor = 1 if factor == 2 else 2
        total += addend // n + addend % n
    return _B32_ALPHABET[(n - total % n) % n]


@dataclass(frozen=True, order=True)
class DeviceId:
    """A device's identity: 32 bytes, derived from its Ed25519 public key."""

    digest: bytes

    def __post_init__(self) -> None:
        if len(self.digest) != 32:
            raise BadDeviceId("a device ID digest is 32 bytes")

    @classmethod
    def from_public_key(cls, raw_public_key: bytes) -> DeviceId:
        if len(raw_public_key) != 32:
            raise BadDeviceId("an Ed25519 public key is 32 bytes")
        return cls(blake3.blake3(raw_public_key).digest())

    @classmethod
    def parse(cls, text: str) -> DeviceId:
        """Parse the displayed form (dashes, spaces and case do not matter)."""
        compact = re.sub(r"[\s-]", "", text).upper()
        if len(compact) != 4 * (_GROUP + 1):
            raise BadDeviceId(
                f"not a device ID (want 56 base32 characters in 8 groups): {text[:80]!r}"
            )
        bad = sorted({c for c in compact if c not in _B32_ALPHABET})
        if bad:
            raise BadDeviceId(f"not a device ID: invalid character(s) {''.join(bad)!r}")
        body = []
        for i in range(4):
            chunk = compact[i * (_GROUP + 1) : (i + 1) * (_GROUP + 1)]
            group, check = chunk[:_GROUP], chunk[_GROUP]
            if _luhn32_check(group) != check:
                raise BadDeviceId(
                    f"not a valid device ID: check character of group {i + 1} does not "
                    "match (a typo?)"
                )
            body.append(group)
        try:
            digest = base64.b32decode("".join(body) + "====")
        except ValueError as exc:  # pragma: no cover - alphabet checked above
            raise BadDeviceId(f"not a device ID: {exc}") from exc
        return cls(digest[:32])

    def __str__(self) -> str:
        b32 = base64.b32encode(self.digest).decode("ascii").rstrip("=")
        with_checks = "".join(
            b32[i : i + _GROUP] + _luhn32_check(b32[i : i + _GROUP])
            for i in range(0, len(b32), _GROUP)
        )
        return "-".join(
            with_checks[i : i + _DISPLAY_GROUP]
            for i in range(0, len(with_checks), _DISPLAY_GROUP)
        )

    @property
    def short(self) -> str:
        """The first group: names devices in logs and conflict file names."""
        return str(self)[:_DISPLAY_GROUP]
