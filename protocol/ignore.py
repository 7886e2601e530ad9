"""``.dizzyignore``: which paths of a folder are left out of syncing.

The syntax is gitignore's (one ignore file, at the folder root), so users can copy
patterns they already know and get the same answers git gives:

* blank lines and lines starting with ``#`` are skipped; ``\\#`` and ``\\!`` start a
  pattern with a literal ``#`` or ``!``; trailing spaces are dropped unless escaped;
* ``!pattern`` re-includes what an earlier pattern excluded; the last matching pattern
  wins, but nothing inside an ignored directory can be re-included (git never looks
  inside it, and neither does the scanner);
* a trailing ``/`` matches directories only;
* a ``/`` at the start or in the middle anchors the pattern to the folder root;
  otherwise it matches a name at any depth;
* ``*``, ``?`` and ``[...]`` never match ``/``; ``**/``, ``/**/`` and ``/**`` match any
  number of directories.

Each pattern becomes a regex once, at parse time.  Besides the user's patterns, dizzy's
own temp files are always ignored and the root ``.dizzyignore`` never is: the rules
themselves sync, so both sides agree on them.

Sans-IO: this module sees only strings; reading the file is the scanner's job.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from . import wildmatch

#: the ignore file, at the folder root only
IGNORE_FILE: Final = ".dizzyignore"

# The temp files dizzy writes beside a destination before renaming it into place
# (daemon.fsutil.temp_name_beside): half-written data, never synced.
_TEMP_NAME: Final = re.compile(r"\..*\.dizzy-[^/]*\.tmp", re.DOTALL)


@dataclass(frozen=True, slots=True)
class IgnorePattern:
    """One compiled line of an ignore file."""

    #: the line as written (for messages and debugging)
    source: str
    #: regex source, matched in full against the path (anchored) or the name
    regex: str
    negated: bool
    dir_only: bool
    #: matched against the whole relative path, not just the last component
    anchored: bool
    #: for patterns ``regex`` could backtrack on exponentially (several wildcards)
    bounded: wildmatch.BoundedMatcher | None = field(default=None, compare=False)

    def matcher(self) -> Callable[[str], object]:
        """``fullmatch`` of this pattern, in time bounded by path x pattern length."""
        if self.bounded is not None:
            return self.bounded.fullmatch
        return re.compile(self.regex, re.DOTALL).fullmatch


def _trim_trailing_spaces(line: str) -> str:
    # gitignore: trailing spaces are dropped unless the last one is escaped ("\ ").
    end = len(line)
    while end > 0 and line[end - 1] == " ":
        backslashes = 0
        i = end - 2
        while i >= 0 and line[i] == "\\":
            backslashes += 1
            i -= 1
        if backslashes % 2 == 1:
            break
        end -= 1
    return line[:end]


def parse_pattern(line: str) -> IgnorePattern | None:
    """Compile one line of an ignore file; ``None`` for blanks and comments."""
    text = _trim_trailing_spaces(line)
    if not text or text.startswith("#"):
        return None
    negated = text.startswith("!")
    if negated:
        text = text[1:]
    dir_only = text.endswith("/")
    if dir_only:
        text = text[:-1]
    anchored = "/" in text
    if text.startswith("/"):
        text = text[1:]
    if not text:
        return None  # "/" or "!/": git matches nothing with these
    try:
        toks = wildmatch.tokens(text)
    except wildmatch.Unmatchable:
        toks = [wildmatch.NEVER]
    bounded = None if wildmatch.backtracking_is_linear(toks) else wildmatch.BoundedMatcher(toks)
    return IgnorePattern(line, wildmatch.regex(toks), negated, dir_only, anchored, bounded)


def _any_of(patterns: list[IgnorePattern]) -> re.Pattern[str] | None:
    # Only patterns whose regex backtracks linearly: an alternation of those stays linear.
    patterns = [p for p in patterns if p.bounded is None]
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p.regex})" for p in patterns), re.DOTALL)


class IgnoreRules:
    """The compiled patterns of one ignore file (plus dizzy's fixed rules)."""

    __slots__ = ("_any", "_compiled", "_slow", "patterns")

    def __init__(self, patterns: tuple[IgnorePattern, ...] = ()) -> None:
        self.patterns = patterns
        # Last matching pattern wins, so they are tried newest first.
        self._compiled = tuple((p.matcher(), p) for p in reversed(patterns))
        # Patterns left out of the combined regexes below, per [is_dir]: with any of
        # them, every path takes the slow road (they are rare: several wildcards).
        self._slow = tuple(
            any(p.bounded is not None and (is_dir or not p.dir_only) for p in patterns)
            for is_dir in (False, True)
        )
        # Most paths match no pattern at all: one combined regex per subject (the name
        # or the whole path) and per kind rejects them in one call each, instead of one
        # call per pattern.  Indexed [is_dir][anchored].
        self._any = tuple(
            tuple(
                _any_of(
                    [p for p in patterns if p.anchored == anchored and (is_dir or not p.dir_only)]
                )
                for anchored in (False, True)
            )
            for is_dir in (False, True)
        )

    @classmethod
    def parse(cls, text: str) -> IgnoreRules:
        lines = text.split("\n")
        compiled = (parse_pattern(line.removesuffix("\r")) for line in lines)
        return cls(tuple(p for p in compiled if p is not None))

    def __add__(self, other: IgnoreRules) -> IgnoreRules:
        """Both sets of patterns; ``other``'s come later, so they win a tie."""
        return IgnoreRules(self.patterns + other.patterns)

    def __repr__(self) -> str:
        return f"IgnoreRules({[p.source for p in self.patterns]!r})"

    def ignored_entry(self, relpath: str, is_dir: bool) -> bool:
        """Whether ``relpath`` itself is ignored, its parent directories assumed not.

        For walkers that never descend into an ignored directory (the scanner):
        checking the parents again for each entry would be wasted work.
        """
        if relpath == IGNORE_FILE:
            return False
        name = relpath.rpartition("/")[2]
        if name[:1] == "." and name.endswith(".tmp") and _TEMP_NAME.fullmatch(name):
            return True
        by_name, by_path = self._any[is_dir]
        if not self._slow[is_dir] and not (
            (by_name is not None and by_name.fullmatch(name))
            or (by_path is not None and by_path.fullmatch(relpath))
        ):
            return False
        for fullmatch, pattern in self._compiled:
            if pattern.dir_only and not is_dir:
                continue
            if fullmatch(relpath if pattern.anchored else name):
                return not pattern.negated
        return False

    def ignored(self, relpath: str, is_dir: bool) -> bool:
        """Whether ``relpath`` (``/``-separated, relative to the root) is ignored.

        A path inside an ignored directory is ignored, whatever later patterns say.
        """
        parts = relpath.split("/")
        for depth in range(1, len(parts)):
            if self.ignored_entry("/".join(parts[:depth]), True):
                return True
        return self.ignored_entry(relpath, is_dir)


#: no user patterns: only dizzy's fixed rules
NO_RULES: Final = IgnoreRules()
