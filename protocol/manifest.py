"""Tree manifests: a directory as one canonical object, named by its tree ID.

Wire form (canonical msgpack, one value)::

    ["dizzy/tree/1", [[name: str, kind: str, mode: uint, size: uint, ref], ...]]

Entries are sorted by the UTF-8 bytes of their names (names are unique), and each
entry is an array in that fixed order.  ``ref`` is the 32-byte BLAKE3 (bin) of the
file's bytes or of the subtree's manifest, or the target (str) of a symlink.  The
encoding is canonical: equal trees are equal bytes, so equal trees have equal IDs,
and ``decode`` refuses any other spelling of the same tree.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import blake3

from .chunking import CHUNK_MAX, Buffer
from .errors import LocalProtocolError, RemoteProtocolError, UnsafePath
from .framing import pack_value, unpack_one
from .paths import MAX_RELPATH_BYTES, validate_name

TREE_MAGIC: Final = "dizzy/tree/1"

EntryKind = Literal["file", "dir", "link"]
ENTRY_KINDS: Final[tuple[str, ...]] = get_args(EntryKind)

#: permission bits plus setuid/setgid/sticky; the file type is ``kind``, not mode
MAX_MODE: Final = 0o7777
#: a link target longer than PATH_MAX cannot be resolved by any OS anyway
MAX_LINK_TARGET_BYTES: Final = MAX_RELPATH_BYTES
#: A manifest is at most one chunk, so it travels in one peer frame and is verified
#: in one step; 65,536 entries of typical names encode to about 4 MiB.  A larger
#: directory does not fit one manifest (see MAX_TREE_BYTES).
MAX_TREE_ENTRIES: Final = 1 << 16
#: the same bound in bytes: one CHUNK_MAX chunk
MAX_TREE_BYTES: Final = CHUNK_MAX
#: the largest size field a peer may claim (2**63 - 1: what SQLite and off_t hold)
MAX_ENTRY_SIZE: Final = (1 << 63) - 1

_OBJECT_ID: Final = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One name in a directory; raises ``LocalProtocolError`` if inconsistent."""

    name: str
    kind: EntryKind
    mode: int
    size: int
    #: object ID (file), tree ID (dir) or symlink target (link)
    ref: str

    def __post_init__(self) -> None:
        try:
            validate_name(self.name)
        except UnsafePath as exc:
            raise LocalProtocolError(str(exc)) from exc
        if self.kind not in ENTRY_KINDS:
            raise LocalProtocolError(f"{self.name!r}: unknown kind {self.kind!r}")
        if type(self.mode) is not int or not 0 <= self.mode <= MAX_MODE:
            raise LocalProtocolError(f"{self.name!r}: mode {self.mode!r} out of range")
        if type(self.size) is not int or not 0 <= self.size <= MAX_ENTRY_SIZE:
            raise LocalProtocolError(f"{self.name!r}: bad size {self.size!r}")
        if type(self.ref) is not str:
            raise LocalProtocolError(f"{self.name!r}: ref must be a string")
        if self.kind == "link":
            if not self.ref or "\x00" in self.ref:
                raise LocalProtocolError(f"{self.name!r}: empty link target or NUL in it")
            try:
                target_len = len(self.ref.encode("utf-8"))
            except UnicodeEncodeError as exc:
                raise LocalProtocolError(f"{self.name!r}: link target not Unicode") from exc
            if target_len > MAX_LINK_TARGET_BYTES:
                raise LocalProtocolError(f"{self.name!r}: link target too long")
        elif not _OBJECT_ID.fullmatch(self.ref):
            raise LocalProtocolError(f"{self.name!r}: ref is not an object ID")

    def _wire(self) -> list[Any]:
        ref: str | bytes = self.ref if self.kind == "link" else bytes.fromhex(self.ref)
        return [self.name, self.kind, self.mode, self.size, ref]


def _sort_key(entry: TreeEntry) -> bytes:
    # UTF-8 byte order, not Python's code-point order: the two differ for characters
    # beyond the BMP versus U+E000..U+FFFF, and every implementation can do bytes
    return entry.name.encode("utf-8")


class TreeManifest:
    """A directory's entries, kept in canonical order; immutable."""

    __slots__ = ("_encoded", "entries")

    entries: tuple[TreeEntry, ...]

    def __init__(self, entries: Iterable[TreeEntry]) -> None:
        ordered = tuple(sorted(entries, key=_sort_key))
        if len(ordered) > MAX_TREE_ENTRIES:
            raise LocalProtocolError(f"more than {MAX_TREE_ENTRIES} entries in one tree")
        for entry in ordered:
            if type(entry) is not TreeEntry:
                raise LocalProtocolError("a tree holds TreeEntry values")
        for before, after in itertools.pairwise(ordered):
            if before.name == after.name:
                raise LocalProtocolError(f"duplicate name {after.name!r}")
        self.entries = ordered
        self._encoded: bytes | None = None

    def encode(self) -> bytes:
        if self._encoded is None:
            encoded = pack_value([TREE_MAGIC, [e._wire() for e in self.entries]])
            if len(encoded) > MAX_TREE_BYTES:
                raise LocalProtocolError(f"tree manifest larger than {MAX_TREE_BYTES} bytes")
            self._encoded = encoded
        return self._encoded

    @property
    def tree_id(self) -> str:
        """BLAKE3 of the encoding, lowercase hex: the tree's object ID."""
        return blake3.blake3(self.encode()).hexdigest()

    @classmethod
    def decode(cls, data: Buffer) -> TreeManifest:
        """Parse and validate a peer's manifest; ``RemoteProtocolError`` if bad.

        Unsafe names raise ``UnsafePath`` (a ``RemoteProtocolError``).
        """
        if len(data) > MAX_TREE_BYTES:
            raise RemoteProtocolError(f"tree manifest larger than {MAX_TREE_BYTES} bytes")
        value = unpack_one(data, "tree manifest")
        if not (type(value) is list and len(value) == 2 and value[0] == TREE_MAGIC):
            raise RemoteProtocolError("tree manifest: want [\"dizzy/tree/1\", entries]")
        raw_entries = value[1]
        if type(raw_entries) is not list:
            raise RemoteProtocolError("tree manifest: entries must be an array")
        if len(raw_entries) > MAX_TREE_ENTRIES:
            raise RemoteProtocolError(f"tree manifest: more than {MAX_TREE_ENTRIES} entries")
        entries = [_decode_entry(raw) for raw in raw_entries]
        keys = [_sort_key(e) for e in entries]
        for index in range(1, len(keys)):
            if keys[index - 1] >= keys[index]:
                raise RemoteProtocolError(
                    f"tree manifest: entries not sorted or name repeated at {entries[index].name!r}"
                )
        manifest = cls(entries)
        if manifest.encode() != data:
            raise RemoteProtocolError("tree manifest: not in canonical encoding")
        return manifest

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[TreeEntry]:
        return iter(self.entries)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TreeManifest):
            return NotImplemented
        return self.entries == other.entries

    def __hash__(self) -> int:
        return hash(self.entries)

    def __repr__(self) -> str:
        return f"TreeManifest({list(self.entries)!r})"


def _decode_entry(raw: object) -> TreeEntry:
    if not (type(raw) is list and len(raw) == 5):
        raise RemoteProtocolError("tree entry: want a 5-element array")
    name, kind, mode, size, ref = raw
    validate_name(name)  # UnsafePath: says exactly what was wrong with the name
    if kind not in ENTRY_KINDS:
        raise RemoteProtocolError(f"tree entry {name!r}: unknown kind {str(kind)[:20]!r}")
    if kind == "link":
        if type(ref) is not str:
            raise RemoteProtocolError(f"tree entry {name!r}: link target must be a string")
    elif type(ref) is bytes and len(ref) == 32:
        ref = ref.hex()
    else:
        raise RemoteProtocolError(f"tree entry {name!r}: ref must be a 32-byte hash")
    try:
        return TreeEntry(name, kind, mode, size, ref)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(f"tree entry: {exc}") from exc
