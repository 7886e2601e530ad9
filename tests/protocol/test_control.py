from __future__ import annotations

import contextlib
from typing import Any

import pytest
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
from dizzy.protocol.errors import (
    BadObjectId,
    DizzyError,
    NotFound,
    RemoteProtocolError,
    error_from_code,
)


@pytest.mark.parametrize(
    "msg",
    [
        Request("put", {"path": "/x"}),
        Reply({"id": "ab"}),
        Reply(None),
        ErrorReply("not-found", "nope"),
        Progress(5, 10, "put"),
        Progress(5, None),
        Data(b"\x00" * 10),
        Notice("code", "42-a-b-c"),
    ],
)
def test_round_trip(msg: Any) -> None:
    assert parse_message(msg.to_wire()) == msg


@pytest.mark.parametrize(
    "wire",
    [
        None,
        [],
        {"t": "nope"},
        {"t": "req", "v": 1, "m": "x"},
        {"t": "req", "v": "1", "m": "x", "p": {}},
        {"t": "req", "v": True, "m": "x", "p": {}},
        {"t": "req", "v": 1, "m": 5, "p": {}},
        {"t": "req", "v": 1, "m": "x", "p": []},
        {"t": "ok"},
        {"t": "err", "c": 1, "msg": "x"},
        {"t": "prog", "d": "5"},
        {"t": "prog", "d": 5, "n": "x"},
        {"t": "data", "b": "text not bytes"},
        {"t": "note", "x": 1},
    ],
)
def test_malformed(wire: Any) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_message(wire)


@given(st.dictionaries(st.sampled_from(["t", "v", "m", "p", "r", "c", "msg", "d", "n", "b"]),
                       st.none() | st.integers() | st.text(max_size=5) | st.binary(max_size=5)
                       | st.sampled_from(["req", "ok", "err", "prog", "data"])))
def test_fuzz_only_protocol_errors(wire: dict[str, Any]) -> None:
    with contextlib.suppress(RemoteProtocolError):
        parse_message(wire)


def test_errors_cross_the_wire_as_their_class() -> None:
    assert isinstance(error_from_code(BadObjectId.code, "x"), BadObjectId)
    assert isinstance(error_from_code(NotFound.code, "x"), NotFound)
    assert type(error_from_code("never-heard-of", "x")) is DizzyError
