"""Fuzzing the control-API message parser (protocol/control.py).

Allowed error: ``RemoteProtocolError``.  An accepted message has fields of the types the
daemon and the client rely on.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dizzy.protocol.control import (
    Data,
    ErrorReply,
    Notice,
    Progress,
    Reply,
    Request,
    parse_message,
)
from dizzy.protocol.errors import RemoteProtocolError
from dizzy.protocol.framing import CONTROL_MAX_FRAME, NEED_DATA, FrameDecoder, encode_frame
from tests.fuzz.strategies import examples, msgpack_values, mutated_bytes_of, mutated_values
from tests.fuzz_counter import tick

VALID: list[dict[str, Any]] = [
    m.to_wire()
    for m in (
        Request("status"), Request("get", {"id": "ab" * 32, "timeout": 5.0}), Reply({"x": 1}),
        ErrorReply("not-found", "nobody has it"), Progress(5, 10, "chunks"), Data(b"bytes"),
        Notice("code", "42-orbit-candle-marble"),
    )
]

control_values = st.one_of(
    msgpack_values,
    mutated_values(VALID),
)


def _check_types(msg: object) -> None:
    if isinstance(msg, Request):
        assert type(msg.version) is int and type(msg.method) is str
        assert type(msg.params) is dict and all(type(k) is str for k in msg.params)
    elif isinstance(msg, ErrorReply):
        assert type(msg.code) is str and type(msg.message) is str
    elif isinstance(msg, Progress):
        assert type(msg.done) is int and (msg.total is None or type(msg.total) is int)
        assert type(msg.what) is str
    elif isinstance(msg, Data):
        assert type(msg.block) is bytes
    elif isinstance(msg, Notice):
        assert type(msg.kind) is str
    else:
        assert isinstance(msg, Reply)


@examples(8000)
@given(value=control_values)
def test_parse_message_validates_or_refuses(value: Any) -> None:
    tick()
    try:
        msg = parse_message(value)
    except RemoteProtocolError:
        return
    _check_types(msg)


@examples(3000)
@given(data=mutated_bytes_of([encode_frame(v, CONTROL_MAX_FRAME) for v in VALID]))
def test_framed_control_bytes_parse_or_refuse(data: bytes) -> None:
    tick()
    decoder = FrameDecoder(CONTROL_MAX_FRAME)
    decoder.receive_data(data)
    decoder.receive_data(b"")
    try:
        while (frame := decoder.next_frame()) is not NEED_DATA:
            if not isinstance(frame, dict | list | int | str | bytes | float | bool) and \
                    frame is not None:
                break  # EOF sentinel
            _check_types(parse_message(frame))
    except RemoteProtocolError:
        pass
