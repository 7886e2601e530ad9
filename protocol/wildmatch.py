"""gitignore's wildmatch, in bounded time, sans-IO.

A pattern is first cut into tokens: one-character matchers (a literal, ``?``, a
``[...]`` class), the separator ``/``, and the three unbounded ones: ``*`` (any run
without ``/``), ``**/`` (zero or more whole directories) and a trailing ``/**``
(everything below).  ``regex`` joins them into the regex ``re`` runs fastest.

That regex backtracks: a pattern with several unbounded tokens, such as ``*a*a*a*a*b``,
takes time exponential in their number against a name that nearly matches (seven stars
took 8 s on a 60-character name, nine would take hours).  ``.dizzyignore`` syncs between
devices, so a peer could freeze a daemon's scanner that way.  Patterns with at most one
unbounded token backtrack at most linearly and keep the regex; the others get a
``BoundedMatcher``, whose cost is at most (path length) x (pattern length):

* within one path component, ``*`` can never need to move a later piece of text to a
  later place than its first fit (the classic glob argument: the next ``*`` absorbs
  the difference), so each piece between stars is an atomic, lazy group that never
  backtracks;
* across components, ``**/`` is a star over whole components; the segments between
  them are simulated as a set of states, one step per component.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final


class Unmatchable(Exception):
    """The pattern can never match (git's wildmatch gives up on it the same way)."""


class _Token(str):
    """The separator and the unbounded tokens: distinct from any one-character regex."""

    __slots__ = ()


SLASH: Final = _Token("/")
STAR: Final = _Token("[^/]*")
ANYDIRS: Final = _Token("(?:.*/)?")
ALL: Final = _Token(".*")
_UNBOUNDED: Final = (STAR, ANYDIRS, ALL)

#: a regex that never matches
NEVER: Final = "(?!)"

# POSIX classes git's wildmatch accepts inside [...], as regex class contents.
_POSIX_CLASSES: Final = {
    "alnum": "a-zA-Z0-9",
    "alpha": "a-zA-Z",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": " \\t\\n\\r\\f\\v",
    "upper": "A-Z",
    "xdigit": "0-9A-Fa-f",
}


def _bracket(pattern: str, start: int) -> tuple[str, int]:
    """Translate the ``[...]`` at ``pattern[start]``; return (regex, index after it)."""
    i = start + 1
    n = len(pattern)
    negated = i < n and pattern[i] in "!^"
    if negated:
        i += 1
    members: list[str] = []
    first = True
    while True:
        if i >= n:
            raise Unmatchable
        ch = pattern[i]
        if ch == "]" and not first:
            i += 1
            break
        first = False
        if ch == "[" and pattern.startswith("[:", i):
            close = pattern.find(":]", i + 2)
            if close != -1:
                name = pattern[i + 2 : close]
                if name not in _POSIX_CLASSES:
                    raise Unmatchable  # wildmatch aborts on an unknown class
                members.append(_POSIX_CLASSES[name])
                i = close + 2
                continue
        if ch == "\\":
            i += 1
            if i >= n:
                raise Unmatchable
            ch = pattern[i]
        i += 1
        if i + 1 < n and pattern[i] == "-" and pattern[i + 1] != "]":
            hi = pattern[i + 1]
            i += 2
            if hi == "\\":
                if i >= n:
                    raise Unmatchable
                hi = pattern[i]
                i += 1
            if ch <= hi:  # a reversed range is empty in wildmatch, an error in re
                members.append(f"{re.escape(ch)}-{re.escape(hi)}")
            continue
        members.append(re.escape(ch))
    body = "".join(members)
    # Under gitignore's path rules a bracket never matches "/", whatever it lists.
    if negated:
        return f"[^/{body}]", i
    if not body:
        return NEVER, i
    return f"(?!/)[{body}]", i


def tokens(pattern: str) -> list[str]:
    """The tokens of a wildmatch pattern (``/`` as the separator); ``Unmatchable``."""
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            run_end = i
            while run_end < n and pattern[run_end] == "*":
                run_end += 1
            at_start = i == 0 or pattern[i - 1] == "/"
            if run_end - i >= 2 and at_start and run_end == n:
                out.append(ALL)  # "a/**": everything inside a; "**" alone: everything
                i = run_end
            elif run_end - i >= 2 and at_start and pattern[run_end] == "/":
                out.append(ANYDIRS)  # "**/" and "/**/": zero or more whole directories
                i = run_end + 1
            else:
                out.append(STAR)  # any other run of stars is one "*"
                i = run_end
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "[":
            regex, i = _bracket(pattern, i)
            out.append(regex)
        elif ch == "\\":
            if i + 1 >= n:
                raise Unmatchable
            out.append(SLASH if pattern[i + 1] == "/" else re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(SLASH if ch == "/" else re.escape(ch))
            i += 1
    return out


def regex(toks: list[str]) -> str:
    """The backtracking regex source of the tokens (matched in full, ``re.DOTALL``)."""
    return "".join(toks)


def backtracking_is_linear(toks: list[str]) -> bool:
    """At most one unbounded token: ``re`` backtracks over that one only."""
    return sum(1 for t in toks if type(t) is _Token and t in _UNBOUNDED) <= 1


def _segment_regex(toks: list[str]) -> re.Pattern[str]:
    """One component's matcher: pieces between stars are atomic, lazy, first-fit."""
    pieces: list[list[str]] = [[]]
    for t in toks:
        if t is STAR:
            pieces.append([])
        else:
            pieces[-1].append(t)
    head, *middle_and_last = ("".join(p) for p in pieces)
    if not middle_and_last:
        return re.compile(head, re.DOTALL)
    *middle, last = middle_and_last
    body = head + "".join(f"(?>[^/]*?{m})" for m in middle) + f"[^/]*{last}"
    return re.compile(body, re.DOTALL)


class BoundedMatcher:
    """``fullmatch(text)`` for any token list, without exponential backtracking."""

    __slots__ = ("_segments",)

    def __init__(self, toks: list[str]) -> None:
        #: per path segment: ANYDIRS, ALL, or the compiled one-component matcher
        self._segments: list[str | Callable[[str], object]] = []
        current: list[str] = []
        for t in toks:
            if t is SLASH:
                self._segments.append(_segment_regex(current).fullmatch)
                current = []
            elif t is ANYDIRS or t is ALL:
                # the tokenizer makes these whole segments ("**/" eats its own slash)
                assert not current, "** inside a path segment"
                if not (t is ANYDIRS and self._segments and self._segments[-1] is ANYDIRS):
                    self._segments.append(t)  # "**/**/" is "**/": one state, not many
            else:
                current.append(t)
        if current or not toks or toks[-1] is SLASH or toks[-1] is ANYDIRS:
            # (a final "**/" matches up to a "/": the text then ends in an empty component)
            self._segments.append(_segment_regex(current).fullmatch)

    def fullmatch(self, text: str) -> bool:
        segments = self._segments
        end = len(segments)
        all_done = end + 1  # inside a trailing "/**" that consumed something: accepts
        components = text.split("/")
        last = len(components) - 1
        states = self._closure({0})
        for index, component in enumerate(components):
            following: set[int] = set()
            for s in states:
                if s == all_done:
                    following.add(s)
                    continue
                if s == end:
                    continue
                segment = segments[s]
                if segment is ANYDIRS:
                    if index < last:  # a skipped directory is followed by "/"
                        following.add(s)
                elif segment is ALL:
                    following.add(all_done)
                elif segment(component):  # type: ignore[operator]
                    following.add(s + 1)
            if not following:
                return False
            states = self._closure(following)
        return end in states or all_done in states

    def _closure(self, states: set[int]) -> set[int]:
        # "**/" may match no directory at all: its state also stands at the next one
        out = set(states)
        for s in sorted(states):
            while s < len(self._segments) and self._segments[s] is ANYDIRS:
                s += 1
                out.add(s)
        return out
