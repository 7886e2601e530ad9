"""Fuzzing the connection preamble, peer messages and the peer session (peer_wire.py).

Allowed errors: ``RemoteProtocolError`` (``IncompatibleVersion`` included) for anything
the peer sent; nothing else, whatever the bytes or values.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dizzy.protocol.errors import RemoteProtocolError
from dizzy.protocol.framing import NEED_DATA, PEER_MAX_FRAME, encode_frame
from dizzy.protocol.peer_wire import (
    MAGIC,
    PROTOCOL_VERSION,
    ErrorResponse,
    Hello,
    Notice,
    PeerSession,
    Ping,
    Pong,
    Preamble,
    PreambleKind,
    Request,
    Response,
    parse_peer_message,
    parse_preamble,
)
from tests.fuzz.strategies import examples, msgpack_values, mutated_values
from tests.fuzz_counter import tick

VALID: list[dict[str, Any]] = [
    m.to_wire()
    for m in (
        Hello(PROTOCOL_VERSION, "laptop"), Ping(7), Pong(7), Request(1, "obj.stat", {"id": "0"}),
        Response(1, {"have": False}), ErrorResponse(1, "not-found", "no"),
        Notice("folder.changed", {"folder": "photos"}),
    )
]

preamble_bytes = st.one_of(
    st.binary(max_size=48),
    st.tuples(st.sampled_from([MAGIC, MAGIC + b"TLS\n", MAGIC + b"PAIR", b"DZY", b"DZY1TL"]),
              st.binary(max_size=40)).map(lambda t: t[0] + t[1]),
)


@examples(6000)
@given(data=preamble_bytes)
def test_preamble_parses_waits_or_refuses(data: bytes) -> None:
    tick()
    try:
        parsed = parse_preamble(data)
    except RemoteProtocolError:
        # A refused prefix stays refused however much more arrives.
        for extra in (b"", b"\x00" * 40):
            try:
                parse_preamble(data + extra)
            except RemoteProtocolError:
                continue
            raise AssertionError("a refused preamble prefix was accepted later") from None
        return
    if parsed is NEED_DATA:
        assert len(data) < 40
        return
    assert isinstance(parsed, Preamble) and parsed.size <= len(data)
    assert data.startswith(MAGIC + parsed.kind.wire)
    if parsed.kind is PreambleKind.TRANSPORT:
        assert parsed.claimed_device is not None
        assert parsed.claimed_device.digest == data[8:40]


peer_values = st.one_of(
    msgpack_values,
    mutated_values(VALID),
)


@examples(8000)
@given(value=peer_values)
def test_parse_peer_message_validates_or_refuses(value: Any) -> None:
    tick()
    try:
        message = parse_peer_message(value)
    except RemoteProtocolError:
        return
    # Whatever was accepted can be sent back as it is: it is a valid message.
    assert parse_peer_message(message.to_wire()) == message


def _frames(values: list[Any]) -> bytes:
    out = b""
    for v in values:
        try:
            out += encode_frame(v, PEER_MAX_FRAME)
        except Exception:  # unencodable values (huge) are not bytes a peer can send
            continue
    return out


@examples(3000)
@given(script=st.lists(st.one_of(st.sampled_from(VALID), peer_values), max_size=6),
       hello_first=st.booleans(), garbage=st.binary(max_size=16))
def test_session_survives_any_message_sequence(
        script: list[Any], hello_first: bool, garbage: bytes) -> None:
    tick()
    session = PeerSession("victim")
    session.send(session.hello)
    # A request of ours in flight, so some fuzzed responses are answers.
    session.send(Request(1, "obj.stat", {}))
    values = ([VALID[0]] if hello_first else []) + script
    session.receive_data(_frames(values) + garbage)
    session.receive_data(b"")
    seen = 0
    while True:
        try:
            event = session.next_event()
        except RemoteProtocolError:
            # Broken for good: the same error again, and the session stays consistent.
            try:
                session.next_event()
            except RemoteProtocolError:
                pass
            else:
                raise AssertionError("a broken session produced another event") from None
            break
        if event is NEED_DATA:
            raise AssertionError("EOF was fed but the session wants more data")
        if not isinstance(event, Hello | Ping | Pong | Request | Response | ErrorResponse
                          | Notice):
            break  # EOF
        seen += 1
        if isinstance(event, Request):
            assert session.requests_being_served >= 1
    assert session.requests_in_flight <= 1
    assert seen <= len(values)
