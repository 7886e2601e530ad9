"""Fuzzing ``.dizzyignore`` matching (protocol/ignore.py, protocol/wildmatch.py).

An ignore file syncs between devices, so its patterns are peer input.  Nothing may
raise, and matching must take bounded time: the old regex translation took 8 s for
``*a*a*a*a*a*a*a*b`` against a 60-character name (found here), hours for a few more
stars.  The bounded matcher must give exactly the regex's answers (the regex follows
git, checked by tests/protocol/test_ignore.py) wherever the regex is fast enough to ask.
"""

from __future__ import annotations

import re
import time

from hypothesis import example, given
from hypothesis import strategies as st

from dizzy.protocol.ignore import IgnoreRules
from dizzy.protocol.wildmatch import BoundedMatcher, Unmatchable, regex, tokens
from tests.fuzz.strategies import examples
from tests.fuzz_counter import tick

PATTERN_CHARS = "*?[]!^-/\\a.b:"
patterns = st.one_of(
    st.text(alphabet=PATTERN_CHARS, max_size=14),
    st.lists(st.sampled_from(["*", "**", "**/", "/**", "a", "b", "?", "[ab]", "[!a]", "/",
                              "[[:alpha:]]", "\\*", "\\/", "[a-/]"]), max_size=8).map("".join),
)
paths = st.one_of(
    st.text(alphabet="ab/.*[", max_size=12),
    st.lists(st.sampled_from(["a", "b", "ab", "ba", "aab", ".", "*"]), min_size=1,
             max_size=5).map("/".join),
)


@examples(6000)
@given(pattern=patterns, path=paths)
@example(pattern="**/a*b", path="ax/ab")  # a first-fit that must move across a "/"
@example(pattern="a*b*a", path="aba")
def test_bounded_matcher_agrees_with_the_regex(pattern: str, path: str) -> None:
    tick()
    try:
        toks = tokens(pattern)
    except Unmatchable:
        return
    expected = re.fullmatch(regex(toks), path, re.DOTALL) is not None
    assert BoundedMatcher(toks).fullmatch(path) == expected, (toks, path)


#: a path this long already took the backtracking regex minutes with 8 stars
LONG_NAME = "a" * 250
LONG_PATH = "/".join(["a"] * 60)


@examples(60)
@given(stars=st.integers(2, 40), piece=st.sampled_from(["a", "?", "[a]", "*a", "a/", "**/a"]),
       tail=st.sampled_from(["b", "x/", "[!a]", "/b"]), negate=st.booleans())
@example(stars=8, piece="a", tail="b", negate=False)
def test_hostile_patterns_match_in_bounded_time(stars: int, piece: str, tail: str,
                                                negate: bool) -> None:
    tick()
    line = ("!" if negate else "") + ("*" + piece) * stars + "*" + tail
    rules = IgnoreRules.parse("\n".join([line, "**/" * stars + "a*a*b", "*.o"]))
    started = time.monotonic()
    for path, is_dir in ((LONG_NAME, False), (LONG_PATH, False), ("x/" + LONG_NAME, True)):
        rules.ignored(path, is_dir)  # the path and each of its parent directories
    for depth in range(1, 65):  # what the scanner asks while walking down a deep tree
        rules.ignored_entry("/".join(["a"] * depth), True)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, (line, elapsed)


@examples(3000)
@given(text=st.text(max_size=80), path=st.text(max_size=30), is_dir=st.booleans())
def test_any_ignore_file_parses_and_answers(text: str, path: str, is_dir: bool) -> None:
    tick()
    rules = IgnoreRules.parse(text)
    assert rules.ignored(path, is_dir) in (True, False)
