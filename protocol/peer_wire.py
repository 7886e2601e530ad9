"""The peer wire protocol, sans-IO: connection preamble, peer messages, peer session.

Every TCP connection to a daemon's listen port starts with an 8-byte preamble, magic
``DZY1`` plus a 4-byte kind, so one port serves both the peer transport and pairing.
A transport preamble carries the dialer's *claimed* 32-byte device digest.  It is not
authenticated (TLS does that next); it only lets the listener log who tried when the
handshake refuses them.

After TLS both sides exchange length-prefixed msgpack frames (``framing``).  The first
message each way is ``Hello`` (protocol version, device name).  Then any mix of
``Ping``/``Pong``, ``Request``/``Response``/``ErrorResponse`` matched by request ID (many
in flight at once) and one-way ``Notice``.  ``PeerSession`` enforces the rules h11-style:
``receive_data`` / ``next_event`` / ``send``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError, register
from .framing import (
    EOF,
    NEED_DATA,
    PEER_MAX_FRAME,
    FrameDecoder,
    _Eof,
    _NeedData,
    encode_frame_parts,
)
from .ids import DeviceId

__all__ = [
    "EOF",
    "MAX_REQUESTS_IN_FLIGHT",
    "MAX_REQUEST_FRAME",
    "NEED_DATA",
    "PREAMBLE_MAX_SIZE",
    "PROTOCOL_VERSION",
    "ErrorResponse",
    "Hello",
    "IncompatibleVersion",
    "Notice",
    "PeerMessage",
    "PeerRefused",
    "PeerSession",
    "Ping",
    "Pong",
    "Preamble",
    "PreambleKind",
    "Request",
    "Response",
    "choose_connection",
    "encode_preamble",
    "parse_peer_message",
    "parse_preamble",
]


# --------------------------------------------------------------------------- errors


@register
class IncompatibleVersion(RemoteProtocolError):
    """The peer speaks a protocol major version this device does not."""

    code = "incompatible-version"


@register
class PeerRefused(ProtocolError):
    """A connection was not accepted as a peer: unpaired, wrong device, failed TLS."""

    code = "peer-refused"


# ------------------------------------------------------------------------- preamble

MAGIC: Final = b"DZY1"


class PreambleKind(enum.Enum):
    """What the rest of the connection speaks; the listener routes on it."""

    _value_: bytes

    @property
    def wire(self) -> bytes:
        return self._value_

    TRANSPORT = b"TLS\n"
    PAIR = b"PAIR"


#: magic + kind; every preamble starts with exactly this many bytes
PREAMBLE_HEAD_SIZE: Final = 8
_DIGEST_SIZE: Final = 32
#: the most bytes a listener ever needs to read before routing a connection
PREAMBLE_MAX_SIZE: Final = PREAMBLE_HEAD_SIZE + _DIGEST_SIZE


class Preamble(NamedTuple):
    kind: PreambleKind
    #: unauthenticated: for log lines about refused handshakes only
    claimed_device: DeviceId | None

    @property
    def size(self) -> int:
        """Bytes this preamble took on the wire; whatever follows is the next layer's."""
        return PREAMBLE_HEAD_SIZE + (0 if self.claimed_device is None else _DIGEST_SIZE)


def encode_preamble(kind: PreambleKind, device_id: DeviceId | None) -> bytes:
    if kind is PreambleKind.TRANSPORT:
        if device_id is None:
            raise LocalProtocolError("a transport preamble names the dialing device")
        return MAGIC + kind.wire + device_id.digest
    if device_id is not None:
        raise LocalProtocolError(f"a {kind.name} preamble carries no device ID")
    return MAGIC + kind.wire


def parse_preamble(buf: bytes | bytearray | memoryview) -> Preamble | _NeedData:
    """Parse the preamble at the start of ``buf``: a ``Preamble`` or ``NEED_DATA``.

    Bytes after the preamble are ignored (``Preamble.size`` says where it ends).  A
    prefix that cannot start any valid preamble fails at once, so a stray HTTP client
    or port scanner is dropped after its first bytes rather than after a timeout.
    """
    head = bytes(buf[:PREAMBLE_HEAD_SIZE])
    if not MAGIC.startswith(head[: len(MAGIC)]):
        raise RemoteProtocolError("not a dizzy connection (bad preamble magic)")
    kind_bytes = head[len(MAGIC) :]
    matching = [k for k in PreambleKind if k.wire.startswith(kind_bytes)]
    if not matching:
        raise RemoteProtocolError(f"unknown connection kind {kind_bytes!r} in preamble")
    if len(head) < PREAMBLE_HEAD_SIZE:
        return NEED_DATA
    (kind,) = matching
    if kind is not PreambleKind.TRANSPORT:
        return Preamble(kind, None)
    if len(buf) < PREAMBLE_MAX_SIZE:
        return NEED_DATA
    return Preamble(kind, DeviceId(bytes(buf[PREAMBLE_HEAD_SIZE:PREAMBLE_MAX_SIZE])))


# ------------------------------------------------------------------------- messages

#: (major, minor).  A different major is refused; minors only add optional fields and
#: request kinds, which older peers ignore or answer with an ErrorResponse.
PROTOCOL_VERSION: Final = (1, 0)
#: Requests one side may have outstanding at the other.  Enough to keep a LAN full of
#: 1 MiB chunks (256 MiB in flight), and the bound on what a flood can make us track.
MAX_REQUESTS_IN_FLIGHT: Final = 256
#: Largest frame of a Request or a Notice.  Requests and notices only name things (an
#: object ID, a folder, a sequence number; a batch of IDs at most), a few KiB; only
#: replies carry data.  Without this bound a peer's requests in flight, each up to
#: PEER_MAX_FRAME, could make us hold 256 x 5 MiB of its padding (seen: 1.36 GB).
MAX_REQUEST_FRAME: Final = 64 * 1024
#: Shown in `dizzy peers`; a hostname-sized string, not a document.
MAX_NAME_LEN: Final = 128
#: ErrorResponse texts end up in logs; long enough for a sentence and a path.
MAX_ERROR_MESSAGE_LEN: Final = 4096
#: request IDs and ping tokens are unsigned 64-bit: msgpack's native integer range
_U64_LIMIT: Final = 1 << 64
_U16_LIMIT: Final = 1 << 16
#: request/notice kinds and error codes are short machine names like "get-chunk"
_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")
#: C0/C1 control characters would let a peer forge lines in logs and terminals
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _check_u64(what: str, value: object) -> None:
    if type(value) is not int or not 0 <= value < _U64_LIMIT:
        raise LocalProtocolError(f"{what} must be an unsigned 64-bit int, not {value!r}")


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise LocalProtocolError(f"{what} must be a short lowercase name, not {value!r:.80}")


def _check_body(what: str, value: object) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise LocalProtocolError(f"{what} must be a map with string keys")


@dataclass(frozen=True)
class Hello:
    version: tuple[int, int]
    name: str

    def __post_init__(self) -> None:
        v = self.version
        if not (
            isinstance(v, tuple)
            and len(v) == 2
            and all(type(n) is int and 0 <= n < _U16_LIMIT for n in v)
        ):
            raise LocalProtocolError(f"protocol version must be (major, minor), not {v!r}")
        if not isinstance(self.name, str) or len(self.name) > MAX_NAME_LEN:
            raise LocalProtocolError(f"device name must be a str of <= {MAX_NAME_LEN} chars")
        if _CONTROL_RE.search(self.name):
            raise LocalProtocolError("device name must not contain control characters")

    def to_wire(self) -> dict[str, Any]:
        return {"t": "hello", "v": list(self.version), "n": self.name}


@dataclass(frozen=True)
class Ping:
    token: int

    def __post_init__(self) -> None:
        _check_u64("ping token", self.token)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "ping", "k": self.token}


@dataclass(frozen=True)
class Pong:
    token: int

    def __post_init__(self) -> None:
        _check_u64("pong token", self.token)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "pong", "k": self.token}


@dataclass(frozen=True)
class Request:
    id: int
    kind: str
    body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_u64("request ID", self.id)
        _check_name("request kind", self.kind)
        _check_body("request body", self.body)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "req", "i": self.id, "k": self.kind, "b": self.body}


@dataclass(frozen=True)
class Response:
    id: int
    body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_u64("request ID", self.id)
        _check_body("response body", self.body)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "res", "i": self.id, "b": self.body}


@dataclass(frozen=True)
class ErrorResponse:
    id: int
    code: str
    message: str

    def __post_init__(self) -> None:
        _check_u64("request ID", self.id)
        _check_name("error code", self.code)
        if not isinstance(self.message, str) or len(self.message) > MAX_ERROR_MESSAGE_LEN:
            raise LocalProtocolError(
                f"error message must be a str of <= {MAX_ERROR_MESSAGE_LEN} chars"
            )

    def to_wire(self) -> dict[str, Any]:
        return {"t": "err", "i": self.id, "c": self.code, "m": self.message}


@dataclass(frozen=True)
class Notice:
    kind: str
    body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name("notice kind", self.kind)
        _check_body("notice body", self.body)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "note", "k": self.kind, "b": self.body}


PeerMessage = Hello | Ping | Pong | Request | Response | ErrorResponse | Notice


def _get(msg: dict[Any, Any], key: str) -> Any:
    if key not in msg:
        raise RemoteProtocolError(f"peer message {msg.get('t')!r} lacks field {key!r}")
    return msg[key]


def _parse_hello(msg: dict[Any, Any]) -> Hello:
    version = _get(msg, "v")
    if isinstance(version, list):
        version = tuple(version)
    # The major version is checked before any other field: another major may shape
    # its Hello differently, and its user deserves the clear version error.
    if (
        isinstance(version, tuple)
        and len(version) == 2
        and type(version[0]) is int
        and version[0] != PROTOCOL_VERSION[0]
    ):
        raise IncompatibleVersion(
            f"peer speaks dizzy protocol {version[0]}.x; "
            f"this device speaks {PROTOCOL_VERSION[0]}.x"
        )
    return Hello(version=version, name=_get(msg, "n"))


_PARSERS: Final[dict[str, Callable[[dict[Any, Any]], PeerMessage]]] = {
    "hello": _parse_hello,
    "ping": lambda m: Ping(_get(m, "k")),
    "pong": lambda m: Pong(_get(m, "k")),
    "req": lambda m: Request(_get(m, "i"), _get(m, "k"), _get(m, "b")),
    "res": lambda m: Response(_get(m, "i"), _get(m, "b")),
    "err": lambda m: ErrorResponse(_get(m, "i"), _get(m, "c"), _get(m, "m")),
    "note": lambda m: Notice(_get(m, "k"), _get(m, "b")),
}


def parse_peer_message(value: Any) -> PeerMessage:
    """Validate one decoded frame as a peer message, or raise ``RemoteProtocolError``.

    Unknown *fields* of a known message are ignored: a newer minor version may add
    optional ones.  Everything else (types, ranges, unknown message types) is strict.
    """
    if not isinstance(value, dict):
        raise RemoteProtocolError("peer message is not a map")
    tag = value.get("t")
    parser = _PARSERS.get(tag) if isinstance(tag, str) else None
    if parser is None:
        raise RemoteProtocolError(f"unknown peer message type {tag!r:.40}")
    try:
        message: PeerMessage = parser(value)
    except LocalProtocolError as exc:
        # The constructors validate on behalf of the sender; received, it is their fault.
        raise RemoteProtocolError(f"malformed peer message: {exc}") from None
    return message


# -------------------------------------------------------------------- tie breaking


def choose_connection(local: DeviceId, remote: DeviceId) -> Literal["dial", "wait"]:
    """Which connection survives when two devices dial each other at once.

    The device with the lower ID keeps the connection *it* dialled ("dial"); the other
    keeps the one it accepted ("wait").  Both sides compute the same answer from the
    same two IDs, so exactly one connection survives without any negotiation.
    """
    if local == remote:
        raise LocalProtocolError("a device does not connect to itself")
    return "dial" if local < remote else "wait"


# ------------------------------------------------------------------------- session


class _Phase(enum.Enum):
    HELLO = "awaiting hello"
    OPEN = "open"


# The session's one transition table, shared by both directions: (phase, message
# type) -> next phase.  A pair not listed is a protocol error of whoever sent it.
_TRANSITIONS: Final[dict[tuple[_Phase, type], _Phase]] = {
    (_Phase.HELLO, Hello): _Phase.OPEN,
    **{
        (_Phase.OPEN, t): _Phase.OPEN
        for t in (Ping, Pong, Request, Response, ErrorResponse, Notice)
    },
}


class PeerSession:
    """One side of a peer conversation after TLS: bytes in, events out, events to bytes.

    ``receive_data(b"")`` signals EOF; ``next_event`` then returns ``EOF`` once the
    buffered frames are consumed.  Any ``RemoteProtocolError`` leaves the session
    unusable: the caller drops the connection.
    """

    def __init__(self, name: str, version: tuple[int, int] = PROTOCOL_VERSION) -> None:
        self.hello = Hello(version, name)
        self.peer_hello: Hello | None = None
        self._decoder = FrameDecoder(PEER_MAX_FRAME)
        self._our_phase = _Phase.HELLO
        self._their_phase = _Phase.HELLO
        #: IDs of requests we sent and still await an answer for
        self._awaiting: set[int] = set()
        #: IDs of the peer's requests we have not answered yet
        self._serving: set[int] = set()
        self._next_id = 0
        self._broken: ProtocolError | None = None

    # ---------------------------------------------------------------- bookkeeping

    @property
    def requests_in_flight(self) -> int:
        """Our requests the peer has not answered yet (at most MAX_REQUESTS_IN_FLIGHT)."""
        return len(self._awaiting)

    @property
    def requests_being_served(self) -> int:
        return len(self._serving)

    def next_request_id(self) -> int:
        """A request ID not used before on this session."""
        self._next_id += 1
        return self._next_id

    # -------------------------------------------------------------------- receive

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._decoder.receive_data(data)

    def next_event(self) -> PeerMessage | _NeedData | _Eof:
        """The next message from the peer, ``NEED_DATA`` or ``EOF``."""
        if self._broken is not None:
            raise self._broken
        try:
            value = self._decoder.next_frame()
            if value is NEED_DATA or value is EOF:
                return value
            message = parse_peer_message(value)
            if isinstance(message, Request | Notice) and \
                    self._decoder.last_frame_size > MAX_REQUEST_FRAME:
                raise RemoteProtocolError(
                    f"peer sent a {type(message).__name__.lower()} of "
                    f"{self._decoder.last_frame_size} bytes (limit {MAX_REQUEST_FRAME})"
                )
            self._receive(message)
        except RemoteProtocolError as exc:
            self._broken = exc
            raise
        return message

    def _receive(self, message: PeerMessage) -> None:
        self._their_phase = _transition(self._their_phase, message, RemoteProtocolError)
        if isinstance(message, Hello):
            # (a foreign major version already failed in parse_peer_message)
            self.peer_hello = message
        elif isinstance(message, Request):
            if message.id in self._serving:
                raise RemoteProtocolError(f"peer reused request ID {message.id} in flight")
            if len(self._serving) >= MAX_REQUESTS_IN_FLIGHT:
                raise RemoteProtocolError(
                    f"peer has more than {MAX_REQUESTS_IN_FLIGHT} requests in flight"
                )
            self._serving.add(message.id)
        elif isinstance(message, Response | ErrorResponse):
            if message.id not in self._awaiting:
                raise RemoteProtocolError(f"peer answered unknown request ID {message.id}")
            self._awaiting.remove(message.id)

    # ----------------------------------------------------------------------- send

    def send(self, message: PeerMessage) -> bytes:
        """The bytes that carry ``message``; raises ``LocalProtocolError`` if forbidden."""
        return b"".join(self.send_parts(message))

    def send_parts(self, message: PeerMessage) -> list[bytes | memoryview]:
        """Like ``send``, as parts to write in order: a chunk's data is passed by
        reference (see ``encode_frame_parts``), not copied into one frame."""
        if not isinstance(message, PeerMessage):
            raise LocalProtocolError(f"not a peer message: {message!r:.80}")
        phase = _transition(self._our_phase, message, LocalProtocolError)
        if isinstance(message, Request):
            if message.id in self._awaiting:
                raise LocalProtocolError(f"request ID {message.id} is already in flight")
            if len(self._awaiting) >= MAX_REQUESTS_IN_FLIGHT:
                raise LocalProtocolError(
                    f"already {MAX_REQUESTS_IN_FLIGHT} requests in flight; wait for answers"
                )
        elif isinstance(message, Response | ErrorResponse) and message.id not in self._serving:
            raise LocalProtocolError(f"no request {message.id} from the peer to answer")
        parts = encode_frame_parts(message.to_wire(), PEER_MAX_FRAME)
        size = sum(len(part) for part in parts) - 4
        if isinstance(message, Request | Notice) and size > MAX_REQUEST_FRAME:
            raise LocalProtocolError(
                f"a {type(message).__name__.lower()} of {size} bytes exceeds "
                f"the limit {MAX_REQUEST_FRAME}"
            )
        # Commit state only once encoding succeeded, so a too-large frame leaves the
        # session as it was and the caller may send something else.
        self._our_phase = phase
        if isinstance(message, Request):
            self._awaiting.add(message.id)
        elif isinstance(message, Response | ErrorResponse):
            self._serving.remove(message.id)
        return parts


def _transition(
    phase: _Phase, message: PeerMessage, error: type[ProtocolError]
) -> _Phase:
    try:
        return _TRANSITIONS[phase, type(message)]
    except KeyError:
        if isinstance(message, Hello):
            raise error("Hello sent twice") from None
        raise error(f"{type(message).__name__} before Hello") from None
