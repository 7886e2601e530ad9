"""Shared pieces of the fuzz targets: settings, msgpack-shaped values, byte mutations.

Each target is sized by ``examples(n)``: ``n`` inputs in CI, times ``DIZZY_FUZZ_SCALE``
(a float, default 1) for longer runs by hand, e.g. ``DIZZY_FUZZ_SCALE=20 pytest tests/fuzz``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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

_INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
#: the integers validators care about: around zero, type limits, and anywhere
interesting_ints = st.one_of(
    st.integers(-3, 300),
    st.sampled_from([-(1 << 63), (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32,
                     (1 << 63) - 1, 1 << 63, (1 << 64) - 1]),
    _INT64,
)
scalars = st.one_of(
    st.none(), st.booleans(), interesting_ints,
    st.floats(allow_nan=False), st.text(max_size=40), st.binary(max_size=80),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.one_of(st.text(max_size=8), st.sampled_from(["t", "v", "i", "k", "b", "m", "p"]),
                     st.binary(max_size=4))
    return st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(keys, children, max_size=6),
    )


#: any value msgpack can carry, nested a few levels (what a hostile peer can send)
msgpack_values = st.recursive(scalars, _containers, max_leaves=12)


def packed(values: st.SearchStrategy[Any] = msgpack_values) -> st.SearchStrategy[bytes]:
    """Well-formed msgpack bytes of arbitrary (mostly wrong) values."""
    return values.map(pack_value)


# ------------------------------------------------------------------ byte mutations


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few random edits: flips, inserts, deletions, truncation, garbage."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append"]))
        at = draw(st.integers(0, max(0, len(out) - 1)))
        if op == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and out:
            out[at] = draw(st.integers(0, 255))
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and out:
            del out[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del out[at:]
        elif op == "append":
            out += draw(st.binary(min_size=1, max_size=16))
    return bytes(out)


@st.composite
def mutated_list(draw: st.DrawFn, fields: list[Any]) -> list[Any]:
    """A wire array with one element replaced, dropped or one added."""
    out = list(fields)
    op = draw(st.sampled_from(["replace", "replace", "replace", "drop", "add"]))
    at = draw(st.integers(0, len(out) - 1)) if out else 0
    if op == "replace" and out:
        out[at] = draw(msgpack_values)
    elif op == "drop" and out:
        del out[at]
    else:
        out.insert(at, draw(msgpack_values))
    return out


@st.composite
def mutated_map(draw: st.DrawFn, message: dict[str, Any]) -> dict[Any, Any]:
    """A wire map with one field's value replaced, a field dropped, or one added."""
    out: dict[Any, Any] = dict(message)
    op = draw(st.sampled_from(["replace", "replace", "replace", "drop", "add"]))
    keys = sorted(out, key=str)
    if op == "replace" and keys:
        out[draw(st.sampled_from(keys))] = draw(msgpack_values)
    elif op == "drop" and keys:
        del out[draw(st.sampled_from(keys))]
    else:
        out[draw(st.one_of(st.text(max_size=4), st.binary(max_size=2)))] = draw(msgpack_values)
    return out


def one_of_mutations(valid: bytes, decode_wire: Callable[[bytes], Any]) -> st.SearchStrategy[bytes]:
    """Byte-level edits of ``valid`` and re-encoded element-level edits of its array."""
    wire = decode_wire(valid)
    return st.one_of(mutated_bytes(valid), mutated_list(wire).map(pack_value))
