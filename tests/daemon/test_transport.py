"""The peer transport over real sockets on 127.0.0.1, real TLS and real identities."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import pytest
import trio

from dizzy.daemon.identity import Identity, load_or_create_identity
from dizzy.daemon.tls import make_client_context
from dizzy.daemon.transport import (
    PeerConnection,
    accept_peer,
    dial_peer,
    receive_preamble,
)
from dizzy.protocol.errors import RemoteProtocolError, TimedOut
from dizzy.protocol.framing import HEADER, PEER_MAX_FRAME, encode_frame
from dizzy.protocol.peer_wire import (
    ErrorResponse,
    Notice,
    PeerRefused,
    PeerSession,
    PreambleKind,
    Request,
    Response,
    encode_preamble,
)

Outcome: TypeAlias = PeerConnection | BaseException
Serve = Callable[[PeerConnection], Awaitable[None]]


@dataclass
class Devices:
    alice: Identity
    bob: Identity
    mallory: Identity


@pytest.fixture
def devices(tmp_path: Path) -> Devices:
    made = {}
    for name in ("alice", "bob", "mallory"):
        (tmp_path / name).mkdir()
        made[name] = load_or_create_identity(tmp_path / name)
    return Devices(**made)


async def echo_server(conn: PeerConnection) -> None:
    """The listener's side in these tests: answer requests until the peer leaves."""
    blob = bytes(1024 * 1024)
    async for event in conn:
        if isinstance(event, Request):
            if event.kind == "echo":
                await conn.send(Response(event.id, event.body))
            elif event.kind == "blob":
                await conn.send(Response(event.id, {"data": blob}))
            else:
                await conn.send(ErrorResponse(event.id, "unknown-kind", event.kind))
        elif isinstance(event, Notice):
            await conn.send(Notice("ack", event.body))


@asynccontextmanager
async def listening(
    identity: Identity, trusted: list[bytes], *, timeout: float = 5.0, serve: Serve = echo_server
) -> AsyncIterator[tuple[int, trio.MemoryReceiveChannel[Outcome]]]:
    """A listener like the daemon's: route on the preamble, accept, serve; every
    accepted connection or refusal is reported on the yielded channel."""
    outcomes_in, outcomes = trio.open_memory_channel[Outcome](math.inf)

    async def handler(stream: trio.SocketStream) -> None:
        try:
            preamble = await receive_preamble(stream, timeout=timeout)
            assert preamble.kind is PreambleKind.TRANSPORT
            conn = await accept_peer(
                stream, identity, trusted, claimed=preamble.claimed_device, timeout=timeout,
                name="alice-laptop",
            )
        except Exception as exc:
            outcomes_in.send_nowait(exc)
            return
        outcomes_in.send_nowait(conn)
        try:
            await serve(conn)
        except Exception as exc:
            outcomes_in.send_nowait(exc)
        finally:
            await conn.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        yield port, outcomes
        nursery.cancel_scope.cancel()


async def raw_connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def test_paired_devices_exchange_hello_requests_and_notices(devices: Devices) -> None:
    a, b = devices.alice, devices.bob
    async with listening(a, [b.cert_pem]) as (port, outcomes):
        conn = await dial_peer("127.0.0.1", port, b, [a.cert_pem], a.device_id, name="bob-pc")
        async with conn:
            server_side = await outcomes.receive()
            assert isinstance(server_side, PeerConnection)
            assert server_side.device_id == b.device_id
            assert server_side.peer_name == "bob-pc"
            assert conn.device_id == a.device_id
            assert conn.peer_name == "alice-laptop"
            assert conn.peer_version == (1, 0)
            # several requests in flight at once, answered by ID
            requests = [conn.new_request("echo", {"n": i}) for i in range(10)]
            requests.append(conn.new_request("nonsense"))
            for request in requests:
                await conn.send(request)
            await conn.send(Notice("hello", {"x": b"\x00"}))
            answers: dict[int, Response | ErrorResponse] = {}
            while len(answers) < len(requests):
                event = await conn.receive()
                if isinstance(event, Response | ErrorResponse):
                    answers[event.id] = event
                else:
                    assert event == Notice("ack", {"x": b"\x00"})
            for i, request in enumerate(requests[:-1]):
                assert answers[request.id] == Response(request.id, {"n": i})
            assert answers[requests[-1].id] == ErrorResponse(
                requests[-1].id, "unknown-kind", "nonsense"
            )
            assert conn.session.requests_in_flight == 0


async def test_unpaired_device_is_refused_and_named_in_the_log(
    devices: Devices, caplog: pytest.LogCaptureFixture
) -> None:
    a, m = devices.alice, devices.mallory
    caplog.set_level(logging.INFO, logger="dizzy.transport")
    async with listening(a, [devices.bob.cert_pem]) as (port, outcomes):
        # mallory pinned alice's certificate somehow; alice never paired with mallory
        with pytest.raises(PeerRefused):
            await dial_peer("127.0.0.1", port, m, [a.cert_pem], a.device_id)
        refusal = await outcomes.receive()
    assert isinstance(refusal, PeerRefused)
    expected = f"refused TLS from unpaired device {m.device_id} at 127.0.0.1:"
    assert expected in str(refusal)
    assert any(expected in r.getMessage() for r in caplog.records), caplog.text


async def test_device_paired_on_one_side_only_is_refused(
    devices: Devices, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = devices.alice, devices.bob
    caplog.set_level(logging.WARNING, logger="dizzy.transport")
    # alice trusts bob, bob trusts only mallory.
    async with listening(a, [b.cert_pem]) as (port, outcomes):
        with pytest.raises(PeerRefused, match="unpaired"):
            await dial_peer("127.0.0.1", port, b, [devices.mallory.cert_pem])
        refusal = await outcomes.receive()
    assert isinstance(refusal, PeerRefused)
    assert "not paired on its side" in str(refusal)
    async with listening(b, [devices.mallory.cert_pem]) as (port, outcomes):
        with pytest.raises(PeerRefused, match="not paired on its side"):
            await dial_peer("127.0.0.1", port, a, [b.cert_pem], b.device_id)
        refusal = await outcomes.receive()
    assert isinstance(refusal, PeerRefused)
    assert f"refused TLS from unpaired device {a.device_id}" in str(refusal)
    assert f"unpaired device {a.device_id}" in caplog.text


async def test_expected_device_mismatch_is_refused(devices: Devices) -> None:
    a, b, m = devices.alice, devices.bob, devices.mallory
    async with listening(a, [b.cert_pem]) as (port, _):
        # bob pairs with both, but meant to reach mallory at this address
        with pytest.raises(PeerRefused, match="not the expected"):
            await dial_peer("127.0.0.1", port, b, [a.cert_pem, m.cert_pem], m.device_id)


async def test_claim_in_preamble_must_match_the_certificate(devices: Devices) -> None:
    a, b = devices.alice, devices.bob
    async with listening(a, [b.cert_pem]) as (port, outcomes):
        tcp = await raw_connect(port)
        await tcp.send_all(encode_preamble(PreambleKind.TRANSPORT, devices.mallory.device_id))
        tls = trio.SSLStream(tcp, make_client_context(b, [a.cert_pem]), server_hostname=None)
        await tls.do_handshake()
        refusal = await outcomes.receive()
        assert isinstance(refusal, PeerRefused)
        assert "claimed to be" in str(refusal)
        await trio.aclose_forcefully(tls)


async def test_no_paired_devices_refuses_everyone(devices: Devices) -> None:
    a, b = devices.alice, devices.bob
    with pytest.raises(PeerRefused, match="no paired devices"):
        await dial_peer("127.0.0.1", 9, b, [])
    async with listening(a, []) as (port, outcomes):
        with pytest.raises(PeerRefused):
            await dial_peer("127.0.0.1", port, b, [a.cert_pem])
        refusal = await outcomes.receive()
    assert isinstance(refusal, PeerRefused)
    assert str(b.device_id) in str(refusal)


async def test_garbage_closes_only_that_connection(devices: Devices) -> None:
    a, b = devices.alice, devices.bob
    async with listening(a, [b.cert_pem]) as (port, outcomes):
        # 1. not even a preamble
        http = await raw_connect(port)
        await http.send_all(b"GET / HTTP/1.1\r\n\r\n")
        assert isinstance(await outcomes.receive(), RemoteProtocolError)
        # 2. a preamble, then garbage where TLS should start
        junk = await raw_connect(port)
        await junk.send_all(encode_preamble(PreambleKind.TRANSPORT, b.device_id) + b"\x00" * 300)
        assert isinstance(await outcomes.receive(), PeerRefused)
        assert await junk.receive_some(100) in (b"", b"\x15\x03\x03\x00\x02\x02\x46")
        # 3. a proper peer that then sends a garbage frame, and one announcing 1 GiB
        for bad in (HEADER.pack(4) + b"\xc1\xc1\xc1\xc1", HEADER.pack(PEER_MAX_FRAME + 1)):
            conn = await dial_peer("127.0.0.1", port, b, [a.cert_pem])
            server_side = await outcomes.receive()
            assert isinstance(server_side, PeerConnection)
            await conn._stream.send_all(bad)
            assert isinstance(await outcomes.receive(), RemoteProtocolError)
            with pytest.raises((trio.BrokenResourceError, trio.EndOfChannel)):
                await conn.receive()
            await conn.aclose()
        # meanwhile a good connection on the same listener works
        async with await dial_peer("127.0.0.1", port, b, [a.cert_pem]) as good:
            assert isinstance(await outcomes.receive(), PeerConnection)
            await good.send(good.new_request("echo", {"ok": True}))
            assert isinstance(await good.receive(), Response)


async def test_silent_peers_are_cut_after_the_handshake_timeout(
    devices: Devices, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = devices.alice, devices.bob
    caplog.set_level(logging.INFO, logger="dizzy.transport")
    timeout = 0.3
    async with listening(a, [b.cert_pem], timeout=timeout) as (port, outcomes):
        start = trio.current_time()
        mute = await raw_connect(port)  # sends nothing at all
        assert isinstance(await outcomes.receive(), TimedOut)
        assert timeout <= trio.current_time() - start < timeout + 2
        assert await mute.receive_some(10) == b""  # the listener hung up
        # says who it is, then never starts TLS
        shy = await raw_connect(port)
        await shy.send_all(encode_preamble(PreambleKind.TRANSPORT, b.device_id))
        assert isinstance(await outcomes.receive(), TimedOut)
        assert await shy.receive_some(10) == b""
    assert f"cut connection from device {b.device_id}" in caplog.text


async def test_dial_to_a_listener_that_never_answers_times_out(devices: Devices) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")  # accepts, never reads
    port = listeners[0].socket.getsockname()[1]
    with pytest.raises(TimedOut):
        await dial_peer("127.0.0.1", port, devices.bob, [devices.alice.cert_pem], timeout=0.3)
    await listeners[0].aclose()


async def test_keepalive_keeps_a_quiet_link_and_cuts_a_dead_one(devices: Devices) -> None:
    a, b = devices.alice, devices.bob
    interval, timeout = 0.05, 0.4

    async def quiet_server(conn: PeerConnection) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.keepalive, interval, timeout)
            async for _ in conn:
                pass
            nursery.cancel_scope.cancel()

    async with listening(a, [b.cert_pem], serve=quiet_server) as (port, outcomes):
        conn = await dial_peer("127.0.0.1", port, b, [a.cert_pem])
        assert isinstance(await outcomes.receive(), PeerConnection)
        # Both sides run keepalive and read: the link survives several timeouts.
        with trio.move_on_after(3 * timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.keepalive, interval, timeout)
                await conn.receive()
        assert outcomes.statistics().current_buffer_used == 0
        # Now bob stops answering pings (no keepalive task, nobody reads): alice cuts.
        outcome = await outcomes.receive()
        while isinstance(outcome, BaseExceptionGroup) and len(outcome.exceptions) == 1:
            outcome = outcome.exceptions[0]  # the server's nursery wraps the reader's error
        assert isinstance(outcome, TimedOut), outcome
        assert "heard nothing" in str(outcome)
        await conn.aclose()


async def test_throughput_of_1_gib_in_1_mib_responses(devices: Devices) -> None:
    """Not asserted: measures the TLS + framing + session path in one process."""
    a, b = devices.alice, devices.bob
    total = 1024  # 1 MiB responses: 1 GiB
    window = 32  # requests kept in flight, as a fetcher would
    async with listening(a, [b.cert_pem]) as (port, _):
        conn = await dial_peer("127.0.0.1", port, b, [a.cert_pem])
        slots = trio.Semaphore(window)
        received = 0
        start = time.perf_counter()

        async def ask() -> None:
            for _ in range(total):
                await slots.acquire()
                await conn.send(conn.new_request("blob"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            for _ in range(total):
                event = await conn.receive()
                assert isinstance(event, Response)
                received += len(event.body["data"])
                slots.release()
        elapsed = time.perf_counter() - start
        await conn.aclose()
    assert received == total * 1024 * 1024
    print(f"\nPeerConnection throughput: {received / elapsed / 1e6:.0f} MB/s "
          f"({received / 2**30:.0f} GiB in {elapsed:.2f} s, 1 MiB responses, {window} in flight)")


def test_frame_limit_leaves_room_for_the_largest_chunk() -> None:
    # FastCDC's max chunk (4 MiB) plus the Response envelope must fit one peer frame.
    frame = encode_frame(Response(2**64 - 1, {"data": bytes(4 * 1024 * 1024)}).to_wire(),
                         PEER_MAX_FRAME)
    assert len(frame) <= PEER_MAX_FRAME + HEADER.size
    assert PeerSession("x").send  # the session uses that same limit
