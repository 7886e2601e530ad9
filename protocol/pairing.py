"""The pairing state machines, sans-IO: SPAKE2 over a code, then an exchange of identities.

Messages are msgpack-able dicts tagged ``t``; the daemon wraps each in a frame
(``framing.encode_frame`` / ``FrameDecoder(PAIRING_MAX_FRAME)``).  The flow::

    joiner                                            inviter
    hello   {v, np, pake: SPAKE2 A msg}      ->
                                             <-   pake    {pake: SPAKE2 B msg, mac}
    (joiner checks mac: inviter knows the code)
    confirm {mac, box: sealed joiner info}   ->
                                                  (inviter checks mac, opens box)
                                             <-   info    {box: sealed inviter info}
    done    {mac}                            ->
    either side, on failure:  error {code, msg}

``mac`` = HMAC of the transcript (version, nameplate, both SPAKE2 messages) under a
key derived for that purpose and direction, so each side proves it holds the same
SPAKE2 key, hence the same code.  A box carries (raw Ed25519 public key, certificate
PEM, name), sealed under a key for that direction; the certificate must hold that key.

The daemon's inviting side, per incoming connection::

    nameplate = peek_nameplate(first_msg)          # RemoteProtocolError: drop it
    registry.claim(nameplate, now)                 # PairingError: send error_message(e)
    inviter = Inviter(code, expires_at, local, entropy=os.urandom)
    ... out = inviter.receive(msg, now=now) ...   # on DizzyError: send inviter.goodbye()
    then registry.burn(nameplate) if inviter.code_spent else registry.release(nameplate)

The joiner is DONE once it sends ``done``; if the inviter then refuses that ack (only
tampering can cause it) the joiner has paired and the inviter has not, and the next TLS
handshake between them fails: the user sees the peer listed on one side only.

Failures raise a ``DizzyError``: ``WrongCode`` (both sides), ``CodeExpired``,
``UnknownNameplate``, ``PairingAborted`` (the peer sent an error we have no class for),
``RemoteProtocolError`` (garbage), ``LocalProtocolError`` (our caller's bug).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import msgpack
import spake2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import (
    CodeExpired,
    CodeInUse,
    DizzyError,
    LocalProtocolError,
    PairingAborted,
    PairingError,
    ProtocolError,
    RemoteProtocolError,
    UnknownNameplate,
    WrongCode,
)
from .framing import pack_value
from .ids import DeviceId
from .pairing_code import PairingCode
from .pairing_crypto import (
    MAC_LEN,
    confirmation_mac,
    confirmation_ok,
    derive_key,
    open_sealed,
    seal,
    transcript_hash,
)

PAIRING_VERSION: Final = 1
#: The largest honest message is a sealed certificate plus name (~1 KiB); 64 KiB lets a
#: decoder refuse anything absurd before buffering it.
PAIRING_MAX_FRAME: Final = 64 * 1024
#: a self-signed Ed25519 certificate is ~600 bytes of PEM; 16 KiB allows odd extras
MAX_CERT_PEM: Final = 16 * 1024
#: the name is printed on the other device; one line of a terminal
MAX_NAME_CHARS: Final = 100
#: a SPAKE2 message on Ed25519: one side byte + one 32-byte group element
PAKE_MESSAGE_LEN: Final = 33
#: room for the sealed info (cert + key + name + AEAD tag), with slack
MAX_BOX: Final = MAX_CERT_PEM + 1024
#: error text from the peer is shown to the user; keep it to a line
MAX_ERROR_TEXT: Final = 300

# Fixed SPAKE2 identities: the roles are asymmetric (the joiner always speaks first),
# and binding role names into the key stops a message being reflected to its sender.
_ID_JOINER: Final = b"dizzy-pairing-joiner"
_ID_INVITER: Final = b"dizzy-pairing-inviter"
_BOX_AAD: Final = b"dizzy-pairing-v1 identity"

Message = dict[str, Any]
Entropy = Callable[[int], bytes]


class Role(enum.Enum):
    INVITER = "inviter"
    JOINER = "joiner"


class State(enum.Enum):
    START = "start"  # joiner, before start()
    WAIT_HELLO = "waiting for hello"
    WAIT_PAKE = "waiting for the inviter's PAKE message"
    WAIT_CONFIRM = "waiting for the joiner's confirmation"
    WAIT_INFO = "waiting for the inviter's identity"
    WAIT_DONE = "waiting for the joiner's acknowledgement"
    DONE = "done"
    FAILED = "failed"
    #: inviter only: failed after spending its code; the code is dead
    BURNED = "failed, code burned"


_TERMINAL: Final = frozenset({State.DONE, State.FAILED, State.BURNED})

# THE transition table: (role, state, event) -> (handler method, next state).
# An event is a message tag ("hello", ...) or "start".  Anything not listed here is a
# protocol error.  Every failure — a handler raising, an "error" message from the peer
# (accepted in any non-terminal state), an unlisted event — ends in FAILED, or in
# BURNED for an inviter that has already answered a hello (its single guess is spent).
_TRANSITIONS: Final[dict[tuple[Role, State, str], tuple[str, State]]] = {
    (Role.JOINER, State.START, "start"): ("_send_hello", State.WAIT_PAKE),
    (Role.INVITER, State.WAIT_HELLO, "hello"): ("_on_hello", State.WAIT_CONFIRM),
    (Role.JOINER, State.WAIT_PAKE, "pake"): ("_on_pake", State.WAIT_INFO),
    (Role.INVITER, State.WAIT_CONFIRM, "confirm"): ("_on_confirm", State.WAIT_DONE),
    (Role.JOINER, State.WAIT_INFO, "info"): ("_on_info", State.DONE),
    (Role.INVITER, State.WAIT_DONE, "done"): ("_on_done", State.DONE),
}

# Wire schema: tag -> field -> (type, min, max); min/max bound a length or an int value.
_SCHEMA: Final[dict[str, dict[str, tuple[type, int, int]]]] = {
    "hello": {"v": (int, 0, 2**31), "np": (int, 0, 2**31),
              "pake": (bytes, PAKE_MESSAGE_LEN, PAKE_MESSAGE_LEN)},
    "pake": {"pake": (bytes, PAKE_MESSAGE_LEN, PAKE_MESSAGE_LEN),
             "mac": (bytes, MAC_LEN, MAC_LEN)},
    "confirm": {"mac": (bytes, MAC_LEN, MAC_LEN), "box": (bytes, 1, MAX_BOX)},
    "info": {"box": (bytes, 1, MAX_BOX)},
    "done": {"mac": (bytes, MAC_LEN, MAC_LEN)},
    "error": {"code": (str, 1, 64), "msg": (str, 0, 4096)},
}

# Errors we tell the peer about by their own code, so it raises the same class.
_SHARED_ERRORS: Final[dict[str, type[PairingError]]] = {
    cls.code: cls for cls in (WrongCode, CodeExpired, CodeInUse, UnknownNameplate)
}


@dataclass(frozen=True)
class LocalInfo:
    """What this device tells its new peer: who it is and what to call it."""

    public_key: bytes  # raw Ed25519, 32 bytes
    cert_pem: bytes
    name: str

    def __post_init__(self) -> None:
        _check_identity(self.public_key, self.cert_pem, self.name, LocalProtocolError)


@dataclass(frozen=True)
class PairingResult:
    peer_device_id: DeviceId
    peer_public_key: bytes
    peer_cert_pem: bytes
    peer_name: str


def _check_identity(public_key: object, cert_pem: object, name: object,
                    blame: type[ProtocolError]) -> None:
    """Refuse an identity whose certificate is not the self-signed cert of its key."""
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise blame("a device public key is 32 raw Ed25519 bytes")
    if not isinstance(cert_pem, bytes) or not 0 < len(cert_pem) <= MAX_CERT_PEM:
        raise blame(f"a device certificate is PEM bytes of at most {MAX_CERT_PEM}")
    # A name is shown on a terminal: no control characters (escape-sequence tricks).
    if (not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS
            or not name.isprintable() or not name.strip()):
        raise blame(f"a device name is 1-{MAX_NAME_CHARS} printable characters")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        cert_key = cert.public_key()
        if not isinstance(cert_key, Ed25519PublicKey):
            raise blame("the device certificate does not hold an Ed25519 key")
        raw = cert_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if raw != public_key:
            raise blame("the device certificate belongs to a different key than the one sent")
        # Self-signed by that key: whoever sent it holds the private key (or copied a
        # cert, which does not help: TLS later demands the private key anyway).
        cert_key.verify(cert.signature, cert.tbs_certificate_bytes)
        # Peers pin the cert as a trust anchor; OpenSSL wants it marked as a CA.
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        if not constraints.value.ca:
            raise blame("the device certificate is not marked CA (BasicConstraints)")
    except ProtocolError:
        raise
    except InvalidSignature:
        raise blame("the device certificate is not self-signed by its key") from None
    except x509.ExtensionNotFound:
        raise blame("the device certificate lacks BasicConstraints") from None
    # cryptography parses lazily and raises assorted types for a malformed certificate:
    # ValueError, but also InvalidVersion, DuplicateExtension, UnsupportedAlgorithm...
    # (found by fuzzing; any of them escaping here used to stop the whole daemon).
    except Exception as exc:
        raise blame(f"unreadable device certificate: {type(exc).__name__}: {exc}") from None


def _size(value: Any) -> int:
    # The bound of a schema field: an int's value, or a str's or bytes' length.
    return value if isinstance(value, int) else len(value)


def _validate(msg: object) -> tuple[str, Message]:
    """Check a received value against ``_SCHEMA``; return its tag and the dict."""
    if not isinstance(msg, dict):
        raise RemoteProtocolError(f"pairing message is not a map: {type(msg).__name__}")
    tag = msg.get("t")
    if not isinstance(tag, str) or tag not in _SCHEMA:
        raise RemoteProtocolError(f"unknown pairing message type {str(tag)[:40]!r}")
    if tag == "hello" and type(msg.get("v")) is int and msg["v"] != PAIRING_VERSION:
        # Checked before the shape: a newer joiner may send fields we do not know.
        raise RemoteProtocolError(
            f"pairing protocol version {msg['v']} is not supported (this device speaks "
            f"{PAIRING_VERSION}); update dizzy on both devices"
        )
    fields = _SCHEMA[tag]
    if set(msg) != {"t", *fields}:
        raise RemoteProtocolError(f"pairing message {tag!r} has the wrong fields")
    for name, (kind, low, high) in fields.items():
        value: Any = msg[name]
        # type() is, not isinstance: a bool must not pass for an int.
        if type(value) is not kind:
            raise RemoteProtocolError(f"field {name!r} of {tag!r} is not {kind.__name__}")
        if not low <= _size(value) <= high:
            raise RemoteProtocolError(f"field {name!r} of {tag!r} is out of bounds")
    return tag, msg


def peek_nameplate(msg: object) -> int:
    """The nameplate a joiner's first message asks for, to pick the right code."""
    tag, valid = _validate(msg)
    if tag != "hello":
        raise RemoteProtocolError(f"a pairing starts with 'hello', not {tag!r}")
    nameplate: int = valid["np"]
    return nameplate


def error_message(exc: DizzyError) -> Message:
    """The message that tells the peer why we stop, so it fails the same way."""
    if isinstance(exc, tuple(_SHARED_ERRORS.values())):
        return {"t": "error", "code": exc.code, "msg": exc.message[:MAX_ERROR_TEXT]}
    return {"t": "error", "code": "aborted",
            "msg": f"{type(exc).__name__}: {exc.message}"[:MAX_ERROR_TEXT]}


def _pake_finish(state: spake2.SPAKE2_A | spake2.SPAKE2_B, inbound: bytes) -> bytes:
    try:
        key: bytes = state.finish(inbound)
    # spake2 raises assorted types (SPAKEError, ValueError, AssertionError...) for a
    # point that is not on the curve, in the wrong subgroup, reflected, or off-side.
    except Exception as exc:
        raise RemoteProtocolError(f"invalid PAKE message: {type(exc).__name__}") from None
    return key


class _PairingMachine:
    role: ClassVar[Role]

    def __init__(self, code: PairingCode, local: LocalInfo, entropy: Entropy,
                 initial: State) -> None:
        self.code = code
        self.local = local
        self._entropy = entropy
        self.state = initial
        self.result: PairingResult | None = None
        #: the failure, once ``state`` is FAILED or BURNED
        self.error: DizzyError | None = None
        self._goodbye: list[Message] = []
        self._key = b""
        self._transcript = b""

    def goodbye(self) -> list[Message]:
        """After a failure: the message(s) to send the peer before closing (once)."""
        out, self._goodbye = self._goodbye, []
        return out

    def _dispatch(self, event: str, msg: Message | None) -> list[Message]:
        if self.state in _TERMINAL:
            raise LocalProtocolError(f"pairing is over ({self.state.value})")
        try:
            if event == "error":
                assert msg is not None  # _validate produced it
                self._on_error(msg)
            entry = _TRANSITIONS.get((self.role, self.state, event))
            if entry is None:
                raise RemoteProtocolError(
                    f"unexpected pairing message {event!r} while {self.state.value}"
                )
            handler, next_state = entry
            outgoing: list[Message] = getattr(self, handler)(msg)
        except Exception as exc:
            self._fail(exc, told_by_peer=event == "error")
            raise
        self.state = next_state
        return outgoing

    def _receive(self, msg: object) -> list[Message]:
        if self.state is State.DONE:
            # The peer kept talking after the last message; our result stands.
            raise RemoteProtocolError("unexpected pairing message after the pairing was done")
        if self.state in _TERMINAL:
            raise LocalProtocolError(f"pairing is over ({self.state.value})")
        try:
            tag, valid = _validate(msg)
        except DizzyError as exc:
            self._fail(exc, told_by_peer=False)
            raise
        return self._dispatch(tag, valid)

    def _fail(self, exc: Exception, *, told_by_peer: bool) -> None:
        self.state = State.BURNED if self.code_spent else State.FAILED
        self.error = exc if isinstance(exc, DizzyError) else None
        self._key = b""  # nothing more may be derived from a failed exchange
        if not told_by_peer and isinstance(exc, DizzyError):
            self._goodbye = [error_message(exc)]

    @property
    def code_spent(self) -> bool:
        return False

    def _on_error(self, msg: Message) -> None:
        code: str = msg["code"]
        text: str = msg["msg"][:MAX_ERROR_TEXT]
        if code == WrongCode.code:
            raise WrongCode("wrong code: the other device used a different code")
        if code in _SHARED_ERRORS:
            raise _SHARED_ERRORS[code](text or code)
        raise PairingAborted(f"the other device aborted the pairing: {text!r}")

    def _transcript_of(self, nameplate: int, joiner_pake: bytes, inviter_pake: bytes) -> bytes:
        # Binds version and nameplate too: a downgrade or a re-routed hello changes it.
        return transcript_hash(PAIRING_VERSION.to_bytes(4, "big"),
                               nameplate.to_bytes(4, "big"), joiner_pake, inviter_pake)

    def _sealed_local_info(self) -> bytes:
        plaintext = pack_value([self.local.public_key, self.local.cert_pem, self.local.name])
        return seal(derive_key(self._key, f"box/{self.role.value}"), 0, plaintext,
                    _BOX_AAD + self._transcript)

    def _open_peer_info(self, box: bytes) -> PairingResult:
        peer_role = Role.INVITER if self.role is Role.JOINER else Role.JOINER
        plaintext = open_sealed(derive_key(self._key, f"box/{peer_role.value}"), 0, box,
                                _BOX_AAD + self._transcript)
        try:
            fields = msgpack.unpackb(plaintext, raw=False)
        except Exception:  # msgpack raises many types for garbage; all mean the same
            raise RemoteProtocolError("sealed identity is not msgpack") from None
        if not isinstance(fields, list) or len(fields) != 3:
            raise RemoteProtocolError("sealed identity is not [key, cert, name]")
        public_key, cert_pem, name = fields
        _check_identity(public_key, cert_pem, name, RemoteProtocolError)
        return PairingResult(DeviceId.from_public_key(public_key), public_key, cert_pem, name)


class Joiner(_PairingMachine):
    """``dizzy pair CODE``: connects to the inviter and speaks first."""

    role = Role.JOINER

    def __init__(self, code: PairingCode, local: LocalInfo, entropy: Entropy) -> None:
        super().__init__(code, local, entropy, State.START)
        self._pake = spake2.SPAKE2_A(code.password, idA=_ID_JOINER, idB=_ID_INVITER,
                                     entropy_f=entropy)
        self._hello_pake = b""

    def start(self) -> list[Message]:
        """The first message(s) to send: the hello."""
        if self.state is not State.START:
            raise LocalProtocolError("start() may be called once")
        return self._dispatch("start", None)

    def receive(self, msg: object) -> list[Message]:
        """Feed one decoded message; returns the messages to send in reply."""
        return self._receive(msg)

    def _send_hello(self, _msg: None) -> list[Message]:
        self._hello_pake = self._pake.start()
        return [{"t": "hello", "v": PAIRING_VERSION, "np": self.code.nameplate,
                 "pake": self._hello_pake}]

    def _on_pake(self, msg: Message) -> list[Message]:
        self._key = _pake_finish(self._pake, msg["pake"])
        self._transcript = self._transcript_of(self.code.nameplate, self._hello_pake,
                                               msg["pake"])
        if not confirmation_ok(self._key, "confirm/inviter", self._transcript, msg["mac"]):
            raise WrongCode("wrong code: the other device did not prove it has this code")
        return [{"t": "confirm",
                 "mac": confirmation_mac(self._key, "confirm/joiner", self._transcript),
                 "box": self._sealed_local_info()}]

    def _on_info(self, msg: Message) -> list[Message]:
        self.result = self._open_peer_info(msg["box"])
        return [{"t": "done", "mac": confirmation_mac(self._key, "done/joiner",
                                                      self._transcript)}]


class Inviter(_PairingMachine):
    """``dizzy pair``: waits for one joiner's hello; one guess, then the code is spent."""

    role = Role.INVITER

    def __init__(self, code: PairingCode, expires_at: float, local: LocalInfo,
                 entropy: Entropy) -> None:
        super().__init__(code, local, entropy, State.WAIT_HELLO)
        self.expires_at = expires_at
        self._now = 0.0
        self._spent = False
        self._peer: PairingResult | None = None

    @property
    def code_spent(self) -> bool:
        """True once our SPAKE2 message went out: the code must never be used again."""
        return self._spent

    def receive(self, msg: object, *, now: float) -> list[Message]:
        """Feed one decoded message at time ``now`` (the clock of ``expires_at``)."""
        self._now = now
        return self._receive(msg)

    def _on_hello(self, msg: Message) -> list[Message]:
        # Expiry is checked when a joiner arrives; an exchange then takes milliseconds.
        if self._now >= self.expires_at:
            raise CodeExpired(f"pairing code {self.code.nameplate}-... has expired; "
                              "ask for a new one")
        if msg["np"] != self.code.nameplate:
            raise UnknownNameplate(f"no pairing is waiting for code {msg['np']}-... here")
        pake = spake2.SPAKE2_B(self.code.password, idA=_ID_JOINER, idB=_ID_INVITER,
                               entropy_f=self._entropy)
        my_pake: bytes = pake.start()
        # A malformed joiner message fails here, before we reveal anything: no guess
        # was made, so the code survives for the real joiner.
        self._key = _pake_finish(pake, msg["pake"])
        self._transcript = self._transcript_of(self.code.nameplate, msg["pake"], my_pake)
        self._spent = True
        return [{"t": "pake", "pake": my_pake,
                 "mac": confirmation_mac(self._key, "confirm/inviter", self._transcript)}]

    def _on_confirm(self, msg: Message) -> list[Message]:
        if not confirmation_ok(self._key, "confirm/joiner", self._transcript, msg["mac"]):
            raise WrongCode("wrong code: the joining device used a different code "
                            "(this code is now burned)")
        self._peer = self._open_peer_info(msg["box"])
        return [{"t": "info", "box": self._sealed_local_info()}]

    def _on_done(self, msg: Message) -> list[Message]:
        if not confirmation_ok(self._key, "done/joiner", self._transcript, msg["mac"]):
            # The key was already confirmed, so this is tampering, not a typo.
            raise RemoteProtocolError("pairing acknowledgement failed authentication")
        self.result = self._peer
        return []
