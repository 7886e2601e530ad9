"""Untrusted names and relative paths."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dizzy.protocol.errors import RemoteProtocolError, UnsafePath, error_from_code
from dizzy.protocol.paths import (
    MAX_DEPTH,
    MAX_NAME_BYTES,
    MAX_RELPATH_BYTES,
    validate_name,
    validate_relpath,
)


@pytest.mark.parametrize(
    "name",
    ["a", "file.txt", ".hidden", "...", "..a", "a..", " ", "é" * 127, "x" * 255, "日本語", "a:b"],
)
def test_good_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "a/b",
        "/",
        "a\\b",
        "\\",
        "a\x00b",
        "\x00",
        "x" * 256,
        "é" * 128,  # 256 UTF-8 bytes although only 128 characters
        "\udcff",  # a lone surrogate cannot be encoded
        b"abc",
        None,
        42,
        ["a"],
    ],
    ids=lambda p: repr(p)[:40],
)
def test_bad_names(name: object) -> None:
    with pytest.raises(UnsafePath):
        validate_name(name)


def test_unsafe_path_is_the_peers_fault_and_has_a_stable_code() -> None:
    assert issubclass(UnsafePath, RemoteProtocolError)
    assert type(error_from_code("unsafe-path", "x")) is UnsafePath


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("a", ("a",)),
        ("a/b/c.txt", ("a", "b", "c.txt")),
        (".dizzyignore", (".dizzyignore",)),
        ("a/.../b", ("a", "...", "b")),
        ("/".join(["d"] * MAX_DEPTH), ("d",) * MAX_DEPTH),
    ],
)
def test_good_relpaths(path: str, parts: tuple[str, ...]) -> None:
    assert validate_relpath(path) == parts


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/",
        "/etc/passwd",
        "//x",
        "a//b",
        "a/",
        "./a",
        "a/./b",
        "..",
        "../x",
        "a/../../x",
        "a/..",
        "a\\..\\..\\x",
        "C:\\Windows",
        "a/b\x00c",
        "/".join(["d"] * (MAX_DEPTH + 1)),
        "a/" + "x" * (MAX_NAME_BYTES + 1),
        "/".join(["x" * 200] * 21),  # each name fine, the whole too long
        "/".join(["é" * 120] * 17),  # 2056 characters but 4096 bytes
        "a" * 10_000_000,
        b"a/b",
        None,
        ("a", "b"),
    ],
    ids=lambda p: repr(p)[:40],
)
def test_bad_relpaths(path: object) -> None:
    if isinstance(path, str) and len(path) > 4000:
        assert len(path.encode()) > MAX_RELPATH_BYTES or path.count("/") >= MAX_DEPTH
    with pytest.raises(UnsafePath):
        validate_relpath(path)


def test_relpath_length_bound_is_inclusive() -> None:
    path = "/".join(["x" * 254] * 17)[:MAX_RELPATH_BYTES]
    assert len(path) == MAX_RELPATH_BYTES
    assert "".join(validate_relpath(path)) == path.replace("/", "")
    with pytest.raises(UnsafePath):
        validate_relpath(path + "y")


@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=10))
def test_valid_components_round_trip(parts: list[str]) -> None:
    try:
        for part in parts:
            validate_name(part)
    except UnsafePath:
        return
    assert validate_relpath("/".join(parts)) == tuple(parts)


@given(st.text(max_size=60))
def test_accepted_paths_never_escape(path: str) -> None:
    try:
        parts = validate_relpath(path)
    except UnsafePath:
        return
    assert not path.startswith("/")
    assert all(p not in ("", ".", "..") and "\\" not in p and "\x00" not in p for p in parts)
