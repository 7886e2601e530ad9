"""Pairing codes, the word list and the nameplate registry: plain pytest, no I/O."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterator

import pytest

from dizzy.protocol import pairing_code as pc
from dizzy.protocol.errors import (
    CodeExpired,
    CodeInUse,
    LocalProtocolError,
    MalformedCode,
    UnknownNameplate,
    UsageError,
)
from dizzy.protocol.pairing_code import NameplateRegistry, PairingCode, generate, parse


def _entropy(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


# -- word list ------------------------------------------------------------------------


def test_word_list_is_2048_short_lowercase_distinct_words() -> None:
    assert len(pc.WORDS) == 2048
    assert len(set(pc.WORDS)) == 2048
    assert all(re.fullmatch(r"[a-z]{3,8}", w) for w in pc.WORDS)


def test_no_word_is_a_prefix_of_another() -> None:
    ordered = sorted(pc.WORDS)
    # In sorted order a prefix sits right before some word it prefixes.
    assert not [(a, b) for a, b in itertools.pairwise(ordered) if b.startswith(a)]


# -- generate -------------------------------------------------------------------------


def test_generate_maps_33_bits_to_three_words() -> None:
    assert generate(42, bytes(5)) == PairingCode(42, (pc.WORDS[0],) * 3)
    assert generate(42, b"\xff" * 5) == PairingCode(42, (pc.WORDS[-1],) * 3)
    base = generate(7, bytes(5))
    # Each of the first 33 bits changes the code; the 7 bits after them are unused.
    for bit in range(40):
        flipped = (1 << (39 - bit)).to_bytes(5, "big")
        assert (generate(7, flipped) != base) == (bit < 33)


def test_generate_uses_every_word_equally_often() -> None:
    # Walk the first word's 11 bits through all values: each word exactly once.
    seen = [generate(1, (i << 29).to_bytes(5, "big")).words[0] for i in range(2048)]
    assert sorted(seen) == sorted(pc.WORDS)


def test_generate_rejects_short_randomness_and_bad_nameplates() -> None:
    with pytest.raises(LocalProtocolError):
        generate(1, bytes(4))
    for bad in (0, 1000, -1):
        with pytest.raises(LocalProtocolError):
            generate(bad, bytes(5))


def test_code_text_round_trips() -> None:
    rng = random.Random(1)
    for _ in range(200):
        code = generate(rng.randint(1, 999), rng.randbytes(5))
        text = str(code)
        assert re.fullmatch(r"\d{1,3}(-[a-z]{3,8}){3}", text)
        assert parse(text) == code
        assert code.password == text.encode()


# -- parse ----------------------------------------------------------------------------


CODE = PairingCode(42, ("four", "eager", "race"))


@pytest.mark.parametrize(
    "text",
    [
        "42-four-eager-race",
        "  42-four-eager-race\n",
        "42 four eager race",
        "42-FOUR-Eager-RACE",
        "042-four-eager-race",
        "42--four  -eager_race",
        "42.four.eager.race",
    ],
)
def test_parse_is_tolerant_of_case_spacing_and_separators(text: str) -> None:
    assert parse(text) == CODE


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", "empty"),
        ("   \t", "empty"),
        ("four-eager-race", "starts with its number"),
        ("forty-two-four-eager-race", "starts with its number"),
        ("\u0664\u0662-four-eager-race", "starts with its number"),  # Arabic-Indic digits
        ("0-four-eager-race", "1-999"),
        ("1000-four-eager-race", "1-999"),
        ("9" * 10000 + "-four-eager-race", "1-999"),
        ("42", "3 words"),
        ("42-four-eager", "got 2 word"),
        ("42-four-eager-race-race", "got 4 word"),
        ("42-four-eagr-race", "did you mean 'eager'"),
        ("42-four-eager-rac", "did you mean 'race'"),
        ("42-f\u00f6ur-eager-race", "not a pairing-code word"),
        ("42-four-eager-xyzzyq", "not a pairing-code word"),
        ("42-four-eager-r\x1bace", "not a pairing-code word"),
    ],
)
def test_parse_explains_what_is_wrong(text: str, hint: str) -> None:
    with pytest.raises(MalformedCode) as info:
        parse(text)
    assert hint in str(info.value)
    assert len(str(info.value)) < 200  # one line, even for a 10,000-digit number
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2


def test_code_validates_itself_on_construction() -> None:
    with pytest.raises(MalformedCode):
        PairingCode(0, ("four", "eager", "race"))
    with pytest.raises(MalformedCode):
        PairingCode(5, ("four", "eager", "notaword"))


# -- nameplate registry ---------------------------------------------------------------


def test_allocate_gives_distinct_nameplates_until_full() -> None:
    registry = NameplateRegistry(low=1, high=20)
    entropy = _entropy(3)
    got = {registry.allocate(0.0, 60.0, entropy) for _ in range(20)}
    assert got == set(range(1, 21))
    with pytest.raises(CodeInUse):
        registry.allocate(0.0, 60.0, entropy)
    # Once they expire, the numbers come back.
    assert registry.allocate(60.0, 60.0, entropy) in got


def test_allocate_rejects_biased_draws() -> None:
    # 3 free nameplates: 65535 is in the biased tail (65536 % 3 == 1) and is redrawn.
    draws: Iterator[bytes] = iter([b"\xff\xff", (4).to_bytes(2, "big")])
    registry = NameplateRegistry(low=10, high=12)
    assert registry.allocate(0.0, 1.0, lambda n: next(draws)) == 10 + 4 % 3


def test_allocate_is_roughly_uniform() -> None:
    counts = {n: 0 for n in range(1, 5)}
    entropy = _entropy(5)
    for _ in range(4000):
        registry = NameplateRegistry(low=1, high=4)
        counts[registry.allocate(0.0, 1.0, entropy)] += 1
    assert all(850 < c < 1150 for c in counts.values()), counts


def test_claim_release_burn_lifecycle() -> None:
    registry = NameplateRegistry()
    plate = registry.allocate(100.0, 60.0, _entropy(1))
    assert registry.advertised(100.0) == [plate]
    registry.claim(plate, 101.0)
    with pytest.raises(CodeInUse):
        registry.claim(plate, 101.5)  # a second device during a running pairing
    registry.release(plate)  # the first joiner left before any guess
    registry.claim(plate, 102.0)
    registry.burn(plate)  # guess spent
    with pytest.raises(CodeExpired, match="already used"):
        registry.claim(plate, 103.0)
    assert registry.advertised(103.0) == []
    # The burned number stays reserved until the code would have expired.
    other = NameplateRegistry(low=plate, high=plate)
    other.allocate(100.0, 60.0, _entropy(1))
    other.burn(plate)
    with pytest.raises(CodeInUse):
        other.allocate(159.0, 60.0, _entropy(1))
    assert other.allocate(160.0, 60.0, _entropy(1)) == plate


def test_claim_unknown_or_expired() -> None:
    registry = NameplateRegistry()
    with pytest.raises(UnknownNameplate):
        registry.claim(5, 0.0)
    plate = registry.allocate(0.0, 10.0, _entropy(2))
    with pytest.raises(CodeExpired):
        registry.claim(plate, 10.0)
    with pytest.raises(UnknownNameplate):
        registry.claim(plate, 10.0)  # forgotten after expiry
    with pytest.raises(LocalProtocolError):
        registry.release(plate)


def test_cancel_forgets_the_nameplate() -> None:
    registry = NameplateRegistry()
    plate = registry.allocate(0.0, 10.0, _entropy(4))
    registry.cancel(plate)
    with pytest.raises(UnknownNameplate):
        registry.claim(plate, 1.0)


def test_repr_does_not_leak_the_secret_words() -> None:
    assert "eager" not in repr(CODE) and "42" in repr(CODE)
