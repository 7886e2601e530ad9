"""Per-device, per-folder signed append-only change logs, sans-IO.

Each device records every change it makes (or adopts) in a shared folder as one
``LogEntry``.  Entry ``n`` carries the hash of entry ``n - 1`` (``prev``), so the
log is a hash chain, and the device signs only the *head*: ``(folder, device, seq,
hash of entry seq)``.  One signature commits to the whole history before it.

Entry wire form (canonical msgpack, one value; its BLAKE3-256 is the entry hash)::

    ["dizzy/log/1", folder: str, device: bin 32, seq: uint, prev: bin 32,
     path: str, kind: str, deleted: bool, object_id: bin 32 | nil, size: uint,
     mtime_ns: int, mode: uint, link_target: str | nil, version: [[bin 32, uint]...]]

Signed head: the signature is Ed25519 over ``["dizzy/head/1", folder, device, seq,
head_hash]`` (canonical msgpack; the label keeps these bytes from ever meaning
anything else signed with the device key), and travels as::

    ["dizzy/head/1", folder, device, seq, head_hash, signature: bin 64]

Replication: a receiver asks for entries after the last seq it holds; the sender
answers with entries ``known_seq + 1 .. n`` (at most ``MAX_BATCH_ENTRIES``) plus a
head signed at ``n``.  A device can sign a head for any seq it holds (``sign_head``),
and replicas keep the heads they accepted, so batches can be split anywhere and
relayed by a third device without the origin's key.  ``LogReplica.accept`` takes a
batch only if every entry chains and the batch ends exactly at the signed head:
nothing unsigned is ever accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final, Literal, get_args

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .chunking import Buffer
from .errors import (
    BrokenChain,
    ForgedSignature,
    Fork,
    LocalProtocolError,
    RemoteProtocolError,
    Rollback,
    UnsafePath,
)
from .framing import pack_value, unpack_one
from .ids import DeviceId
from .manifest import MAX_ENTRY_SIZE, MAX_LINK_TARGET_BYTES, MAX_MODE
from .paths import validate_name, validate_relpath
from .versions import VersionVector

LOG_MAGIC: Final = "dizzy/log/1"
HEAD_MAGIC: Final = "dizzy/head/1"

EntryKind = Literal["file", "dir", "link"]
ENTRY_KINDS: Final[tuple[str, ...]] = get_args(EntryKind)

#: ``prev`` of the first entry, and the head hash of an empty log
ZERO_HASH: Final = bytes(32)
HASH_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
#: sequence numbers live in SQLite integers: stay within int64
MAX_SEQ: Final = (1 << 63) - 1
#: mtimes are int64 nanoseconds, as ``st_mtime_ns`` and SQLite hold them
MIN_MTIME_NS: Final = -(1 << 63)
MAX_MTIME_NS: Final = (1 << 63) - 1
#: Largest entry: two PATH_MAX strings (8 KiB) plus a full version vector (about
#: 44 KiB); 64 KiB bounds a hostile entry before it is unpacked.
MAX_ENTRY_BYTES: Final = 64 * 1024
#: Typical entries are 150-300 bytes, so a full batch is well under 1 MiB and fits
#: one peer frame (5 MiB) even with long paths; it also bounds the work one message
#: can ask of us before the signature check settles it.
MAX_BATCH_ENTRIES: Final = 1024
#: a head is ~190 bytes with a 255-byte folder name; anything bigger is not a head
MAX_HEAD_BYTES: Final = 1024

_NIL_OR_STR = (str, type(None))
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _check_hash(value: object, what: str) -> bytes:
    if type(value) is not bytes or len(value) != HASH_BYTES:
        raise LocalProtocolError(f"{what} must be {HASH_BYTES} bytes")
    return value


def _check_int(value: object, low: int, high: int, what: str) -> int:
    # type() rather than isinstance: bool is an int subclass and not a number here
    if type(value) is not int or not low <= value <= high:
        raise LocalProtocolError(f"{what} {value!r} out of range")
    return value


def _check_folder(folder: object) -> str:
    try:
        return validate_name(folder)
    except UnsafePath as exc:
        raise LocalProtocolError(f"folder name: {exc}") from exc


@dataclass(frozen=True)
class LogEntry:
    """One change in one device's folder log; validates itself on construction.

    A live file names its content (``object_id``, ``size``); a live link its
    ``link_target``; a directory or a deletion neither, and their ``size`` is 0.
    Raises ``LocalProtocolError`` (or ``UnsafePath`` for the path) if inconsistent.
    """

    folder: str
    device: bytes
    seq: int
    prev: bytes
    path: str
    kind: EntryKind
    deleted: bool
    object_id: str | None
    size: int
    mtime_ns: int
    mode: int
    link_target: str | None
    version: VersionVector

    def __post_init__(self) -> None:
        _check_folder(self.folder)
        _check_hash(self.device, "device")
        _check_int(self.seq, 1, MAX_SEQ, "seq")
        _check_hash(self.prev, "prev")
        if self.seq == 1 and self.prev != ZERO_HASH:
            raise LocalProtocolError("the first entry's prev is 32 zero bytes")
        validate_relpath(self.path)
        if self.kind not in ENTRY_KINDS:
            raise LocalProtocolError(f"{self.path!r}: unknown kind {self.kind!r}")
        if type(self.deleted) is not bool:
            raise LocalProtocolError(f"{self.path!r}: deleted must be a bool")
        _check_int(self.size, 0, MAX_ENTRY_SIZE, "size")
        _check_int(self.mtime_ns, MIN_MTIME_NS, MAX_MTIME_NS, "mtime_ns")
        _check_int(self.mode, 0, MAX_MODE, "mode")
        if type(self.version) is not VersionVector or not self.version:
            # every recorded change bumped some device's counter
            raise LocalProtocolError(f"{self.path!r}: version must be a non-empty vector")
        if not isinstance(self.object_id, _NIL_OR_STR) or not isinstance(
            self.link_target, _NIL_OR_STR
        ):
            raise LocalProtocolError(f"{self.path!r}: object_id/link_target: str or None")
        live_file = self.kind == "file" and not self.deleted
        live_link = self.kind == "link" and not self.deleted
        if live_file != (self.object_id is not None):
            raise LocalProtocolError(f"{self.path!r}: object_id is for live files only")
        if self.object_id is not None and not _HEX64.fullmatch(self.object_id):
            raise LocalProtocolError(f"{self.path!r}: object_id is not an object ID")
        if not live_file and self.size != 0:
            raise LocalProtocolError(f"{self.path!r}: only a live file has a size")
        if live_link != (self.link_target is not None):
            raise LocalProtocolError(f"{self.path!r}: link_target is for live links only")
        if self.link_target is not None:
            _check_link_target(self.path, self.link_target)

    def _wire(self) -> list[Any]:
        object_id = None if self.object_id is None else bytes.fromhex(self.object_id)
        return [
            LOG_MAGIC, self.folder, self.device, self.seq, self.prev, self.path,
            self.kind, self.deleted, object_id, self.size, self.mtime_ns, self.mode,
            self.link_target, self.version.to_wire(),
        ]

    def encode(self) -> bytes:
        return self._encoded

    @cached_property
    def _encoded(self) -> bytes:
        encoded = pack_value(self._wire())
        if len(encoded) > MAX_ENTRY_BYTES:
            raise LocalProtocolError(f"log entry larger than {MAX_ENTRY_BYTES} bytes")
        return encoded

    @cached_property
    def entry_hash(self) -> bytes:
        """BLAKE3-256 of ``encode()``: what the next entry's ``prev`` names."""
        return blake3.blake3(self.encode()).digest()

    @classmethod
    def decode(cls, data: Buffer) -> LogEntry:
        """Parse a peer's entry; any ``RemoteProtocolError`` if not exactly canonical."""
        if len(data) > MAX_ENTRY_BYTES:
            raise RemoteProtocolError(f"log entry larger than {MAX_ENTRY_BYTES} bytes")
        value = unpack_one(data, "log entry")
        if not (type(value) is list and len(value) == 14 and value[0] == LOG_MAGIC):
            raise RemoteProtocolError('log entry: want ["dizzy/log/1", 13 fields]')
        (_, folder, device, seq, prev, path, kind, deleted, raw_object_id, size,
         mtime_ns, mode, link_target, raw_version) = value
        validate_relpath(path)  # UnsafePath: says exactly what was wrong with it
        if raw_object_id is None:
            object_id = None
        elif type(raw_object_id) is bytes and len(raw_object_id) == HASH_BYTES:
            object_id = raw_object_id.hex()
        else:
            raise RemoteProtocolError(f"log entry {path!r}: object_id must be 32 bytes or nil")
        version = VersionVector.from_wire(raw_version)
        try:
            entry = cls(folder, device, seq, prev, path, kind, deleted, object_id, size,
                        mtime_ns, mode, link_target, version)
        except LocalProtocolError as exc:
            raise RemoteProtocolError(f"log entry: {exc}") from exc
        if entry.encode() != data:
            raise RemoteProtocolError("log entry: not in canonical encoding")
        return entry


def _check_link_target(path: str, target: str) -> None:
    # The target is stored verbatim; whether following it escapes the folder is the
    # daemon's concern (it never writes through a link), but it must be storable.
    if not target or "\x00" in target:
        raise LocalProtocolError(f"{path!r}: empty link target or NUL in it")
    try:
        target_len = len(target.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"{path!r}: link target not Unicode") from exc
    if target_len > MAX_LINK_TARGET_BYTES:
        raise LocalProtocolError(f"{path!r}: link target too long")




def _head_message(folder: str, device: bytes, seq: int, head_hash: bytes) -> bytes:
    return pack_value([HEAD_MAGIC, folder, device, seq, head_hash])


def _device_of(public_key_raw: bytes) -> bytes:
    try:
        return DeviceId.from_public_key(public_key_raw).digest
    except Exception as exc:  # BadDeviceId: our own key store handed us garbage
        raise LocalProtocolError(f"not an Ed25519 public key: {exc}") from exc


@dataclass(frozen=True)
class SignedHead:
    """A device's signed claim: its log for ``folder`` ends at ``seq`` / ``head_hash``."""

    folder: str
    device: bytes
    seq: int
    head_hash: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_folder(self.folder)
        _check_hash(self.device, "device")
        _check_int(self.seq, 0, MAX_SEQ, "seq")
        _check_hash(self.head_hash, "head_hash")
        if self.seq == 0 and self.head_hash != ZERO_HASH:
            raise LocalProtocolError("an empty log's head hash is 32 zero bytes")
        if type(self.signature) is not bytes or len(self.signature) != SIGNATURE_BYTES:
            raise LocalProtocolError(f"a signature is {SIGNATURE_BYTES} bytes")

    def signed_message(self) -> bytes:
        return _head_message(self.folder, self.device, self.seq, self.head_hash)

    def verify(self, public_key_raw: bytes) -> None:
        """Raise ``ForgedSignature`` unless ``public_key_raw``'s device signed this."""
        if _device_of(public_key_raw) != self.device:
            raise ForgedSignature("log head names another device than the key checking it")
        key = Ed25519PublicKey.from_public_bytes(public_key_raw)
        try:
            key.verify(self.signature, self.signed_message())
        except InvalidSignature as exc:
            raise ForgedSignature(
                f"log head of folder {self.folder!r} at seq {self.seq}: bad signature"
            ) from exc

    def encode(self) -> bytes:
        return pack_value(
            [HEAD_MAGIC, self.folder, self.device, self.seq, self.head_hash, self.signature]
        )

    @classmethod
    def decode(cls, data: Buffer) -> SignedHead:
        """Parse a peer's head (not yet verified: call ``verify``)."""
        if len(data) > MAX_HEAD_BYTES:
            raise RemoteProtocolError(f"log head larger than {MAX_HEAD_BYTES} bytes")
        value = unpack_one(data, "log head")
        if not (type(value) is list and len(value) == 6 and value[0] == HEAD_MAGIC):
            raise RemoteProtocolError('log head: want ["dizzy/head/1", 5 fields]')
        try:
            head = cls(*value[1:])
        except LocalProtocolError as exc:
            raise RemoteProtocolError(f"log head: {exc}") from exc
        if head.encode() != data:
            raise RemoteProtocolError("log head: not in canonical encoding")
        return head


def sign_head(
    folder: str, device: bytes, seq: int, head_hash: bytes, private_key: Ed25519PrivateKey
) -> SignedHead:
    """Sign that ``device``'s log of ``folder`` ends at ``seq`` with ``head_hash``."""
    public_raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    if _device_of(public_raw) != device:
        raise LocalProtocolError("signing a head for another device than the key's")
    message = _head_message(folder, device, seq, head_hash)
    # construct first so bad fields fail before anything is signed
    SignedHead(folder, device, seq, head_hash, bytes(SIGNATURE_BYTES))
    return SignedHead(folder, device, seq, head_hash, private_key.sign(message))


class LogWriter:
    """Appends this device's changes to its log of one folder; no I/O.

    Resume after a restart with the stored ``last_seq`` and ``last_hash``.  The
    caller persists each returned entry before acting on it.
    """

    def __init__(
        self,
        folder: str,
        device: bytes,
        private_key: Ed25519PrivateKey,
        *,
        last_seq: int = 0,
        last_hash: bytes = ZERO_HASH,
    ) -> None:
        _check_folder(folder)
        _check_int(last_seq, 0, MAX_SEQ - 1, "last_seq")
        _check_hash(last_hash, "last_hash")
        if last_seq == 0 and last_hash != ZERO_HASH:
            raise LocalProtocolError("an empty log's last hash is 32 zero bytes")
        public_raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        if _device_of(public_raw) != device:
            raise LocalProtocolError("the log's device is not the signing key's device")
        self.folder = folder
        self.device = device
        self._key = private_key
        self.last_seq = last_seq
        self.last_hash = last_hash

    def append(
        self,
        path: str,
        kind: EntryKind,
        deleted: bool,
        object_id: str | None,
        size: int,
        mtime_ns: int,
        mode: int,
        link_target: str | None,
        version: VersionVector,
    ) -> LogEntry:
        entry = LogEntry(
            self.folder, self.device, self.last_seq + 1, self.last_hash, path, kind,
            deleted, object_id, size, mtime_ns, mode, link_target, version,
        )
        entry_hash = entry.entry_hash  # raises before state moves if it cannot encode
        self.last_seq, self.last_hash = entry.seq, entry_hash
        return entry

    def head(self) -> SignedHead:
        return sign_head(self.folder, self.device, self.last_seq, self.last_hash, self._key)


class LogReplica:
    """What we hold of one peer's log of one folder, and the gate new entries pass.

    Resume with the stored ``known_seq`` / ``known_hash`` (and the last accepted
    ``head``, kept so we can serve the log onward).  ``accept`` is all-or-nothing:
    on any error the replica is unchanged.
    """

    def __init__(
        self,
        folder: str,
        device: bytes,
        public_key_raw: bytes,
        *,
        known_seq: int = 0,
        known_hash: bytes = ZERO_HASH,
        head: SignedHead | None = None,
    ) -> None:
        _check_folder(folder)
        _check_int(known_seq, 0, MAX_SEQ, "known_seq")
        _check_hash(known_hash, "known_hash")
        if known_seq == 0 and known_hash != ZERO_HASH:
            raise LocalProtocolError("an empty log's hash is 32 zero bytes")
        if _device_of(public_key_raw) != device:
            raise LocalProtocolError("the replica's device is not the public key's device")
        if head is not None and (head.seq, head.head_hash) != (known_seq, known_hash):
            raise LocalProtocolError("stored head does not match the stored position")
        self.folder = folder
        self.device = device
        self.public_key_raw = public_key_raw
        self.known_seq = known_seq
        self.known_hash = known_hash
        self.head = head

    def accept(self, entries: list[LogEntry], head: SignedHead) -> list[LogEntry]:
        """Verify a batch ending at ``head``; return the entries new to us.

        Raises ``ForgedSignature``, ``Rollback`` (an older head), ``Fork`` (the
        device signed a history that contradicts the one we hold), ``BrokenChain``
        (entries that do not link up to the head, or belong elsewhere).
        """
        if len(entries) > MAX_BATCH_ENTRIES:
            raise RemoteProtocolError(f"more than {MAX_BATCH_ENTRIES} log entries at once")
        if (head.folder, head.device) != (self.folder, self.device):
            raise BrokenChain("log head is for another folder or device")
        head.verify(self.public_key_raw)
        if head.seq < self.known_seq:
            raise Rollback(
                f"log head at seq {head.seq} is older than seq {self.known_seq} we hold",
                known_seq=self.known_seq, offered_seq=head.seq,
            )
        if head.seq == self.known_seq:
            if head.head_hash != self.known_hash:
                raise Fork(
                    f"device signed two different entries at seq {head.seq}",
                    known_seq=self.known_seq, offered_seq=head.seq,
                )
            if entries:
                raise BrokenChain("entries sent with a head we already hold")
            return []
        self._check_chain(entries, head)
        # The chain is intact and ends at the signed head, so the device signed
        # these entries; if they do not start from what we hold it signed a fork.
        if entries[0].prev != self.known_hash:
            raise Fork(
                f"device's log diverges from ours after seq {self.known_seq}",
                known_seq=self.known_seq, offered_seq=head.seq,
            )
        self.known_seq, self.known_hash, self.head = head.seq, head.head_hash, head
        return list(entries)

    def _check_chain(self, entries: list[LogEntry], head: SignedHead) -> None:
        if not entries:
            raise BrokenChain(f"log head at seq {head.seq} but no entries after {self.known_seq}")
        expected_seq = self.known_seq + 1
        previous: LogEntry | None = None
        for entry in entries:
            if type(entry) is not LogEntry:
                raise LocalProtocolError("a batch holds decoded LogEntry values")
            if (entry.folder, entry.device) != (self.folder, self.device):
                raise BrokenChain(f"entry {entry.seq} belongs to another folder or device")
            if entry.seq != expected_seq:
                raise BrokenChain(f"entry seq {entry.seq} where {expected_seq} was due")
            if previous is not None and entry.prev != previous.entry_hash:
                raise BrokenChain(f"entry {entry.seq} does not chain to entry {previous.seq}")
            previous = entry
            expected_seq += 1
        last = entries[-1]
        if last.seq != head.seq or last.entry_hash != head.head_hash:
            raise BrokenChain(f"entries end at seq {last.seq}, not at the signed head")
