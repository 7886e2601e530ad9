"""Shared pieces of the fuzz targets: settings, msgpack-shaped values, byte mutations.

Each target is sized by ``examples(n)``: ``n`` inputs in CI, times ``DIZZY_FUZZ_SCALE``
(a float, default 1) for longer runs by hand, e.g. ``DIZZY_FUZZ_SCALE=20 pytest tests/fuzz``.
"""

from __future__ import annotations

import os
import random
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from dizzy.protocol.framing import pack_value

_SCALE = float(os.environ.get("DIZZY_FUZZ_SCALE", "1"))


def examples(n: int) -> settings:
    """Settings of a fuzz target that runs ``n`` generated inputs (scaled)."""
    return settings(
        max_examples=max(1, int(n * _SCALE)),
        deadline=None,
        # No example database: each run explores afresh from its (printed) seed, and a
        # failure prints the blob that replays it (@reproduce_failure).
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )


# ------------------------------------------------------------------ msgpack values
#
# Values are built by a seeded ``random.Random`` rather than by nested hypothesis
# strategies: a nested strategy costs ~5-10 ms per example on this machine, this costs
# ~50 us, which is what lets a CI run try 100,000 inputs in a few minutes.  Hypothesis
# draws the seed (and prints the value of a failing example, so it can be pinned with
# @example).

_EDGE_INTS = [0, 1, -1, 2, 31, 32, 33, 64, 127, 128, 255, 256, 65535, 65536, -(1 << 63),
              (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, 1 << 63,
              (1 << 64) - 1, -(1 << 31), -32, -33]
_KEYS = ["t", "v", "i", "k", "b", "m", "p", "n", "c", "msg", "r", "d", "w", "x", "id", "np",
         "pake", "mac", "box", "code", "data", "folder", "heads", "entries", "head", ""]
_TEXTS = ["", "a", "req", "hello", "..", "/", "a/../b", "\x00", "é", "\u202e", "\ud7ff",
          "x" * 300, "obj.stat", "status", "folder.log", "ok", "err", "note", "DZY1"]


def rand_int(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.5:
        return rng.choice(_EDGE_INTS)
    if r < 0.8:
        return rng.randint(-300, 300)
    return rng.randint(-(1 << 63), (1 << 64) - 1)


def rand_text(rng: random.Random) -> str:
    if rng.random() < 0.4:
        return rng.choice(_TEXTS)
    n = rng.choice([0, 1, 2, 5, 10, 40, 200])
    top = rng.choice([0x7F, 0x7FF, 0xFFFF, 0x10FFFF])
    chars = (chr(rng.randint(0, top)) for _ in range(n))
    # no lone surrogates: msgpack cannot carry them, so no peer can send them
    return "".join(c for c in chars if not 0xD800 <= ord(c) <= 0xDFFF)


def rand_bytes(rng: random.Random) -> bytes:
    n = rng.choice([0, 1, 8, 31, 32, 33, 64, 65, 100, 500])
    return rng.randbytes(n)


def rand_scalar(rng: random.Random) -> Any:
    kind = rng.randrange(7)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind in (1, 2):
        return rand_int(rng)
    if kind == 3:
        return rng.choice([0.0, -1.5, 1e300, float("inf"), rng.uniform(-1e6, 1e6)])
    if kind == 4:
        return rand_text(rng)
    return rand_bytes(rng)


def rand_value(rng: random.Random, depth: int = 0) -> Any:
    """Any msgpack-shaped value: scalars, and lists/maps nested up to a few levels."""
    r = rng.random()
    if depth >= 4 or r < 0.55:
        return rand_scalar(rng)
    n = rng.choice([0, 1, 2, 3, 5])
    if r < 0.75:
        return [rand_value(rng, depth + 1) for _ in range(n)]
    out: dict[Any, Any] = {}
    for _ in range(n):
        key: Any = rng.choice(_KEYS) if rng.random() < 0.7 else rand_text(rng)
        if rng.random() < 0.05:
            key = rand_bytes(rng)  # msgpack's strict map keys allow bin
        out[key] = rand_value(rng, depth + 1)
    return out


def rand_mutate_value(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """``value`` with one element somewhere in it replaced, dropped, or one added."""
    if isinstance(value, dict) and value and rng.random() < 0.85:
        out = dict(value)
        key = rng.choice(list(out))
        op = rng.randrange(5)
        if op == 0:
            del out[key]
        elif op == 1:
            out[rng.choice(_KEYS)] = rand_value(rng)
        elif op == 2 and depth < 3:
            out[key] = rand_mutate_value(rng, out[key], depth + 1)
        else:
            out[key] = rand_value(rng)
        return out
    if isinstance(value, list) and value and rng.random() < 0.85:
        out_list = list(value)
        at = rng.randrange(len(out_list))
        op = rng.randrange(6)
        if op == 0:
            del out_list[at]
        elif op == 1:
            out_list.insert(at, rand_value(rng))
        elif op == 2:
            out_list[at], out_list[-1] = out_list[-1], out_list[at]
        elif op == 3 and depth < 3:
            out_list[at] = rand_mutate_value(rng, out_list[at], depth + 1)
        else:
            out_list[at] = rand_value(rng)
        return out_list
    return rand_value(rng)


def rand_mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """``data`` with a few random edits: flips, inserts, deletions, truncation, garbage."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        at = rng.randrange(len(out)) if out else 0
        if op == 0 and out:
            out[at] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[at] = rng.randrange(256)
        elif op == 2:
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and out:
            del out[at : at + rng.randint(1, 8)]
        elif op == 4:
            del out[at:]
        else:
            out += rng.randbytes(rng.randint(1, 16))
    return bytes(out)


seeds = st.integers(min_value=0, max_value=(1 << 64) - 1)

#: any value msgpack can carry, nested a few levels (what a hostile peer can send)
msgpack_values: st.SearchStrategy[Any] = seeds.map(lambda s: rand_value(random.Random(s)))


def mutated_values(valid: list[Any]) -> st.SearchStrategy[Any]:
    """One of ``valid`` with one element somewhere in it changed."""
    return seeds.map(lambda s: _mutate_one(random.Random(s), valid))


def _mutate_one(rng: random.Random, valid: list[Any]) -> Any:
    return rand_mutate_value(rng, rng.choice(valid))


def mutated_bytes_of(valid: list[bytes]) -> st.SearchStrategy[bytes]:
    """One of ``valid`` with a few byte-level edits."""
    return seeds.map(lambda s: _mutate_bytes_one(random.Random(s), valid))


def _mutate_bytes_one(rng: random.Random, valid: list[bytes]) -> bytes:
    return rand_mutate_bytes(rng, rng.choice(valid))


def packed_values(valid: list[Any]) -> st.SearchStrategy[bytes]:
    """Re-encoded mutations of ``valid`` wire values: well-formed msgpack, wrong content."""
    return mutated_values(valid).map(pack_value)
