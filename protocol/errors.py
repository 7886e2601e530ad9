"""The one error hierarchy of dizzy.

Every error a user can meet derives from ``DizzyError``; the CLI turns each into one
line on stderr and an exit code (``exit_code``).  Protocol errors say whose fault it
was, like h11: ``LocalProtocolError`` (we broke the rules) and ``RemoteProtocolError``
(the peer did).
"""

from __future__ import annotations


class DizzyError(Exception):
    """Root of every error dizzy reports to a user."""

    #: process exit status the CLI uses for this error
    exit_code = 1
    #: stable machine-readable name, carried over the control API
    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(DizzyError):
    """The caller asked for something malformed (a bad ID, a bad path...)."""

    exit_code = 2
    code = "usage"


class BadObjectId(UsageError):
    code = "bad-object-id"


class BadDeviceId(UsageError):
    code = "bad-device-id"


class NotFound(DizzyError):
    """The object (or peer, folder...) is not known here."""

    exit_code = 3
    code = "not-found"


class StorageError(DizzyError):
    """The disk refused: no space, no permission, a missing directory."""

    exit_code = 4
    code = "storage"


class DaemonNotRunning(DizzyError):
    exit_code = 5
    code = "daemon-not-running"


class TimedOut(DizzyError):
    exit_code = 6
    code = "timeout"


class CorruptData(DizzyError):
    """Bytes did not match the hash that names them."""

    exit_code = 7
    code = "corrupt"


class ProtocolError(DizzyError):
    """Abstract: a message broke the protocol."""

    code = "protocol"


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol forbids (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The other side sent something the protocol forbids."""


class FrameTooLarge(RemoteProtocolError):
    code = "frame-too-large"


# Stable error codes -> classes, so an error raised in the daemon is re-raised in the
# client as the same class.
_BY_CODE: dict[str, type[DizzyError]] = {}


def register(cls: type[DizzyError]) -> type[DizzyError]:
    _BY_CODE[cls.code] = cls
    return cls


for _cls in (
    DizzyError,
    UsageError,
    BadObjectId,
    BadDeviceId,
    NotFound,
    StorageError,
    DaemonNotRunning,
    TimedOut,
    CorruptData,
    ProtocolError,
    FrameTooLarge,
):
    register(_cls)


def error_from_code(code: str, message: str) -> DizzyError:
    """Rebuild an error received over the control API."""
    return _BY_CODE.get(code, DizzyError)(message)


class UnsafePath(RemoteProtocolError):
    """A peer sent a path that could escape its folder or that we cannot store."""

    code = "unsafe-path"


register(UnsafePath)


class PairingError(DizzyError):
    """Abstract: a pairing attempt failed; the subclass says why."""

    code = "pairing"


class WrongCode(PairingError):
    """The two devices did not use the same code (a typo, or someone guessing)."""

    code = "wrong-code"


class CodeExpired(PairingError):
    code = "code-expired"


class CodeInUse(PairingError):
    """Another device is already pairing with this code's nameplate."""

    code = "code-in-use"


class UnknownNameplate(PairingError):
    """No pairing is waiting for this nameplate (expired, used up, or a typo)."""

    code = "unknown-nameplate"


class PairingAborted(PairingError):
    """The other device gave up for a reason of its own (it sent an error)."""

    code = "pairing-aborted"


class MalformedCode(UsageError):
    """The user typed something that is not a pairing code at all."""

    code = "malformed-code"


for _cls in (
    PairingError,
    WrongCode,
    CodeExpired,
    CodeInUse,
    UnknownNameplate,
    PairingAborted,
    MalformedCode,
):
    register(_cls)


class ForgedSignature(RemoteProtocolError):
    """A signed log head does not verify against the paired device's key."""

    code = "forged-signature"


class BrokenChain(RemoteProtocolError):
    """Log entries do not hash-chain to each other or to the head that covers them."""

    code = "broken-chain"


class Rollback(RemoteProtocolError):
    """A peer's signed log goes back on history we already hold."""

    code = "rollback"

    def __init__(
        self, message: str, *, known_seq: int | None = None, offered_seq: int | None = None
    ) -> None:
        super().__init__(message)
        self.known_seq = known_seq
        self.offered_seq = offered_seq


class Fork(Rollback):
    """The device signed two different histories: the same sequence, another hash."""

    code = "fork"


for _cls in (ForgedSignature, BrokenChain, Rollback, Fork):
    register(_cls)
