"""Fuzzing path validation (protocol/paths.py): names and relative paths from peers.

Allowed error: ``UnsafePath``.  The property that matters: an accepted path, joined to
a folder root, stays inside it, has no ``..``/``.``/empty component, no NUL or
backslash, and fits the file system's limits.
"""

from __future__ import annotations

import os.path

from hypothesis import given
from hypothesis import strategies as st

from dizzy.protocol.errors import UnsafePath
from dizzy.protocol.paths import (
    MAX_DEPTH,
    MAX_NAME_BYTES,
    MAX_RELPATH_BYTES,
    validate_name,
    validate_relpath,
)
from tests.fuzz.strategies import examples
from tests.fuzz_counter import tick

ROOT = "/srv/folder"

#: the pieces hostile paths are made of, plus anything at all
PIECES = st.one_of(
    st.sampled_from(["..", ".", "", "/", "\\", "\x00", "a", "b.txt", "...", "..\\..", "C:",
                     "C:\\Windows", "//", "\\\\server\\share", "~", "$HOME", " ", "\u202e",
                     "\ud800", "a" * 255, "é" * 128, "\n", "..%2f", "%2e%2e", ".git"]),
    st.text(max_size=12),
    st.text(alphabet="./\\\x00a", max_size=8),
)
PATHS = st.one_of(
    st.lists(PIECES, max_size=10).map("/".join),
    st.lists(PIECES, max_size=10).map("".join),
    st.text(max_size=40),
    st.integers(1, 40).map(lambda n: "/".join(["d"] * n * 8)),
    st.integers(4000, 4200).map(lambda n: "x" * n),
)


def _inside(path: str) -> bool:
    joined = os.path.normpath(os.path.join(ROOT, path))
    return joined.startswith(ROOT + "/")


@examples(8000)
@given(path=st.one_of(PATHS, st.binary(max_size=20), st.none(), st.integers()))
def test_accepted_paths_stay_inside_the_folder(path: object) -> None:
    tick()
    try:
        parts = validate_relpath(path)
    except UnsafePath:
        return
    assert isinstance(path, str)
    assert "/".join(parts) == path
    assert _inside(path), path
    assert not os.path.isabs(path)
    assert 0 < len(parts) <= MAX_DEPTH
    assert len(path.encode("utf-8")) <= MAX_RELPATH_BYTES
    for part in parts:
        assert part not in ("", ".", "..")
        assert "\\" not in part and "\x00" not in part and "/" not in part
        assert len(part.encode("utf-8")) <= MAX_NAME_BYTES
        # each component on its own is a valid name, and joins to exactly one level
        assert validate_name(part) == part
        assert os.path.dirname(os.path.join(ROOT, part)) == ROOT


@examples(4000)
@given(name=st.one_of(PIECES, st.text(max_size=300)))
def test_accepted_names_are_one_component(name: str) -> None:
    tick()
    try:
        validate_name(name)
    except UnsafePath:
        return
    joined = os.path.join(ROOT, name)
    assert os.path.dirname(joined) == ROOT
    assert os.path.normpath(joined) == joined  # nothing to collapse: no "..", "." or "/"
