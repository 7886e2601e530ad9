"""The peer wire protocol, byte by byte: preamble, messages, session, tie break."""

from __future__ import annotations

import contextlib
from typing import Any, cast

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dizzy.protocol.errors import (
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    error_from_code,
)
from dizzy.protocol.framing import EOF, HEADER, NEED_DATA, PEER_MAX_FRAME, encode_frame
from dizzy.protocol.ids import DeviceId
from dizzy.protocol.peer_wire import (
    MAX_REQUESTS_IN_FLIGHT,
    PROTOCOL_VERSION,
    ErrorResponse,
    Hello,
    IncompatibleVersion,
    Notice,
    PeerMessage,
    PeerRefused,
    PeerSession,
    Ping,
    Pong,
    Preamble,
    PreambleKind,
    Request,
    Response,
    choose_connection,
    encode_preamble,
    parse_peer_message,
    parse_preamble,
)

DEV_A = DeviceId(bytes(range(32)))
DEV_B = DeviceId(bytes(range(1, 33)))


# ------------------------------------------------------------------------- preamble


def test_preamble_bytes_are_fixed() -> None:
    assert encode_preamble(PreambleKind.TRANSPORT, DEV_A) == b"DZY1TLS\n" + DEV_A.digest
    assert encode_preamble(PreambleKind.PAIR, None) == b"DZY1PAIR"


@pytest.mark.parametrize(
    ("kind", "device"), [(PreambleKind.TRANSPORT, DEV_A), (PreambleKind.PAIR, None)]
)
def test_preamble_whole_bytewise_and_with_trailing_bytes(
    kind: PreambleKind, device: DeviceId | None
) -> None:
    wire = encode_preamble(kind, device)
    assert parse_preamble(wire) == (kind, device)
    for cut in range(len(wire)):
        assert parse_preamble(wire[:cut]) is NEED_DATA
    trailing = wire + b"\x16\x03\x01 TLS ClientHello follows"
    parsed = parse_preamble(trailing)
    assert isinstance(parsed, Preamble)
    assert parsed == (kind, device)
    assert parsed.size == len(wire)
    assert trailing[parsed.size :] == b"\x16\x03\x01 TLS ClientHello follows"


@pytest.mark.parametrize(
    "bad",
    [
        b"G",  # an HTTP client: refused at the first byte
        b"GET / HTTP/1.1\r\n",
        b"DZY2TLS\n",
        b"DZY1X",
        b"DZY1TLS\r",
        b"DZY1PAIX",
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello without preamble
    ],
)
def test_preamble_rejects_garbage_as_early_as_possible(bad: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_preamble(bad)


def test_preamble_encode_rules() -> None:
    with pytest.raises(LocalProtocolError):
        encode_preamble(PreambleKind.TRANSPORT, None)
    with pytest.raises(LocalProtocolError):
        encode_preamble(PreambleKind.PAIR, DEV_A)


@given(st.binary(max_size=64))
def test_preamble_parse_fuzz(data: bytes) -> None:
    try:
        parsed = parse_preamble(data)
    except RemoteProtocolError:
        return
    if isinstance(parsed, Preamble):
        assert encode_preamble(parsed.kind, parsed.claimed_device) == data[: parsed.size]


# ------------------------------------------------------------------------- messages

EVERY_MESSAGE: list[PeerMessage] = [
    Hello((1, 0), "laptop"),
    Hello((1, 7), ""),
    Ping(0),
    Pong(2**64 - 1),
    Request(1, "get-chunk", {"hash": b"\x00" * 32, "offset": 0}),
    Request(2**64 - 1, "a"),
    Response(1, {"data": b"x" * 1000, "nested": {"list": [1, 2, None]}}),
    Response(5),
    ErrorResponse(1, "not-found", "no object abc"),
    Notice("manifest-changed", {"folder": "photos", "seq": 12}),
]


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=repr)
def test_message_round_trip(message: PeerMessage) -> None:
    wire = msgpack.unpackb(msgpack.packb(message.to_wire(), use_bin_type=True), raw=False)
    assert parse_peer_message(wire) == message


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        {"t": "nope"},
        {"t": "hello", "v": [1], "n": "x"},
        {"t": "hello", "v": [1, 0]},
        {"t": "hello", "v": "1.0", "n": "x"},
        {"t": "hello", "v": [1, -1], "n": "x"},
        {"t": "hello", "v": [True, 0], "n": "x"},
        {"t": "hello", "v": [1, 0], "n": "a" * 129},
        {"t": "hello", "v": [1, 0], "n": "evil\nlog line"},
        {"t": "ping", "k": -1},
        {"t": "ping", "k": 2**64},
        {"t": "ping"},
        {"t": "pong", "k": 1.5},
        {"t": "req", "i": 1, "k": "Get Chunk", "b": {}},
        {"t": "req", "i": 1, "k": "", "b": {}},
        {"t": "req", "i": True, "k": "x", "b": {}},
        {"t": "req", "i": 1, "k": "x", "b": []},
        {"t": "req", "i": 1, "k": "x", "b": {1: 2}},
        {"t": "res", "i": "1", "b": {}},
        {"t": "res", "i": 1},
        {"t": "err", "i": 1, "c": "x", "m": "y" * 5000},
        {"t": "err", "i": 1, "c": 3, "m": ""},
        {"t": "note", "k": "x"},
    ],
    ids=repr,
)
def test_malformed_messages_are_the_peers_fault(value: Any) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_peer_message(value)


def test_unknown_fields_are_ignored_for_minor_version_growth() -> None:
    assert parse_peer_message({"t": "ping", "k": 3, "future": "x"}) == Ping(3)


def test_constructors_validate_locally() -> None:
    with pytest.raises(LocalProtocolError):
        Request(-1, "x")
    with pytest.raises(LocalProtocolError):
        Notice("BAD KIND")
    with pytest.raises(LocalProtocolError):
        Hello(cast(Any, (1,)), "x")


def test_foreign_major_version_is_a_clear_error() -> None:
    with pytest.raises(IncompatibleVersion) as info:
        # a 2.x Hello may have other fields altogether: the version error comes first
        parse_peer_message({"t": "hello", "v": [2, 3], "who": "future"})
    assert str(info.value) == "peer speaks dizzy protocol 2.x; this device speaks 1.x"
    assert isinstance(info.value, RemoteProtocolError)
    assert isinstance(error_from_code("incompatible-version", "m"), IncompatibleVersion)
    assert isinstance(error_from_code("peer-refused", "m"), PeerRefused)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8),
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["t", "v", "n", "k", "i", "b", "c", "m"]) | st.text(
            max_size=3), inner, max_size=5),
        max_leaves=12,
    )
)
def test_parse_peer_message_fuzz(value: Any) -> None:
    try:
        message = parse_peer_message(value)
    except RemoteProtocolError:
        return
    assert parse_peer_message(message.to_wire()) == message


@given(
    st.sampled_from(["hello", "ping", "pong", "req", "res", "err", "note"]),
    st.dictionaries(
        st.sampled_from(["v", "n", "k", "i", "b", "c", "m"]),
        st.integers(-2, 2**64 + 1) | st.text(max_size=4) | st.lists(st.integers(-1, 3),
                                                                   max_size=3)
        | st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    ),
)
def test_parse_peer_message_fuzz_near_valid(tag: str, fields: dict[str, Any]) -> None:
    with contextlib.suppress(RemoteProtocolError):
        parse_peer_message({"t": tag, **fields})


# -------------------------------------------------------------------------- session


def pair() -> tuple[PeerSession, PeerSession]:
    """Two sessions with Hello exchanged, as after a successful connection."""
    a, b = PeerSession("a"), PeerSession("b")
    b.receive_data(a.send(a.hello))
    a.receive_data(b.send(b.hello))
    assert b.next_event() == Hello(PROTOCOL_VERSION, "a")
    assert a.next_event() == Hello(PROTOCOL_VERSION, "b")
    return a, b


def test_hello_then_request_response_between_two_sessions() -> None:
    a, b = pair()
    assert a.peer_hello == Hello(PROTOCOL_VERSION, "b")
    ids = [a.next_request_id() for _ in range(3)]
    assert len(set(ids)) == 3
    b.receive_data(b"".join(a.send(Request(i, "get", {"n": i})) for i in ids))
    assert a.requests_in_flight == 3
    received = [b.next_event() for _ in ids]
    assert b.next_event() is NEED_DATA
    assert b.requests_being_served == 3
    # answered out of order: that is the point of request IDs
    a.receive_data(b.send(ErrorResponse(ids[2], "not-found", "no")))
    assert isinstance(received[0], Request)
    a.receive_data(b.send(Response(ids[0], {"n": received[0].body["n"]})))
    a.receive_data(b.send(Notice("hi")))
    assert a.next_event() == ErrorResponse(ids[2], "not-found", "no")
    assert a.next_event() == Response(ids[0], {"n": ids[0]})
    assert a.next_event() == Notice("hi")
    assert a.requests_in_flight == 1
    a.receive_data(b.send(Ping(9)))
    b.receive_data(a.send(Pong(9)))
    assert a.next_event() == Ping(9)
    assert b.next_event() == Pong(9)


def test_session_fed_one_byte_at_a_time() -> None:
    a, b = PeerSession("a"), PeerSession("b")
    wire = a.send(a.hello) + a.send(Notice("x", {"k": b"v"}))
    events = []
    for i in range(len(wire)):
        b.receive_data(wire[i : i + 1])
        while (event := b.next_event()) is not NEED_DATA:
            events.append(event)
    assert events == [a.hello, Notice("x", {"k": b"v"})]
    b.receive_data(b"")
    assert b.next_event() is EOF


def test_hello_must_come_first_and_once() -> None:
    a, b = PeerSession("a"), PeerSession("b")
    with pytest.raises(LocalProtocolError):
        a.send(Ping(1))
    b.receive_data(encode_frame(Ping(1).to_wire()))
    with pytest.raises(RemoteProtocolError, match="before Hello"):
        b.next_event()
    with pytest.raises(RemoteProtocolError):  # a broken session stays broken
        b.next_event()
    a, b = pair()
    with pytest.raises(LocalProtocolError):
        a.send(a.hello)
    a.receive_data(encode_frame(Hello(PROTOCOL_VERSION, "b").to_wire()))
    with pytest.raises(RemoteProtocolError, match="twice"):
        a.next_event()


def test_version_mismatch_in_session() -> None:
    future = PeerSession("future", version=(2, 0))
    here = PeerSession("here")
    here.receive_data(future.send(future.hello))
    with pytest.raises(IncompatibleVersion, match=r"2\.x.*1\.x"):
        here.next_event()
    newer_minor = PeerSession("newer", version=(1, 9))
    here = PeerSession("here")
    here.receive_data(newer_minor.send(newer_minor.hello))
    assert here.next_event() == Hello((1, 9), "newer")


def test_response_to_unknown_request_is_the_peers_fault() -> None:
    a, b = pair()
    a.receive_data(encode_frame(Response(77).to_wire()))
    with pytest.raises(RemoteProtocolError, match="unknown request ID 77"):
        a.next_event()
    a, b = pair()
    with pytest.raises(LocalProtocolError):
        b.send(Response(1))  # we cannot answer what was never asked


def test_answered_request_cannot_be_answered_again() -> None:
    a, b = pair()
    b.receive_data(a.send(Request(1, "x")))
    b.next_event()
    a.receive_data(b.send(Response(1)) + encode_frame(Response(1).to_wire()))
    assert a.next_event() == Response(1)
    with pytest.raises(RemoteProtocolError):
        a.next_event()


def test_in_flight_bound_protects_the_receiver() -> None:
    _a, b = pair()
    flood = b"".join(
        encode_frame(Request(i, "x").to_wire()) for i in range(MAX_REQUESTS_IN_FLIGHT + 1)
    )
    b.receive_data(flood)
    for _ in range(MAX_REQUESTS_IN_FLIGHT):
        assert isinstance(b.next_event(), Request)
    with pytest.raises(RemoteProtocolError, match="in flight"):
        b.next_event()


def test_in_flight_bound_is_enforced_on_send_and_freed_by_answers() -> None:
    a, b = pair()
    for i in range(MAX_REQUESTS_IN_FLIGHT):
        b.receive_data(a.send(Request(i, "x")))
    with pytest.raises(LocalProtocolError):
        a.send(Request(MAX_REQUESTS_IN_FLIGHT, "x"))
    event = b.next_event()
    assert isinstance(event, Request)
    a.receive_data(b.send(Response(event.id)))
    assert a.next_event() == Response(0)
    a.send(Request(MAX_REQUESTS_IN_FLIGHT, "x"))  # room again


def test_duplicate_request_id_in_flight() -> None:
    a, b = pair()
    b.receive_data(encode_frame(Request(4, "x").to_wire()) * 2)
    b.next_event()
    with pytest.raises(RemoteProtocolError, match="reused"):
        b.next_event()
    a.send(Request(4, "x"))
    with pytest.raises(LocalProtocolError):
        a.send(Request(4, "x"))


def test_oversized_frame_is_refused_before_buffering() -> None:
    a, b = pair()
    b.receive_data(HEADER.pack(PEER_MAX_FRAME + 1))
    with pytest.raises(RemoteProtocolError):
        b.next_event()
    a, b = pair()
    b.receive_data(a.send(Request(1, "big")))
    b.next_event()
    with pytest.raises(LocalProtocolError, match="exceeds"):
        b.send(Response(1, {"data": b"x" * PEER_MAX_FRAME}))
    a.receive_data(b.send(Response(1, {"data": b"small"})))  # state unharmed by the failure
    assert a.next_event() == Response(1, {"data": b"small"})


def test_garbage_frame_body() -> None:
    _a, b = pair()
    b.receive_data(HEADER.pack(3) + b"\xc1\xc1\xc1")
    with pytest.raises(RemoteProtocolError):
        b.next_event()


def test_eof_inside_a_frame() -> None:
    a, b = pair()
    b.receive_data(a.send(Notice("x"))[:-1])
    b.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        b.next_event()


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_session_fuzz_only_raises_protocol_errors(data: bytes) -> None:
    peer = PeerSession("b")
    hello = peer.send(peer.hello)
    for prefix in (b"", hello):  # garbage instead of Hello, and garbage after it
        session = PeerSession("a")
        session.receive_data(prefix + data)
        session.receive_data(b"")
        try:
            while session.next_event() is not EOF:
                pass
        except ProtocolError:
            pass


# ----------------------------------------------------------------------- tie break


def test_choose_connection_is_deterministic_and_complementary() -> None:
    assert choose_connection(DEV_A, DEV_B) == "dial"
    assert choose_connection(DEV_B, DEV_A) == "wait"
    with pytest.raises(LocalProtocolError):
        choose_connection(DEV_A, DEV_A)


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_choose_connection_exactly_one_side_dials(x: bytes, y: bytes) -> None:
    if x == y:
        return
    p, q = DeviceId(x), DeviceId(y)
    assert {choose_connection(p, q), choose_connection(q, p)} == {"dial", "wait"}


def test_requests_and_notices_are_small() -> None:
    """Regression: a paired peer could pad each of its 256 requests in flight to 5 MiB and
    make the victim hold 1.36 GB.  Only replies may be big."""
    from dizzy.protocol.framing import PEER_MAX_FRAME, encode_frame
    from dizzy.protocol.peer_wire import MAX_REQUEST_FRAME

    pad = b"x" * MAX_REQUEST_FRAME
    for big in (Request(1, "obj.chunk", {"pad": pad}), Notice("folder.changed", {"pad": pad})):
        sender = PeerSession("a")
        sender.send(sender.hello)
        with pytest.raises(LocalProtocolError):
            sender.send(big)
        receiver = PeerSession("b")
        receiver.receive_data(encode_frame(Hello(PROTOCOL_VERSION, "a").to_wire(),
                                           PEER_MAX_FRAME)
                              + encode_frame(big.to_wire(), PEER_MAX_FRAME))
        assert isinstance(receiver.next_event(), Hello)
        with pytest.raises(RemoteProtocolError, match="limit"):
            receiver.next_event()
    # A reply that big is fine (it carries a chunk), and so is a request just under.
    ok = PeerSession("a")
    ok.send(ok.hello)
    ok.send(Request(2, "obj.chunk", {"pad": b"x" * (MAX_REQUEST_FRAME - 100)}))
