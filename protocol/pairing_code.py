"""Pairing codes (``42-orbit-candle-marble``) and the registry of nameplates, sans-IO.

A code is a *nameplate* — a small number the inviting daemon advertises over mDNS so
the joiner can find it — and three words from the built-in 2048-word list.  The words
are the secret: 3 x 11 bits = 33 bits, never advertised.  The whole code (nameplate
included) is the SPAKE2 password, so a code typed with the wrong number fails like any
other wrong code.

The word list (``wordlist.txt``, package data) was written for dizzy: short, common,
easy-to-spell words, no British/American spelling variants, no homophone pairs, and no
word is a prefix of another (so a typed word is never ambiguous, even truncated).

Nothing here draws randomness or reads a clock: callers pass random bytes and ``now``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Final

from .errors import (
    CodeExpired,
    CodeInUse,
    LocalProtocolError,
    MalformedCode,
    UnknownNameplate,
)

#: 3 words of 11 bits give 33 bits, above the 32 bits we promise against guessing —
#: and each guess costs the attacker a burned code, so this is plenty.
WORDS_PER_CODE: Final = 3
BITS_PER_WORD: Final = 11
#: random bytes ``generate`` needs: ceil(33 / 8)
RANDOM_BYTES: Final = (WORDS_PER_CODE * BITS_PER_WORD + 7) // 8
#: nameplates stay short to type; 999 concurrent invitations on one LAN is plenty
NAMEPLATE_MIN: Final = 1
NAMEPLATE_MAX: Final = 999


def _load_words() -> tuple[str, ...]:
    text = resources.files(__package__).joinpath("wordlist.txt").read_text("ascii")
    words = tuple(text.split())
    # A broken package (truncated list) would silently weaken every code: refuse it.
    if len(words) != 1 << BITS_PER_WORD or len(set(words)) != len(words):
        raise LocalProtocolError("built-in pairing word list is damaged")
    return words


WORDS: Final[tuple[str, ...]] = _load_words()
_INDEX: Final[dict[str, int]] = {w: i for i, w in enumerate(WORDS)}
_SEPARATORS = re.compile(r"[\s\-_.,]+")
_EXAMPLE = "42-orbit-candle-marble"


@dataclass(frozen=True)
class PairingCode:
    nameplate: int
    # Hidden from repr: the words are the secret and reprs end up in logs and tracebacks.
    words: tuple[str, str, str] = field(repr=False)

    def __post_init__(self) -> None:
        if not NAMEPLATE_MIN <= self.nameplate <= NAMEPLATE_MAX:
            raise MalformedCode(
                f"the number of a pairing code is {NAMEPLATE_MIN}-{NAMEPLATE_MAX}, "
                f"not {self.nameplate}"
            )
        for word in self.words:
            if word not in _INDEX:
                raise MalformedCode(f"{word!r} is not a pairing-code word")

    def __str__(self) -> str:
        return "-".join((str(self.nameplate), *self.words))

    @property
    def password(self) -> bytes:
        """The SPAKE2 password: the canonical text of the whole code."""
        return str(self).encode("ascii")


def generate(nameplate: int, random_bytes: bytes) -> PairingCode:
    """A fresh code for ``nameplate`` from at least ``RANDOM_BYTES`` random bytes.

    Unbiased: the list has exactly 2**11 words, so each word is 11 raw random bits.
    """
    if len(random_bytes) < RANDOM_BYTES:
        raise LocalProtocolError(f"generate() needs {RANDOM_BYTES} random bytes")
    if not NAMEPLATE_MIN <= nameplate <= NAMEPLATE_MAX:
        raise LocalProtocolError(f"nameplate {nameplate} out of range")
    used = WORDS_PER_CODE * BITS_PER_WORD
    # The first 33 bits of the bytes, first word from the most significant 11.
    bits = int.from_bytes(random_bytes[:RANDOM_BYTES], "big") >> (8 * RANDOM_BYTES - used)
    mask = (1 << BITS_PER_WORD) - 1
    w0, w1, w2 = (
        WORDS[(bits >> (used - BITS_PER_WORD * (i + 1))) & mask] for i in range(WORDS_PER_CODE)
    )
    return PairingCode(nameplate, (w0, w1, w2))


def _shown(text: str) -> str:
    # Echo user input back, but never a screenful of it.
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _suggest(word: str) -> str:
    # Prefix-free list: a unique completion of what was typed is the best hint.
    completions = [w for w in WORDS if w.startswith(word)] if len(word) >= 2 else []
    if len(completions) == 1:
        return f" (did you mean {completions[0]!r}?)"
    close = difflib.get_close_matches(word, WORDS, n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse(text: str) -> PairingCode:
    """Parse what a user typed; case, spaces and separators do not matter.

    Raises ``MalformedCode`` saying what is wrong, e.g. an unknown word with the
    nearest real word suggested.
    """
    parts = [p for p in _SEPARATORS.split(text.strip().lower()) if p]
    if not parts:
        raise MalformedCode(f"empty pairing code; it looks like {_EXAMPLE}")
    number, words = parts[0], parts[1:]
    if not number.isascii() or not number.isdigit():
        raise MalformedCode(
            f"a pairing code starts with its number, like {_EXAMPLE}; got {_shown(text)}"
        )
    # Cap the digits before int(): a 10,000-digit "number" must not cost anything.
    nameplate = int(number) if len(number) <= 6 else NAMEPLATE_MAX + 1
    if not NAMEPLATE_MIN <= nameplate <= NAMEPLATE_MAX:
        raise MalformedCode(
            f"the number of a pairing code is {NAMEPLATE_MIN}-{NAMEPLATE_MAX}, "
            f"not {_shown(number)}"
        )
    if len(words) != WORDS_PER_CODE:
        raise MalformedCode(
            f"a pairing code has a number and {WORDS_PER_CODE} words, like {_EXAMPLE}; "
            f"got {len(words)} word(s) in {_shown(text)}"
        )
    for word in words:
        if word not in _INDEX:
            raise MalformedCode(f"{_shown(word)} is not a pairing-code word{_suggest(word)}")
    return PairingCode(nameplate, (words[0], words[1], words[2]))


@dataclass
class _Nameplate:
    expires_at: float
    claimed: bool = False
    #: spent (paired, or burned by a wrong guess); kept until expiry so the number is
    #: not handed out again while a late joiner may still be typing the old code
    used: bool = False


class NameplateRegistry:
    """The inviting daemon's book of nameplates: which are waiting, busy, used up.

    ``allocate`` for each ``dizzy pair``; ``claim`` when a joiner's hello arrives;
    then ``burn`` once the inviter has spent the code (``Inviter.code_spent``, whether
    pairing succeeded or not) or ``release`` if it never got that far.
    """

    def __init__(self, low: int = NAMEPLATE_MIN, high: int = NAMEPLATE_MAX) -> None:
        self._low = low
        self._high = high
        self._plates: dict[int, _Nameplate] = {}

    def _sweep(self, now: float) -> None:
        for number in [n for n, p in self._plates.items() if now >= p.expires_at]:
            del self._plates[number]

    def allocate(self, now: float, lifetime: float, entropy: Callable[[int], bytes]) -> int:
        """A free nameplate, chosen uniformly (rejection sampling), valid ``lifetime`` s."""
        self._sweep(now)
        free = [n for n in range(self._low, self._high + 1) if n not in self._plates]
        if not free:
            raise CodeInUse("every pairing nameplate is in use; try again in a minute")
        # 16 random bits per try; reject the top sliver that would bias ``% len(free)``.
        limit = 65536 - 65536 % len(free)
        while True:
            draw = int.from_bytes(entropy(2), "big")
            if draw < limit:
                break
        number = free[draw % len(free)]
        self._plates[number] = _Nameplate(expires_at=now + lifetime)
        return number

    def claim(self, nameplate: int, now: float) -> None:
        """A joiner arrived for ``nameplate``: reserve it for this one pairing."""
        plate = self._plates.get(nameplate)
        if plate is not None and now >= plate.expires_at:
            del self._plates[nameplate]
            raise CodeExpired(f"pairing code {nameplate}-... has expired; ask for a new one")
        if plate is None:
            raise UnknownNameplate(
                f"no pairing is waiting for code {nameplate}-... on that device "
                "(expired, cancelled, or a typo in the number)"
            )
        if plate.used:
            raise CodeExpired(
                f"pairing code {nameplate}-... was already used (codes are single-use, "
                "and one wrong guess burns a code); ask for a new one"
            )
        if plate.claimed:
            raise CodeInUse(
                f"pairing code {nameplate}-... is in use: another device is pairing with it "
                "right now"
            )
        plate.claimed = True

    def release(self, nameplate: int) -> None:
        """The claim ended before the code was spent: let another joiner try."""
        plate = self._plates.get(nameplate)
        if plate is None or not plate.claimed:
            raise LocalProtocolError(f"nameplate {nameplate} is not claimed")
        plate.claimed = False

    def burn(self, nameplate: int) -> None:
        """The code was spent (pairing done, or a wrong guess): never accept it again."""
        plate = self._plates.get(nameplate)
        if plate is not None:
            plate.claimed = False
            plate.used = True

    def cancel(self, nameplate: int) -> None:
        """The inviter gave up (``dizzy pair`` interrupted): forget the nameplate."""
        self._plates.pop(nameplate, None)

    def close(self, nameplate: int) -> None:
        """The invitation ended: forget an unused nameplate, keep a spent one reserved."""
        plate = self._plates.get(nameplate)
        if plate is not None and not plate.used:
            del self._plates[nameplate]

    def advertised(self, now: float) -> list[int]:
        """Nameplates worth advertising over mDNS: unexpired and not used up."""
        self._sweep(now)
        return sorted(n for n, p in self._plates.items() if not p.used)
