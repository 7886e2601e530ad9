"""``.dizzyignore`` patterns against gitignore's answers.

Every case in ``GOLDEN`` was checked against ``git check-ignore --no-index`` (git
2.39) with the files really on disk, so these are git's answers, not ours.
"""

from __future__ import annotations

import pytest

from dizzy.protocol.ignore import IGNORE_FILE, IgnoreRules, parse_pattern

# (ignore file text, path, is_dir, ignored?)
GOLDEN: list[tuple[str, str, bool, bool]] = [
    # a plain name matches at any depth, files and directories alike
    ("foo", "foo", False, True),
    ("foo", "foo", True, True),
    ("foo", "a/foo", False, True),
    ("foo", "a/b/foo", True, True),
    ("foo", "foobar", False, False),
    ("foo", "a/foo/x", False, True),  # inside an ignored directory
    ("foo", "xfoo", False, False),
    # blank lines and comments
    ("\n\n# foo\n", "foo", False, False),
    ("  # not a comment", "  # not a comment", False, True),
    ("\\#foo", "#foo", False, True),
    ("#foo", "#foo", False, False),
    # trailing spaces are dropped unless escaped
    ("foo   ", "foo", False, True),
    ("foo\\ ", "foo ", False, True),
    ("foo\\ ", "foo", False, False),
    # a trailing slash: directories only
    ("build/", "build", True, True),
    ("build/", "build", False, False),
    ("build/", "a/build", True, True),
    ("build/", "build/x.o", False, True),
    ("build/", "a/build/x.o", False, True),
    # a leading slash anchors to the root
    ("/foo", "foo", False, True),
    ("/foo", "a/foo", False, False),
    ("/build/", "build", True, True),
    ("/build/", "a/build", True, False),
    # a slash in the middle anchors too
    ("a/foo", "a/foo", False, True),
    ("a/foo", "b/a/foo", False, False),
    ("a/foo", "a/foo/bar", False, True),
    ("doc/frotz/", "doc/frotz", True, True),
    ("doc/frotz/", "a/doc/frotz", True, False),
    ("doc/frotz/", "doc/frotz", False, False),
    # * and ? stop at slashes
    ("*.o", "x.o", False, True),
    ("*.o", "a/b/x.o", False, True),
    ("*.o", "x.oo", False, False),
    ("*.o", ".o", False, True),
    ("a/*.o", "a/x.o", False, True),
    ("a/*.o", "a/b/x.o", False, False),
    ("a/*", "a/b/c", False, True),  # a/b is ignored, so everything in it
    ("a/*", "a", True, False),
    ("?.txt", "x.txt", False, True),
    ("?.txt", "xy.txt", False, False),
    ("a?b", "a/b", False, False),
    ("a*b", "a/b", False, False),
    ("*", "anything/at/all", False, True),
    ("foo*", "foo", False, True),
    # bracket expressions
    ("[abc].txt", "b.txt", False, True),
    ("[abc].txt", "d.txt", False, False),
    ("[a-c].txt", "b.txt", False, True),
    ("[!a-c].txt", "b.txt", False, False),
    ("[!a-c].txt", "d.txt", False, True),
    ("[^a-c].txt", "d.txt", False, True),
    ("[]].txt", "].txt", False, True),
    ("[!]].txt", "].txt", False, False),
    ("[a-].txt", "-.txt", False, True),
    ("[[:digit:]].txt", "7.txt", False, True),
    ("[[:digit:]].txt", "x.txt", False, False),
    ("[[:upper:]]*", "Makefile", False, True),
    ("[[:upper:]]*", "makefile", False, False),
    ("a[/]b", "a/b", False, False),
    ("[\\]]x", "]x", False, True),
    ("[abc", "[abc", False, False),  # an unclosed bracket matches nothing
    ("[abc", "a", False, False),
    # escapes
    ("\\!important", "!important", False, True),
    ("\\*", "*", False, True),
    ("\\*", "x", False, False),
    ("\\[x]", "[x]", False, True),
    ("\\[x]", "x", False, False),
    ("a\\?", "a?", False, True),
    ("a\\?", "ab", False, False),
    # ** matches any number of directories
    ("**/foo", "foo", False, True),
    ("**/foo", "a/b/foo", False, True),
    ("**/foo/bar", "foo/bar", False, True),
    ("**/foo/bar", "x/foo/bar", False, True),
    ("**/foo/bar", "x/foo/x/bar", False, False),
    ("a/**/b", "a/b", False, True),
    ("a/**/b", "a/x/b", False, True),
    ("a/**/b", "a/x/y/b", False, True),
    ("a/**/b", "x/a/b", False, False),
    ("a/**", "a/x", False, True),
    ("a/**", "a/x/y", False, True),
    ("a/**", "a", True, False),
    ("a/**", "a", False, False),
    ("**", "a/b", False, True),
    ("a**b", "axxb", False, True),
    ("a**b", "a/b", False, False),
    ("a/**b", "a/xb", False, True),
    ("a/**b", "a/x/b", False, False),
    ("**/*.log", "x/y/z.log", False, True),
    ("/**/b", "a/b", False, True),
    # negation: the last match wins
    ("*.log\n!keep.log", "keep.log", False, False),
    ("*.log\n!keep.log", "other.log", False, True),
    ("!keep.log\n*.log", "keep.log", False, True),
    ("*\n!*.txt", "a.txt", False, False),
    ("*\n!*/\n!*.txt", "d/a.txt", False, False),
    ("*\n!*.txt", "d/a.txt", False, True),  # d itself stays ignored
    # nothing inside an ignored directory can be re-included
    ("build/\n!build/keep.txt", "build/keep.txt", False, True),
    ("build/*\n!build/keep.txt", "build/keep.txt", False, False),
    ("build/*\n!build/keep.txt", "build/other.txt", False, True),
    ("/*\n!/src/", "src", True, False),
    ("/*\n!/src/", "src/a.c", False, False),
    ("/*\n!/src/", "lib/a.c", False, True),
    ("/*\n!/src/", "src", False, True),
    ("!foo/\nfoo", "foo", True, True),
    ("foo\n!foo/", "foo", True, False),
    ("foo\n!foo/", "foo", False, True),
    # Windows line endings
    ("*.o\r\nfoo\r\n", "foo", False, True),
    ("*.o\r\nfoo\r\n", "x.o", False, True),
    # dot files are not special
    (".*", ".hidden", False, True),
    ("*", ".hidden", False, True),
    # names with characters regexes care about
    ("a+b(c).txt", "a+b(c).txt", False, True),
    ("a.b", "axb", False, False),
    ("$x^", "$x^", False, True),
    ("{a,b}", "a", False, False),
    ("{a,b}", "{a,b}", False, True),
]


@pytest.mark.parametrize(("text", "path", "is_dir", "expected"), GOLDEN)
def test_matches_git(text: str, path: str, is_dir: bool, expected: bool) -> None:
    assert IgnoreRules.parse(text).ignored(path, is_dir) is expected


def test_dizzy_temp_files_are_always_ignored() -> None:
    rules = IgnoreRules.parse("!*\n!.*.tmp")
    assert rules.ignored(".photo.jpg.dizzy-1a2b3c4d.tmp", False)
    assert rules.ignored("a/b/.x.dizzy-00000000.tmp", False)
    assert not rules.ignored("photo.jpg.dizzy-1a2b3c4d.tmp", False)
    assert not rules.ignored(".photo.jpg.tmp", False)


def test_the_ignore_file_itself_always_syncs() -> None:
    rules = IgnoreRules.parse(".*\n*\n" + IGNORE_FILE)
    assert not rules.ignored(IGNORE_FILE, False)
    # only the root one is the ignore file; others are ordinary files
    assert rules.ignored("sub/" + IGNORE_FILE, False)
    assert rules.ignored(IGNORE_FILE + ".sync-conflict-20240101-000000-ABCDEFG", False)


def test_no_patterns_ignores_nothing() -> None:
    rules = IgnoreRules.parse("")
    assert rules.patterns == ()
    assert not rules.ignored("a/b/c", False)
    assert not rules.ignored("a", True)


def test_ignored_entry_does_not_look_at_parents() -> None:
    rules = IgnoreRules.parse("build/\n!keep.txt")
    assert rules.ignored("build", True)
    assert not rules.ignored_entry("build/keep.txt", False)
    assert rules.ignored("build/keep.txt", False)


def test_later_rules_win_when_added() -> None:
    base = IgnoreRules.parse("*.log")
    combined = base + IgnoreRules.parse("!keep.log")
    assert combined.ignored("x.log", False)
    assert not combined.ignored("keep.log", False)
    assert (IgnoreRules.parse("!keep.log") + base).ignored("keep.log", False)


def test_names_with_newlines_and_unicode() -> None:
    rules = IgnoreRules.parse("a*b\nnaïve?\n")
    assert rules.ignored("a\nb", False)
    assert rules.ignored("naïveé", False)
    assert not rules.ignored("naïve", False)


@pytest.mark.parametrize("line", ["", "   ", "# comment", "/", "!/", "!"])
def test_lines_that_match_nothing(line: str) -> None:
    assert parse_pattern(line) is None


def test_pattern_fields() -> None:
    pattern = parse_pattern("!/a/b/ ")
    assert pattern is not None
    assert (pattern.negated, pattern.dir_only, pattern.anchored) == (True, True, True)
    plain = parse_pattern("*.o")
    assert plain is not None
    assert (plain.negated, plain.dir_only, plain.anchored) == (False, False, False)


def test_many_wildcards_match_in_bounded_time() -> None:
    """Regression: the regex translation backtracked exponentially in the number of
    stars (8 s for seven stars against 60 characters; hours for nine).  An ignore
    file syncs from peers, so that froze a daemon's scanner."""
    import time

    rules = IgnoreRules.parse("*a*a*a*a*a*a*a*a*a*a*b\n**/**/**/**/**/**/x*y*z\n")
    started = time.monotonic()
    assert not rules.ignored("a" * 250, False)
    assert rules.ignored("a" * 250 + "b", False)
    assert not rules.ignored("/".join(["xy"] * 100), False)
    assert rules.ignored("/".join(["d"] * 100) + "/x1y2z", False)
    assert time.monotonic() - started < 1.0
