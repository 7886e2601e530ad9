"""Control-API messages between the CLI/client and the local daemon, sans-IO.

One connection carries one request at a time.  The client sends a ``Request``; the
daemon answers with any number of ``Progress`` and ``Data`` messages and then exactly
one ``Reply`` or ``ErrorReply``; ``Notice`` messages carry anything the caller must see
before the end (a pairing code).  On the wire each message is a msgpack map with a
short type tag ``t``.  Parsing validates every field: a malformed message raises
``RemoteProtocolError`` and the receiver drops the connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import RemoteProtocolError

CONTROL_VERSION = 1
#: bytes of object data per ``Data`` message: large enough to amortise per-message
#: cost, small enough to keep both sides' buffers bounded.
DATA_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    version: int = CONTROL_VERSION

    def to_wire(self) -> dict[str, Any]:
        return {"t": "req", "v": self.version, "m": self.method, "p": self.params}


@dataclass(frozen=True)
class Reply:
    result: Any = None

    def to_wire(self) -> dict[str, Any]:
        return {"t": "ok", "r": self.result}


@dataclass(frozen=True)
class ErrorReply:
    code: str
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"t": "err", "c": self.code, "msg": self.message}


@dataclass(frozen=True)
class Progress:
    done: int
    total: int | None
    what: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"t": "prog", "d": self.done, "n": self.total, "w": self.what}


@dataclass(frozen=True)
class Data:
    block: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"t": "data", "b": self.block}


@dataclass(frozen=True)
class Notice:
    """Something the caller should see before the reply (e.g. a pairing code)."""

    kind: str
    value: Any = None

    def to_wire(self) -> dict[str, Any]:
        return {"t": "note", "k": self.kind, "x": self.value}


Message = Request | Reply | ErrorReply | Progress | Data | Notice


def _field(msg: dict[Any, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in msg:
        raise RemoteProtocolError(f"control message lacks field {key!r}")
    value = msg[key]
    # bool is an int subclass; never accept it where a number is wanted
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RemoteProtocolError(f"control message field {key!r} has the wrong type")
    return value


def parse_message(msg: Any) -> Message:
    """Validate one decoded frame as a control message."""
    if not isinstance(msg, dict):
        raise RemoteProtocolError("control message is not a map")
    tag = msg.get("t")
    if tag == "req":
        version = _field(msg, "v", int)
        method = _field(msg, "m", str)
        params = _field(msg, "p", dict)
        if not all(isinstance(k, str) for k in params):
            raise RemoteProtocolError("request parameter names must be strings")
        return Request(method=method, params=params, version=version)
    if tag == "ok":
        if "r" not in msg:
            raise RemoteProtocolError("reply lacks a result")
        return Reply(result=msg["r"])
    if tag == "err":
        return ErrorReply(code=_field(msg, "c", str), message=_field(msg, "msg", str))
    if tag == "prog":
        total = msg.get("n")
        if total is not None and (not isinstance(total, int) or isinstance(total, bool)):
            raise RemoteProtocolError("progress total has the wrong type")
        what = msg.get("w", "")
        if not isinstance(what, str):
            raise RemoteProtocolError("progress label has the wrong type")
        return Progress(done=_field(msg, "d", int), total=total, what=what)
    if tag == "data":
        return Data(block=_field(msg, "b", bytes))
    if tag == "note":
        return Notice(kind=_field(msg, "k", str), value=msg.get("x"))
    raise RemoteProtocolError(f"unknown control message type {tag!r}")
