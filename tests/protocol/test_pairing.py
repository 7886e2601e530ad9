"""Pairing state machines, paired through a fake framed link: plain pytest, no trio."""

from __future__ import annotations

import datetime
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import spake2
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dizzy.protocol.errors import (
    CodeExpired,
    CodeInUse,
    DizzyError,
    FrameTooLarge,
    LocalProtocolError,
    PairingAborted,
    RemoteProtocolError,
    UnknownNameplate,
    WrongCode,
    error_from_code,
)
from dizzy.protocol.framing import NEED_DATA, FrameDecoder, encode_frame
from dizzy.protocol.ids import DeviceId
from dizzy.protocol.pairing import (
    PAIRING_MAX_FRAME,
    Inviter,
    Joiner,
    LocalInfo,
    Message,
    State,
    error_message,
    peek_nameplate,
)
from dizzy.protocol.pairing_code import NameplateRegistry, PairingCode
from dizzy.protocol.pairing_crypto import confirmation_mac, transcript_hash

CODE = PairingCode(42, ("four", "eager", "race"))
WRONG = PairingCode(42, ("four", "eager", "raven"))  # one word off: a typo
EXPIRES = 1000.0
NOW = 10.0
_CERT_TIME = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


def entropy(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def make_cert(
    key: Ed25519PrivateKey,
    *,
    signer: Ed25519PrivateKey | None = None,
    ca: bool | None = True,
    public: Any = None,
) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dizzy test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public if public is not None else key.public_key())
        .serial_number(1)
        .not_valid_before(_CERT_TIME)
        .not_valid_after(_CERT_TIME + datetime.timedelta(days=365))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    return builder.sign(signer or key, None).public_bytes(serialization.Encoding.PEM)


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def make_key(seed: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed.encode()).digest())


def identity(name: str) -> LocalInfo:
    key = make_key(name)
    return LocalInfo(raw(key), make_cert(key), name)


ALICE = identity("alice laptop")
BOB = identity("bob desktop")


def with_cert(info: LocalInfo, cert_pem: bytes) -> LocalInfo:
    # Bypass LocalInfo's own validation to play a lying (or buggy) peer.
    forged = LocalInfo(info.public_key, info.cert_pem, info.name)
    object.__setattr__(forged, "cert_pem", cert_pem)
    return forged


# -- the fake link --------------------------------------------------------------------


def over_the_wire(messages: list[Message], mode: str) -> list[Any]:
    """Frame messages as the daemon will, and decode them whole or byte by byte."""
    data = b"".join(encode_frame(m, PAIRING_MAX_FRAME) for m in messages)
    decoder = FrameDecoder(PAIRING_MAX_FRAME)
    chunks = [data] if mode == "whole" else [data[i : i + 1] for i in range(len(data))]
    out: list[Any] = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        while (value := decoder.next_frame()) is not NEED_DATA:
            out.append(value)
    assert decoder.buffered == 0
    return out


Tamper = Callable[[str, Message], Any]


@dataclass
class Run:
    log: list[tuple[str, Any]]  # (direction, message as delivered), in order
    inviter_error: DizzyError | None
    joiner_error: DizzyError | None


def run(inviter: Inviter, joiner: Joiner, *, now: float = NOW, mode: str = "whole",
        tamper: Tamper | None = None) -> Run:
    """Drive both machines as two daemons would, delivering goodbyes on failure."""
    errors: dict[str, DizzyError] = {}
    queue = [("to-inviter", m) for m in joiner.start()]
    log: list[tuple[str, Any]] = []
    while queue:
        direction, msg = queue.pop(0)
        delivered = tamper(direction, msg) if tamper else msg
        log.append((direction, delivered))
        (value,) = over_the_wire([delivered], mode)
        back = "to-joiner" if direction == "to-inviter" else "to-inviter"
        try:
            if direction == "to-inviter":
                out = inviter.receive(value, now=now)
            else:
                out = joiner.receive(value)
        except DizzyError as exc:
            side = "inviter" if direction == "to-inviter" else "joiner"
            errors[side] = exc
            machine = inviter if side == "inviter" else joiner
            out = machine.goodbye()
        queue += [(back, m) for m in out]
    return Run(log, errors.get("inviter"), errors.get("joiner"))


def fresh(seed: int = 0, *, expires: float = EXPIRES, joiner_code: PairingCode = CODE,
          alice: LocalInfo = ALICE, bob: LocalInfo = BOB) -> tuple[Inviter, Joiner]:
    return (Inviter(CODE, expires, alice, entropy(seed)),
            Joiner(joiner_code, bob, entropy(seed + 1000)))


# -- success --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_pairing_gives_each_side_the_others_identity(mode: str) -> None:
    inviter, joiner = fresh()
    result = run(inviter, joiner, mode=mode)
    assert result.inviter_error is None and result.joiner_error is None
    assert [m["t"] for _, m in result.log] == ["hello", "pake", "confirm", "info", "done"]
    assert inviter.state is State.DONE and joiner.state is State.DONE
    assert inviter.result is not None and joiner.result is not None
    assert inviter.result.peer_device_id == DeviceId.from_public_key(BOB.public_key)
    assert inviter.result.peer_public_key == BOB.public_key
    assert inviter.result.peer_cert_pem == BOB.cert_pem
    assert inviter.result.peer_name == "bob desktop"
    assert joiner.result.peer_device_id == DeviceId.from_public_key(ALICE.public_key)
    assert joiner.result.peer_cert_pem == ALICE.cert_pem
    assert joiner.result.peer_name == "alice laptop"
    assert inviter.code_spent  # single use, even on success
    assert inviter.goodbye() == [] and joiner.goodbye() == []


def test_first_message_carries_version_and_nameplate_only() -> None:
    _, joiner = fresh()
    (hello,) = joiner.start()
    assert set(hello) == {"t", "v", "np", "pake"}
    assert hello["v"] == 1 and hello["np"] == 42
    assert peek_nameplate(hello) == 42
    with pytest.raises(LocalProtocolError):
        joiner.start()


def test_a_relay_sees_no_identity_and_no_code_words() -> None:
    inviter, joiner = fresh()
    result = run(inviter, joiner)
    wire = b"".join(encode_frame(m, PAIRING_MAX_FRAME) for _, m in result.log)
    for secret in (ALICE.public_key, BOB.public_key, b"alice laptop", b"bob desktop",
                   b"BEGIN CERTIFICATE", b"eager", b"race"):
        assert secret not in wire


def test_frames_followed_by_trailing_bytes_decode_one_at_a_time() -> None:
    _, joiner = fresh()
    (hello,) = joiner.start()
    decoder = FrameDecoder(PAIRING_MAX_FRAME)
    decoder.receive_data(encode_frame(hello, PAIRING_MAX_FRAME) + b"\x00\x00")
    assert decoder.next_frame() == hello
    assert decoder.next_frame() is NEED_DATA


def test_whole_exchange_takes_milliseconds() -> None:
    timings = []
    for seed in range(5):
        inviter, joiner = fresh(seed)
        start = time.perf_counter()
        run(inviter, joiner)
        timings.append(time.perf_counter() - start)
        assert inviter.state is State.DONE
    best = min(timings)
    print(f"\nwhole pairing exchange (both sides, framed): best {best * 1000:.1f} ms, "
          f"median {sorted(timings)[2] * 1000:.1f} ms")
    assert best < 0.5  # ~15 ms expected; generous for slow CI machines


# -- wrong, expired, busy codes -------------------------------------------------------


def test_wrong_code_fails_both_sides_and_burns_the_code() -> None:
    inviter, joiner = fresh(joiner_code=WRONG)
    result = run(inviter, joiner)
    assert isinstance(result.joiner_error, WrongCode)
    assert isinstance(result.inviter_error, WrongCode)
    assert str(result.joiner_error).startswith("wrong code")
    assert [m["t"] for _, m in result.log] == ["hello", "pake", "error"]
    assert inviter.state is State.BURNED and inviter.code_spent
    assert joiner.state is State.FAILED
    assert inviter.result is None and joiner.result is None
    # No second guess on this machine...
    _, second = fresh(5)
    with pytest.raises(LocalProtocolError):
        inviter.receive(second.start()[0], now=NOW)
    # ...nor through the daemon's registry.
    registry = NameplateRegistry(low=42, high=42)
    plate = registry.allocate(0.0, EXPIRES, entropy(0))
    registry.claim(plate, NOW)
    registry.burn(plate) if inviter.code_spent else registry.release(plate)
    with pytest.raises(CodeExpired):
        registry.claim(plate, NOW)


def test_inviter_rejecting_the_joiners_confirmation_tells_the_joiner() -> None:
    # Flip the joiner's MAC in flight: the inviter must fail WrongCode and say so.
    def tamper(direction: str, msg: Message) -> Message:
        if msg["t"] == "confirm":
            return {**msg, "mac": bytes(b ^ 1 for b in msg["mac"])}
        return msg

    inviter, joiner = fresh()
    result = run(inviter, joiner, tamper=tamper)
    assert isinstance(result.inviter_error, WrongCode)
    assert isinstance(result.joiner_error, WrongCode)
    assert result.log[-1] == ("to-joiner", {"t": "error", "code": "wrong-code",
                                            "msg": str(result.inviter_error)})
    assert inviter.state is State.BURNED


def test_wrong_nameplate_is_unknown_and_spends_nothing() -> None:
    inviter, joiner = fresh(joiner_code=PairingCode(43, CODE.words))
    result = run(inviter, joiner)
    assert isinstance(result.inviter_error, UnknownNameplate)
    assert isinstance(result.joiner_error, UnknownNameplate)
    assert inviter.state is State.FAILED and not inviter.code_spent


def test_expired_code_fails_both_sides() -> None:
    inviter, joiner = fresh(expires=NOW)
    result = run(inviter, joiner, now=NOW)
    assert isinstance(result.inviter_error, CodeExpired)
    assert isinstance(result.joiner_error, CodeExpired)
    assert "expired" in str(result.joiner_error)
    assert "eager" not in str(result.joiner_error)  # never echo the secret words
    assert [m["t"] for _, m in result.log] == ["hello", "error"]
    assert not inviter.code_spent


def test_busy_nameplate_reaches_the_joiner_as_code_in_use() -> None:
    registry = NameplateRegistry(low=42, high=42)
    registry.allocate(0.0, EXPIRES, entropy(0))
    _, first = fresh(1)
    _, second = fresh(2)
    registry.claim(peek_nameplate(first.start()[0]), NOW)
    with pytest.raises(CodeInUse) as busy:
        registry.claim(peek_nameplate(second.start()[0]), NOW)
    with pytest.raises(CodeInUse):
        second.receive(error_message(busy.value))
    assert second.state is State.FAILED


def test_pairing_errors_have_distinct_registered_codes() -> None:
    classes = [WrongCode, CodeExpired, CodeInUse, UnknownNameplate, PairingAborted]
    codes = [cls.code for cls in classes]
    assert len(set(codes)) == len(codes)
    for cls in classes:
        assert type(error_from_code(cls.code, "x")) is cls


# -- attackers ------------------------------------------------------------------------


def test_man_in_the_middle_substituting_spake_messages_fails() -> None:
    """Mallory relays but runs SPAKE2 with each side using her best guess of the code."""
    guess = WRONG.password
    to_inviter = spake2.SPAKE2_A(guess, idA=b"dizzy-pairing-joiner",
                                 idB=b"dizzy-pairing-inviter", entropy_f=entropy(66))
    to_joiner = spake2.SPAKE2_B(guess, idA=b"dizzy-pairing-joiner",
                                idB=b"dizzy-pairing-inviter", entropy_f=entropy(67))
    mallory: dict[str, bytes] = {}

    def tamper(direction: str, msg: Message) -> Message:
        if msg["t"] == "hello":
            mallory["joiner_pake"] = msg["pake"]
            mallory["my_a"] = to_inviter.start()
            return {**msg, "pake": mallory["my_a"]}
        if msg["t"] == "pake":
            mallory["key_inviter"] = to_inviter.finish(msg["pake"])
            my_b = to_joiner.start()
            key = to_joiner.finish(mallory["joiner_pake"])
            mallory["key_joiner"] = key
            transcript = transcript_hash((1).to_bytes(4, "big"), (42).to_bytes(4, "big"),
                                         mallory["joiner_pake"], my_b)
            return {"t": "pake", "pake": my_b,
                    "mac": confirmation_mac(key, "confirm/inviter", transcript)}
        return msg

    inviter, joiner = fresh()
    result = run(inviter, joiner, tamper=tamper)
    assert isinstance(result.joiner_error, WrongCode)
    assert isinstance(result.inviter_error, WrongCode)
    assert inviter.state is State.BURNED
    # The joiner never sealed its identity for anyone: nothing for Mallory to open.
    assert [m["t"] for _, m in result.log] == ["hello", "pake", "error"]
    assert mallory["key_inviter"] != mallory["key_joiner"]


def test_replayed_joiner_transcript_fails_against_a_fresh_inviter() -> None:
    inviter, joiner = fresh(1)
    recorded = run(inviter, joiner).log
    assert inviter.state is State.DONE
    joiner_msgs = [m for d, m in recorded if d == "to-inviter"]

    replayed = Inviter(CODE, EXPIRES, ALICE, entropy(2))  # fresh SPAKE2 randomness
    (answer,) = replayed.receive(joiner_msgs[0], now=NOW)
    assert answer["pake"] != recorded[1][1]["pake"]
    with pytest.raises(WrongCode):
        replayed.receive(joiner_msgs[1], now=NOW)
    assert replayed.state is State.BURNED and replayed.result is None


def test_replayed_inviter_transcript_fails_against_a_fresh_joiner() -> None:
    inviter, joiner = fresh(1)
    recorded = run(inviter, joiner).log
    inviter_msgs = [m for d, m in recorded if d == "to-joiner"]
    replayed = Joiner(CODE, BOB, entropy(3))
    replayed.start()
    with pytest.raises(WrongCode):
        replayed.receive(inviter_msgs[0])
    assert [m["code"] for m in replayed.goodbye()] == ["wrong-code"]


def test_reflected_pake_message_is_refused_without_spending_the_code() -> None:
    inviter, _ = fresh()
    _, probe = fresh(9)
    (hello,) = probe.start()
    reflected = {**hello, "pake": b"B" + hello["pake"][1:]}
    with pytest.raises(RemoteProtocolError):
        inviter.receive(reflected, now=NOW)
    assert inviter.state is State.FAILED and not inviter.code_spent


# -- certificates ---------------------------------------------------------------------


OTHER_KEY = make_key("mallory")


@pytest.mark.parametrize(
    ("cert", "why"),
    [
        (make_cert(OTHER_KEY), "different key"),
        (make_cert(make_key("bob desktop"), signer=OTHER_KEY), "not self-signed"),
        (make_cert(make_key("bob desktop"), ca=None), "BasicConstraints"),
        (make_cert(make_key("bob desktop"), ca=False), "not marked CA"),
        (make_cert(OTHER_KEY, public=ec.generate_private_key(ec.SECP256R1()).public_key()),
         "Ed25519"),
        (b"-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n", "unreadable"),
        (b"x" * 17000, "PEM bytes"),  # over the cert limit, still under the box limit
    ],
    ids=["other-key", "signed-by-other", "no-constraints", "not-ca", "ec-key", "bad-pem",
         "huge"],
)
def test_certificate_must_be_the_self_signed_cert_of_the_sent_key(cert: bytes,
                                                                  why: str) -> None:
    with pytest.raises(LocalProtocolError, match=why):
        LocalInfo(BOB.public_key, cert, BOB.name)
    # A joiner that sends it anyway is refused by the inviter...
    inviter, joiner = fresh(bob=with_cert(BOB, cert))
    result = run(inviter, joiner)
    assert isinstance(result.inviter_error, RemoteProtocolError)
    assert why in str(result.inviter_error)
    assert isinstance(result.joiner_error, PairingAborted)
    assert inviter.result is None and inviter.state is State.BURNED
    # ...and an inviter that sends it is refused by the joiner.
    inviter, joiner = fresh(alice=with_cert(ALICE, cert))
    result = run(inviter, joiner)
    assert isinstance(result.joiner_error, RemoteProtocolError)
    assert isinstance(result.inviter_error, PairingAborted)
    assert joiner.result is None and inviter.result is None


@pytest.mark.parametrize("name", ["", "   ", "evil\x1b[2Jname", "line\nbreak", "x" * 101])
def test_names_must_be_one_printable_line(name: str) -> None:
    with pytest.raises(LocalProtocolError, match="name"):
        LocalInfo(BOB.public_key, BOB.cert_pem, name)


# -- garbage at every step ------------------------------------------------------------


def honest_messages() -> list[tuple[str, Message]]:
    inviter, joiner = fresh(7)
    return run(inviter, joiner).log


HONEST = honest_messages()
_BAD_POINT = b"A" + b"\xff" * 32

GARBAGE: dict[str, Callable[[Message], Any]] = {
    "none": lambda m: None,
    "int": lambda m: 7,
    "text": lambda m: "hello",
    "bytes": lambda m: b"\x00" * 10,
    "list": lambda m: [m],
    "no-tag": lambda m: {k: v for k, v in m.items() if k != "t"},
    "unknown-tag": lambda m: {**m, "t": "gimme"},
    "tag-not-str": lambda m: {**m, "t": 5},
    "extra-field": lambda m: {**m, "zzz": 1},
    "missing-field": lambda m: {"t": m["t"]},
    "bytes-as-int": lambda m: {k: (5 if isinstance(v, bytes) else v) for k, v in m.items()},
    "bytes-as-str": lambda m: {k: ("x" if isinstance(v, bytes) else v) for k, v in m.items()},
    "truncated": lambda m: {k: (v[:-1] if isinstance(v, bytes) else v) for k, v in m.items()},
    "oversized": lambda m: {k: (v * 2000 if isinstance(v, bytes) else v) for k, v in m.items()},
    "bad-point": lambda m: {k: (_BAD_POINT if k == "pake" else v) for k, v in m.items()},
    "bool-as-int": lambda m: {**m, **({"np": True} if "np" in m else {"t": True})},
    "future-version": lambda m: {**m, **({"v": 2} if "v" in m else {"t": 2.5})},
}

OUT_OF_ORDER = [m for _, m in HONEST]


def _deliver(step: int, replace: Callable[[Message], Any]) -> tuple[Any, Any, Any]:
    """Run honestly up to ``step``, deliver ``replace(message)`` instead; return errors."""
    inviter, joiner = fresh(7)
    outgoing = joiner.start()
    for index, (direction, _) in enumerate(HONEST):
        (msg,) = outgoing
        target_is_inviter = direction == "to-inviter"
        value = replace(msg) if index == step else msg
        try:
            outgoing = (inviter.receive(value, now=NOW) if target_is_inviter
                        else joiner.receive(value))
        except DizzyError as exc:
            assert index == step, f"honest message {index} failed: {exc}"
            victim = inviter if target_is_inviter else joiner
            other = joiner if target_is_inviter else inviter
            (bye,) = victim.goodbye()
            try:
                if other is inviter:
                    inviter.receive(bye, now=NOW)
                else:
                    joiner.receive(bye)
            except DizzyError as other_exc:
                return exc, victim, other_exc
            raise AssertionError("the peer ignored our goodbye") from None
    raise AssertionError(f"step {step} did not fail")


# Every (step, kind) where the kind of garbage actually changes that step's message.
_GARBAGE_CASES = [(step, kind) for step, (_, msg) in enumerate(HONEST)
                  for kind in sorted(GARBAGE) if GARBAGE[kind](msg) != msg]


@pytest.mark.parametrize(("step", "kind"), _GARBAGE_CASES)
def test_garbage_at_any_step_is_a_remote_protocol_error(step: int, kind: str) -> None:
    error, victim, peer_error = _deliver(step, GARBAGE[kind])
    assert isinstance(error, RemoteProtocolError), error
    assert victim.state in (State.FAILED, State.BURNED)
    if step == len(HONEST) - 1:
        # The joiner is done once it sent its ack; an error after that cannot undo it.
        assert isinstance(peer_error, RemoteProtocolError)
    else:
        assert isinstance(peer_error, PairingAborted)
    # Garbage in place of the hello spends no guess; after the hello the code is gone.
    if isinstance(victim, Inviter):
        assert victim.code_spent == (step > 0)


@pytest.mark.parametrize("step", range(len(HONEST)))
@pytest.mark.parametrize("other", range(len(HONEST)))
def test_out_of_order_messages_are_refused(step: int, other: int) -> None:
    if step == other:
        return
    error, _, _ = _deliver(step, lambda m: OUT_OF_ORDER[other])
    assert isinstance(error, RemoteProtocolError), error


def test_future_version_is_named_in_the_error() -> None:
    inviter, joiner = fresh()
    (hello,) = joiner.start()
    with pytest.raises(RemoteProtocolError, match="version 2 is not supported"):
        inviter.receive({**hello, "v": 2, "new": "field"}, now=NOW)


def test_oversized_frame_is_refused_before_buffering() -> None:
    decoder = FrameDecoder(PAIRING_MAX_FRAME)
    decoder.receive_data((PAIRING_MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


# -- fuzz -----------------------------------------------------------------------------


_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=40))
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12,
)
_fields = st.sampled_from(["v", "np", "pake", "mac", "box", "code", "msg"])
_field_values = (_scalars | st.binary(min_size=32, max_size=33)
                 | st.just(_BAD_POINT) | st.integers(0, 1000))
_shaped = st.builds(
    lambda tag, fields: {"t": tag, **fields},
    st.sampled_from(["hello", "pake", "confirm", "info", "done", "error", "x"]),
    st.dictionaries(_fields, _field_values, max_size=4),
)


def _machine_at(step: int) -> tuple[Inviter | Joiner, Callable[[Any], list[Message]]]:
    inviter, joiner = fresh(11)
    outgoing = joiner.start()
    for index, (direction, _) in enumerate(HONEST[:step]):
        (msg,) = outgoing
        outgoing = (inviter.receive(msg, now=NOW) if direction == "to-inviter"
                    else joiner.receive(msg))
        del index
    if HONEST[step][0] == "to-inviter":
        return inviter, lambda v: inviter.receive(v, now=NOW)
    return joiner, joiner.receive


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(step=st.integers(0, len(HONEST) - 1), value=_values | _shaped)
def test_fuzz_receive_only_raises_dizzy_errors(step: int, value: Any) -> None:
    machine, receive = _machine_at(step)
    try:
        receive(value)
    except DizzyError:
        assert machine.state in (State.FAILED, State.BURNED)
        assert len(machine.goodbye()) <= 1
