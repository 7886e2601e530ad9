"""Pairing in the daemon: invitations (``dizzy pair``) and joins (``dizzy pair CODE``).

The sans-IO state machines live in protocol/pairing.py; this module moves their
messages over a plain TCP connection to the inviter's listen port (the ``PAIR``
preamble), keeps the nameplate registry, advertises open nameplates over mDNS, and
records the new trust on success.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from dizzy.protocol.errors import (
    CodeExpired,
    DizzyError,
    PairingError,
    RemoteProtocolError,
    TimedOut,
)
from dizzy.protocol.framing import EOF, NEED_DATA, FrameDecoder, encode_frame
from dizzy.protocol.pairing import (
    PAIRING_MAX_FRAME,
    Inviter,
    Joiner,
    LocalInfo,
    PairingResult,
    error_message,
    peek_nameplate,
)
from dizzy.protocol.pairing_code import RANDOM_BYTES, NameplateRegistry, PairingCode, generate
from dizzy.protocol.peer_wire import PreambleKind, encode_preamble

from .events import EventBus
from .identity import Identity
from .peers import PeerManager
from .trust import TrustStore

log = logging.getLogger("dizzy.pairing")

#: how long ``dizzy pair`` waits for a joiner by default (the issue's 10 minutes)
DEFAULT_INVITE_TIMEOUT = 600.0
#: one whole exchange; honest peers need ~20 ms, so this only bounds a stalled one
EXCHANGE_TIMEOUT = 15.0
#: how long ``dizzy pair CODE`` looks for the nameplate over mDNS by default
DEFAULT_JOIN_TIMEOUT = 30.0


class NameplateFinder(Protocol):
    async def wait_nameplate(self, nameplate: int) -> Any: ...

    async def set_nameplate(self, nameplate: int | None) -> None: ...


@dataclass
class _Invite:
    code: PairingCode
    expires_at: float
    done: trio.Event = field(default_factory=trio.Event)
    result: PairingResult | None = None
    error: DizzyError | None = None


class _FramedStream:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(PAIRING_MAX_FRAME)

    async def send(self, messages: list[Any]) -> None:
        for msg in messages:
            await self.stream.send_all(encode_frame(msg, PAIRING_MAX_FRAME))

    async def receive(self) -> Any:
        while True:
            frame = self.decoder.next_frame()
            if frame is EOF:
                raise RemoteProtocolError("the other device hung up during pairing")
            if frame is not NEED_DATA:
                return frame
            self.decoder.receive_data(await self.stream.receive_some(65536))


class PairingService:
    def __init__(self, identity: Identity, name: str, trust: TrustStore, peers: PeerManager,
                 listen_port: int, *, events: EventBus) -> None:
        self.identity = identity
        self.events = events
        self.name = name
        self.trust = trust
        self.peers = peers
        self.listen_port = listen_port
        self.discovery: NameplateFinder | None = None
        self.registry = NameplateRegistry()
        self._invites: dict[int, _Invite] = {}

    def _local(self) -> LocalInfo:
        return LocalInfo(self.identity.public_key_raw, self.identity.cert_pem, self.name)

    async def _trust(self, result: PairingResult, address: str | None) -> None:
        await self.trust.add(result.peer_device_id, result.peer_name, result.peer_cert_pem,
                             address)
        self.events.publish("peer.paired", device_id=str(result.peer_device_id),
                            name=result.peer_name)

    def _failed(self, reason: object, *, logged: bool = False) -> None:
        self.events.publish("pairing.failed", already_logged=logged, reason=str(reason))

    # -- inviting -------------------------------------------------------------------

    async def invite(self, timeout: float, on_code: Any) -> PairingResult:
        now = time.time()
        nameplate = self.registry.allocate(now, timeout, os.urandom)
        code = generate(nameplate, os.urandom(RANDOM_BYTES))
        invite = _Invite(code, now + timeout)
        self._invites[nameplate] = invite
        try:
            if self.discovery is not None:
                await self.discovery.set_nameplate(nameplate)
            await on_code(str(code))
            # Never the words: anyone reading events or logs could pair with them.
            self.events.publish("pairing.started", nameplate=nameplate,
                                expires=invite.expires_at)
            with trio.move_on_after(timeout):
                await invite.done.wait()
        finally:
            self._invites.pop(nameplate, None)
            # A spent code's number stays reserved until it would have expired, so a
            # late joiner hears "already used", not "no such code".
            self.registry.close(nameplate)
            if self.discovery is not None:
                with trio.CancelScope(shield=True):
                    await self.discovery.set_nameplate(None)
        if invite.result is not None:
            return invite.result
        if invite.error is not None:
            raise invite.error  # pairing.failed was published where it failed
        expired = CodeExpired(f"no device joined within {timeout:g} s; the code has expired")
        self._failed(expired)
        raise expired

    async def handle_incoming(self, stream: trio.abc.Stream, where: str) -> None:
        """A joiner connected to our listen port with the PAIR preamble."""
        framed = _FramedStream(stream)
        with trio.move_on_after(EXCHANGE_TIMEOUT) as scope:
            await self._run_inviter(framed, where)
        if scope.cancelled_caught:
            log.warning("pairing attempt from %s timed out", where)
            self._failed(f"the attempt from {where} timed out", logged=True)

    async def _run_inviter(self, framed: _FramedStream, where: str) -> None:
        first = await framed.receive()
        nameplate = peek_nameplate(first)
        invite = self._invites.get(nameplate)
        try:
            self.registry.claim(nameplate, time.time())
            if invite is None:  # pragma: no cover - registry and invites move together
                raise CodeExpired(f"pairing code {nameplate}-... has expired")
        except PairingError as exc:
            log.warning("pairing attempt from %s refused: %s", where, exc)
            self._failed(f"attempt from {where}: {exc}", logged=True)
            await framed.send([error_message(exc)])
            return
        inviter = Inviter(invite.code, invite.expires_at, self._local(), os.urandom)
        msg = first
        failure: DizzyError | None = None
        try:
            while inviter.result is None:
                await framed.send(inviter.receive(msg, now=time.time()))
                if inviter.result is not None:
                    break
                msg = await framed.receive()
        except DizzyError as exc:
            failure = exc
            with contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, DizzyError
            ):
                await framed.send(inviter.goodbye())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            failure = RemoteProtocolError("the other device hung up during pairing")
        finally:
            if inviter.code_spent:
                self.registry.burn(nameplate)
            else:
                self.registry.release(nameplate)
        if inviter.result is not None:
            await self._trust(inviter.result, None)
            invite.result = inviter.result
            invite.done.set()
        elif inviter.code_spent:
            assert failure is not None
            log.warning("pairing with %s failed: %s (code burned)", where, failure)
            self._failed(f"{failure} (code burned)", logged=True)
            invite.error = failure
            invite.done.set()
        else:
            log.warning("pairing attempt from %s failed: %s", where, failure)
            self._failed(f"attempt from {where}: {failure}", logged=True)

    # -- joining --------------------------------------------------------------------

    async def join(self, code: PairingCode, address: tuple[str, int] | None,
                   timeout: float) -> PairingResult:
        try:
            return await self._join(code, address, timeout)
        except DizzyError as exc:
            self._failed(exc)
            raise

    async def _join(self, code: PairingCode, address: tuple[str, int] | None,
                    timeout: float) -> PairingResult:
        try:
            with trio.fail_after(timeout):
                if address is None:
                    if self.discovery is None:
                        raise DizzyError(
                            "mDNS is off on this daemon: give the inviting daemon's listen "
                            "address with --address HOST:PORT"
                        )
                    seen = await self.discovery.wait_nameplate(code.nameplate)
                    if not seen.addresses:
                        raise DizzyError("the inviting device advertises no address")
                    address = seen.addresses[0]
                host, port = address
                stream = await trio.open_tcp_stream(host, port)
                async with stream:
                    await stream.send_all(encode_preamble(PreambleKind.PAIR, None))
                    result = await self._run_joiner(_FramedStream(stream), code)
        except trio.TooSlowError:
            if address is None:
                raise TimedOut(
                    f"no device nearby offers pairing code {code.nameplate}-... "
                    f"(looked for {timeout:g} s over mDNS; try --address HOST:PORT)"
                ) from None
            raise TimedOut(f"pairing did not finish within {timeout:g} s") from None
        except OSError as exc:
            raise DizzyError(
                f"cannot reach the inviting device at {address[0]}:{address[1]}: "  # type: ignore[index]
                f"{exc.strerror or exc}"
            ) from exc
        await self._trust(result, f"{host}:{port}")
        self.peers.wake(result.peer_device_id, (host, port))
        return result

    async def _run_joiner(self, framed: _FramedStream, code: PairingCode) -> PairingResult:
        joiner = Joiner(code, self._local(), os.urandom)
        try:
            await framed.send(joiner.start())
            while joiner.result is None:
                try:
                    await framed.send(joiner.receive(await framed.receive()))
                except DizzyError:
                    # Tell the inviter why (e.g. "wrong code"), so both sides say the same.
                    with contextlib.suppress(
                        trio.BrokenResourceError, trio.ClosedResourceError, DizzyError
                    ):
                        await framed.send(joiner.goodbye())
                    raise
            # The inviter records its trust and then hangs up: wait for that, so our
            # first TLS dial is not refused by a peer that has not yet saved us.
            with trio.move_on_after(EXCHANGE_TIMEOUT), contextlib.suppress(DizzyError):
                await framed.receive()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if joiner.result is None:
                raise RemoteProtocolError("the inviting device hung up during pairing") from None
        assert joiner.result is not None
        return joiner.result
