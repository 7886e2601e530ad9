"""The fold of devices' logs, conflict naming, and the sync planner."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from dizzy.protocol.changelog import ZERO_HASH, EntryKind, LogEntry
from dizzy.protocol.errors import LocalProtocolError, UnsafePath
from dizzy.protocol.folder_state import (
    Adopt,
    Delete,
    Fetch,
    FolderState,
    KeepConflict,
    LocalFileInfo,
    MakeDir,
    MakeLink,
    Nothing,
    conflict_name,
    conflict_path_for,
    plan,
)
from dizzy.protocol.ids import DeviceId
from dizzy.protocol.paths import MAX_NAME_BYTES
from dizzy.protocol.versions import VersionVector

A, B, C = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32
T0 = 1_700_000_000_000_000_000  # 2023-11-14 22:13:20 UTC
OID1, OID2, OID3 = "11" * 32, "22" * 32, "33" * 32

_seqs: dict[bytes, int] = {}


def entry(
    device: bytes,
    path: str,
    version: VersionVector,
    *,
    oid: str | None = OID1,
    kind: EntryKind = "file",
    deleted: bool = False,
    mtime_ns: int = T0,
    mode: int = 0o644,
    link_target: str | None = None,
    seq: int | None = None,
) -> LogEntry:
    # the fold never looks at prev; a fresh seq per device keeps entries in log order
    if seq is None:
        seq = _seqs[device] = _seqs.get(device, 0) + 1
    live_file = kind == "file" and not deleted
    return LogEntry(
        "photos", device, seq, ZERO_HASH if seq == 1 else b"\x01" * 32, path, kind, deleted,
        oid if live_file else None, 3 if live_file else 0, mtime_ns, mode, link_target, version,
    )


def v(**counters: int) -> VersionVector:
    names = {"a": A, "b": B, "c": C}
    return VersionVector({names[k]: n for k, n in counters.items()})


def local_of(e: LogEntry) -> LocalFileInfo:
    return LocalFileInfo(e.kind, e.object_id, e.size, e.mtime_ns, e.mode, e.version,
                         e.link_target)


# -- the fold ---------------------------------------------------------------------


def test_newer_wins_older_and_equal_are_stale() -> None:
    state = FolderState()
    first = entry(A, "x", v(a=1))
    second = entry(B, "x", v(a=1, b=1), oid=OID2)
    assert state.apply(first).outcome == "wins"
    assert state.apply(second).outcome == "wins"
    assert state["x"] == second
    stale = state.apply(entry(C, "x", v(a=1), oid=OID3))
    assert (stale.outcome, stale.winner) == ("stale", second)
    # C fetched B's version and logged it: same version, nothing changes
    assert state.apply(entry(C, "x", v(a=1, b=1), oid=OID2)).outcome == "stale"
    assert state["x"] == second and len(state) == 1 and list(state) == ["x"]


def test_later_entry_of_the_same_device_supersedes() -> None:
    state = FolderState()
    state.apply(entry(A, "x", v(a=2)))
    # A re-recorded the path with a vector that does not dominate: still its latest word
    later = entry(A, "x", v(b=1))
    assert state.apply(later).outcome == "wins"
    replayed = entry(A, "x", v(a=5), seq=1)
    assert state.apply(replayed).outcome == "stale"
    assert state["x"] == later


def test_concurrent_edits_conflict_deterministically() -> None:
    left = entry(A, "x", v(a=1), oid=OID1, mtime_ns=T0 + 5)
    right = entry(B, "x", v(b=1), oid=OID2, mtime_ns=T0)
    for order in ([left, right], [right, left]):
        state = FolderState()
        decisions = [state.apply(e) for e in order]
        assert decisions[-1].outcome == "conflict"
        assert (decisions[-1].winner, decisions[-1].loser) == (left, right)
        assert state["x"] == left
        assert state.loser("x") == right


def test_conflict_tie_broken_by_device() -> None:
    low = entry(A, "x", v(a=1), oid=OID1)
    high = entry(B, "x", v(b=1), oid=OID2)
    state = FolderState()
    state.apply(high)
    decision = state.apply(low)
    assert (decision.outcome, decision.winner, decision.loser) == ("conflict", high, low)


def test_edit_beats_concurrent_delete() -> None:
    edit = entry(A, "x", v(a=1, b=1), mtime_ns=T0)
    delete = entry(B, "x", v(b=2), deleted=True, mtime_ns=T0 + 99)
    for order in itertools.permutations([edit, delete]):
        state = FolderState()
        for e in order:
            state.apply(e)
        assert state["x"] == edit
        assert state.loser("x") is None  # a deletion leaves nothing to keep


def test_identical_concurrent_changes_are_not_a_conflict() -> None:
    state = FolderState()
    state.apply(entry(A, "x", v(a=1), oid=OID1))
    decision = state.apply(entry(B, "x", v(b=1), oid=OID1, mtime_ns=T0 + 1))
    assert decision.outcome == "wins" and decision.loser is None


def test_three_devices_fold_the_same_whatever_the_order() -> None:
    # Found by the soak: B and C each kept the same conflict copy (identical, made
    # concurrently); A deleted B's.  A's deletion descends from B's entry but is
    # concurrent with C's.  Folded as A, B, C one device had the copy deleted, folded
    # C, A, B another had it live: the trees never converged.
    c_copy = entry(C, "x", v(c=1), oid=OID1)
    a_gone = entry(A, "x", v(a=1, b=1), deleted=True)
    b_copy = entry(B, "x", v(b=1), oid=OID1)
    winners = set()
    for order in itertools.permutations([c_copy, a_gone, b_copy]):
        state = FolderState()
        for e in order:
            state.apply(e)
        winners.add(state["x"])
        assert state.losers("x") == []
    assert winners == {c_copy}  # C's copy stands: a change beats the deletion


def test_three_way_conflict_keeps_every_losing_version() -> None:
    edits = [entry(A, "x", v(a=1), oid=OID1, mtime_ns=T0 + 3),
             entry(B, "x", v(b=1), oid=OID2, mtime_ns=T0 + 2),
             entry(C, "x", v(c=1), oid=OID3, mtime_ns=T0 + 1)]
    for order in itertools.permutations(edits):
        state = FolderState()
        for e in order:
            state.apply(e)
        assert state["x"] == edits[0]
        assert state.losers("x") == edits[1:]
        # each device keeps its own losing version as a copy, not only the best loser
        for mine in edits[1:]:
            assert plan({"x": local_of(mine)}, state, receive_only=False) == [
                KeepConflict("x", mine), Fetch("x", edits[0])
            ]
    # a later edit that saw two of them retires both; the third still conflicts
    merged_edit = entry(B, "x", v(a=1, b=2), oid=OID2, mtime_ns=T0 + 9)
    decision = state.apply(merged_edit)
    assert (decision.outcome, decision.winner, decision.loser) == (
        "conflict", merged_edit, edits[2])
    assert state.losers("x") == [edits[2]]


def test_content_a_head_replaced_is_not_kept_as_a_conflict() -> None:
    # we have B's first version; B edited it again while C's concurrent edit won: what
    # we hold was seen and replaced by B, so we simply take the winner
    state = FolderState()
    b1 = entry(B, "x", v(b=1), oid=OID1)
    for e in (b1, entry(B, "x", v(b=2), oid=OID2, mtime_ns=T0),
              c1 := entry(C, "x", v(c=1), oid=OID3, mtime_ns=T0 + 5)):
        state.apply(e)
    assert state["x"] == c1
    assert plan({"x": local_of(b1)}, state, receive_only=False) == [Fetch("x", c1)]


def test_fold_refuses_other_values() -> None:
    not_an_entry: Any = "x"
    with pytest.raises(LocalProtocolError):
        FolderState().apply(not_an_entry)


# -- conflict names ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("notes.txt", "notes.sync-conflict-20231114-221320-ABCDEFG.txt"),
        ("d/e/notes.txt", "d/e/notes.sync-conflict-20231114-221320-ABCDEFG.txt"),
        ("Makefile", "Makefile.sync-conflict-20231114-221320-ABCDEFG"),
        (".bashrc", ".bashrc.sync-conflict-20231114-221320-ABCDEFG"),
        (".config.yaml", ".config.sync-conflict-20231114-221320-ABCDEFG.yaml"),
        ("a.tar.gz", "a.tar.sync-conflict-20231114-221320-ABCDEFG.gz"),
        ("trailing.", "trailing..sync-conflict-20231114-221320-ABCDEFG"),
        ("n." + "e" * 40, "n." + "e" * 40 + ".sync-conflict-20231114-221320-ABCDEFG"),
    ],
)
def test_conflict_names(path: str, expected: str) -> None:
    assert conflict_name(path, T0 + 999_999_999, "ABCDEFG") == expected


def test_conflict_name_before_1970_and_long_names() -> None:
    assert conflict_name("x", -1, "AB") == "x.sync-conflict-19691231-235959-AB"
    long = "é" * 125 + ".txt"  # 254 bytes: near NAME_MAX, the stem must give way
    named = conflict_name("d/" + long, T0, "ABCDEFG")
    base = named.split("/")[-1]
    assert len(base.encode()) <= MAX_NAME_BYTES
    assert base.endswith(".sync-conflict-20231114-221320-ABCDEFG.txt")
    base.encode("utf-8")  # trimmed on a character boundary


@pytest.mark.parametrize(("path", "short"), [("../x", "AB"), ("", "AB"), ("x", "A/B"),
                                              ("x", ""), ("x", "A B")])
def test_conflict_name_refuses_bad_input(path: str, short: str) -> None:
    with pytest.raises((UnsafePath, LocalProtocolError)):
        conflict_name(path, T0, short)


def test_conflict_name_attempts_for_a_taken_name() -> None:
    first = conflict_name("d/plan.txt", T0, "ABCDEFG")
    assert first == "d/plan.sync-conflict-20231114-221320-ABCDEFG.txt"
    assert conflict_name("d/plan.txt", T0, "ABCDEFG", 2) == \
        "d/plan.sync-conflict-20231114-221320-ABCDEFG-2.txt"
    assert conflict_name("d/plan.txt", T0, "ABCDEFG", 1) == first
    for bad in (0, 1000, True):
        with pytest.raises(LocalProtocolError):
            conflict_name("d/plan.txt", T0, "ABCDEFG", bad)


def test_conflict_path_uses_the_losers_device() -> None:
    loser = entry(B, "x.txt", v(b=1), mtime_ns=T0)
    assert conflict_path_for("x.txt", loser) == (
        f"x.sync-conflict-20231114-221320-{DeviceId(B).short}.txt"
    )


# -- the planner ------------------------------------------------------------------


def test_new_remote_file_dir_and_link() -> None:
    state = FolderState()
    f = entry(B, "d/f", v(b=1))
    d = entry(B, "d", v(b=1), kind="dir", mode=0o755)
    link = entry(B, "l", v(b=1), kind="link", link_target="d/f", mode=0o777)
    for e in (f, d, link):
        state.apply(e)
    assert plan({}, state, receive_only=False) == [
        MakeDir("d", d), MakeLink("l", link), Fetch("d/f", f)
    ]


def test_up_to_date_and_local_only() -> None:
    state = FolderState()
    f = entry(B, "f", v(b=1))
    state.apply(f)
    local = {"f": local_of(f), "mine": local_of(entry(A, "mine", v(a=1)))}
    assert plan(local, state, receive_only=False) == [
        Nothing("f", "up to date"), Nothing("mine", "only here: the scanner records it")
    ]


def test_remote_edit_of_unchanged_local_file_fetches() -> None:
    state = FolderState()
    old = entry(A, "f", v(a=1))
    state.apply(old)
    new = entry(B, "f", v(a=1, b=1), oid=OID2)
    state.apply(new)
    assert plan({"f": local_of(old)}, state, receive_only=False) == [Fetch("f", new)]


def test_remote_delete_of_unchanged_local_file() -> None:
    state = FolderState()
    kept = entry(A, "f", v(a=1))
    state.apply(kept)
    gone = entry(B, "f", v(a=1, b=1), deleted=True)
    state.apply(gone)
    assert plan({"f": local_of(kept)}, state, receive_only=False) == [Delete("f")]
    assert plan({}, state, receive_only=False) == [Nothing("f", "deleted everywhere")]


def test_remote_delete_of_locally_changed_file_is_not_applied() -> None:
    state = FolderState()
    state.apply(entry(B, "f", v(b=2), deleted=True))
    changed = LocalFileInfo("file", OID3, 3, T0, 0o644, v(b=1, a=1))
    assert plan({"f": changed}, state, receive_only=False) == [
        Nothing("f", "changed here since the deletion")
    ]
    assert plan({"f": changed}, state, receive_only=True) == [Delete("f")]


def test_deletes_children_before_parents() -> None:
    state = FolderState()
    d = entry(A, "d", v(a=1), kind="dir", mode=0o755)
    f = entry(A, "d/f", v(a=1))
    for e in (d, f):
        state.apply(e)
    local = {"d": local_of(d), "d/f": local_of(f)}
    for e in (entry(B, "d", v(a=1, b=1), kind="dir", deleted=True),
              entry(B, "d/f", v(a=1, b=1), deleted=True)):
        state.apply(e)
    assert plan(local, state, receive_only=False) == [Delete("d/f"), Delete("d")]


def test_deleted_directory_with_live_entries_inside_stays() -> None:
    # B deletes d (and the file it knew inside) while C adds a file to it: the new
    # file wins, so d must stay, on every device (not fail "not empty" forever)
    state = FolderState()
    d = entry(A, "d", v(a=1), kind="dir", mode=0o755)
    old = entry(A, "d/old", v(a=1))
    new = entry(C, "d/new", v(c=1), oid=OID2)
    for e in (d, old, entry(B, "d/old", v(a=1, b=1), deleted=True),
              entry(B, "d", v(a=1, b=1), kind="dir", deleted=True), new):
        state.apply(e)
    local = {"d": local_of(d), "d/old": local_of(old)}
    assert plan(local, state, receive_only=False) == [
        Fetch("d/new", new), Nothing("d", "deleted, but entries inside are live"),
        Delete("d/old"),
    ]
    # once nothing inside is live, the deletion of the directory applies after all
    state.apply(entry(C, "d/new", v(c=2), deleted=True))
    assert plan({"d": local_of(d)}, state, receive_only=False) == [
        Nothing("d/new", "deleted everywhere"), Nothing("d/old", "deleted everywhere"),
        Delete("d"),
    ]


def test_deleted_directory_goes_whatever_the_local_version() -> None:
    # Two devices deleted d concurrently and the other's deletion won the tie; this
    # device had d again only to hold a file since deleted.  A directory has nothing
    # to keep: it goes (it used to stay here forever, "changed here since the deletion").
    state = FolderState()
    state.apply(entry(A, "d", v(a=2), kind="dir", deleted=True, mtime_ns=T0 + 1))
    state.apply(entry(B, "d", v(a=1, b=1), kind="dir", deleted=True))
    assert state["d"].device == A
    here = LocalFileInfo("dir", None, 0, T0, 0o755, v(a=1, b=1))
    assert plan({"d": here}, state, receive_only=False) == [Delete("d")]


def test_deletion_that_saw_this_content_applies_even_if_it_lost_the_tie() -> None:
    # C deleted its copy; B, which had A's edit of it, deleted it too; C's deletion
    # won the tie.  A still holds its edit, which B's deletion descends from: it goes
    # (it used to stay on A forever, "changed here since the deletion").
    state = FolderState()
    a_edit = entry(A, "x", v(a=1, c=1), oid=OID2)
    for e in (entry(C, "x", v(c=1), oid=OID1), a_edit,
              entry(C, "x", v(c=2), deleted=True, mtime_ns=T0 + 1),
              entry(B, "x", v(a=1, b=1, c=1), deleted=True)):
        state.apply(e)
    assert state["x"].device == C and state["x"].deleted
    assert plan({"x": local_of(a_edit)}, state, receive_only=False) == [Delete("x")]
    # an edit no deletion saw stays, as before
    unseen = LocalFileInfo("file", OID3, 3, T0, 0o644, v(a=2, c=1))
    assert plan({"x": unseen}, state, receive_only=False) == [
        Nothing("x", "changed here since the deletion")
    ]


def test_content_already_here_adopts_the_winners_version() -> None:
    # A directory made here to hold a fetched file has no version of its own; a file
    # made identically on two devices has ours.  Either way the winner's version is
    # merged in: a deletion made here later must descend from the winner, or it
    # looks concurrent and loses to the very entry it deleted.
    state = FolderState()
    d = entry(B, "d", v(b=2), kind="dir", mode=0o755)
    f = entry(B, "f", v(b=1))
    for e in (d, f):
        state.apply(e)
    implicit = LocalFileInfo("dir", None, 0, T0, 0o755, VersionVector())
    same_here = LocalFileInfo("file", OID1, 3, T0, 0o644, v(a=1))
    assert plan({"d": implicit, "f": same_here}, state, receive_only=False) == [
        Adopt("d", v(b=2)), Adopt("f", v(a=1, b=1)),
    ]
    # at (or past) the winner's version already: nothing to record
    past = LocalFileInfo("file", OID1, 3, T0, 0o644, v(a=1, b=1))
    assert plan({"d": local_of(d), "f": past}, state, receive_only=False) == [
        Nothing("d", "up to date"), Nothing("f", "up to date"),
    ]


def test_concurrent_edit_keeps_conflict_copy_then_fetches() -> None:
    state = FolderState()
    mine = entry(A, "f.txt", v(a=1), oid=OID1, mtime_ns=T0)
    theirs = entry(B, "f.txt", v(b=1), oid=OID2, mtime_ns=T0 + 10)
    state.apply(mine)
    assert state.apply(theirs).outcome == "conflict"
    assert plan({"f.txt": local_of(mine)}, state, receive_only=False) == [
        KeepConflict("f.txt", mine), Fetch("f.txt", theirs)
    ]
    # we won the conflict instead: our content stays and the other side keeps a copy
    state = FolderState()
    state.apply(entry(B, "f.txt", v(b=1), oid=OID2, mtime_ns=T0 - 10))
    state.apply(mine)
    assert plan({"f.txt": local_of(mine)}, state, receive_only=False) == [
        Nothing("f.txt", "up to date")
    ]


def test_concurrent_local_change_not_yet_folded_waits() -> None:
    state = FolderState()
    theirs = entry(B, "f", v(b=1), oid=OID2)
    state.apply(theirs)
    unfolded = LocalFileInfo("file", OID3, 3, T0, 0o644, v(a=1))
    [action] = plan({"f": unfolded}, state, receive_only=False)
    assert isinstance(action, Nothing)


def test_receive_only_ignores_local_edits() -> None:
    state = FolderState()
    base = entry(B, "f", v(b=1), oid=OID1)
    state.apply(base)
    # edited here (our version says newer): send-receive keeps it, receive-only reverts
    edited = LocalFileInfo("file", OID3, 3, T0, 0o644, v(b=1, a=1))
    assert plan({"f": edited}, state, receive_only=False) == [
        Nothing("f", "local version is newer")
    ]
    assert plan({"f": edited}, state, receive_only=True) == [Fetch("f", base)]
    # an unrecorded edit (same version, other content): likewise
    unrecorded = LocalFileInfo("file", OID3, 3, T0, 0o644, v(b=1))
    assert plan({"f": unrecorded}, state, receive_only=False) == [
        Nothing("f", "local version is equal")
    ]
    assert plan({"f": unrecorded}, state, receive_only=True) == [Fetch("f", base)]
    # and a concurrent edit is simply overwritten, with no conflict copy
    concurrent = LocalFileInfo("file", OID3, 3, T0, 0o644, v(a=1))
    assert plan({"f": concurrent}, state, receive_only=True) == [Fetch("f", base)]


def test_nothing_is_written_through_a_symlink() -> None:
    state = FolderState()
    link = entry(B, "d", v(b=1), kind="link", link_target="/etc", mode=0o777)
    through = entry(B, "d/passwd", v(b=1))
    state.apply(link)
    state.apply(through)
    actions = plan({}, state, receive_only=False)
    assert actions == [MakeLink("d", link), Nothing("d/passwd", "refused: 'd' is not a directory")]
    # a local symlink (the log says it is a directory) blocks the path just the same
    state = FolderState()
    state.apply(entry(B, "e", v(b=1), kind="dir", mode=0o755))
    state.apply(through_e := entry(B, "e/x", v(b=1)))
    local_link = LocalFileInfo("link", None, 0, T0, 0o777, v(a=1), "/tmp")
    actions = plan({"e": local_link}, state, receive_only=False)
    assert Fetch("e/x", through_e) not in actions
    assert Nothing("e/x", "refused: 'e' is not a directory") in actions
