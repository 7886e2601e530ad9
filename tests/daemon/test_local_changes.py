"""How this device's scanned changes enter its log (daemon/folder_sync.py
``log_local_changes``): the version each new entry descends from."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dizzy.daemon.folder_sync import SyncState, _save_entries, log_batch, log_local_changes
from dizzy.daemon.scanner import ScannedFile
from dizzy.daemon.schema import STATEMENTS
from dizzy.protocol.changelog import LogEntry, LogReplica, LogWriter, SignedHead
from dizzy.protocol.ids import DeviceId
from dizzy.protocol.versions import VersionVector

T0 = 1_700_000_000_000_000_000
OURS, THEIRS = "11" * 32, "22" * 32


def device(seed: int) -> tuple[bytes, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return DeviceId.from_public_key(public).digest, key


def scanned(path: str, object_id: str) -> ScannedFile:
    return ScannedFile(path, "file", 10, T0, 1234, 0o644, object_id)


def test_a_file_made_here_does_not_descend_from_another_devices_file() -> None:
    """Both devices create ``f`` before hearing of the other's.  We heard of theirs
    first (it is in our fold, we never fetched it): our entry must still be
    concurrent with theirs, so the fold keeps one as a conflict copy.  It used to
    claim their version and silently replace bytes we never had."""
    me, my_key = device(1)
    them, their_key = device(2)
    theirs = LogWriter("f", them, their_key).append(
        "f", "file", False, THEIRS, 10, T0, 0o644, None, VersionVector({them: 1}))
    state = SyncState("f", me, LogWriter("f", me, my_key))
    state.merged.apply(theirs)
    files = {"f": scanned("f", OURS)}
    [mine] = log_local_changes(state, files, {}, ["f"], [])
    assert mine.version == VersionVector({me: 1})
    assert mine.version.compare(theirs.version) == "concurrent"
    # once the file here is theirs (fetched at their version), an edit descends from it
    state.versions["f"] = theirs.version
    edited = {"f": scanned("f", "44" * 32)}
    [edit] = log_local_changes(state, edited, files, ["f"], [])
    assert edit.version == VersionVector({me: 2, them: 1})


def test_a_file_made_again_after_a_deletion_descends_from_the_deletion() -> None:
    me, my_key = device(1)
    them, their_key = device(2)
    writer = LogWriter("f", them, their_key)
    writer.append("f", "file", False, THEIRS, 10, T0, 0o644, None, VersionVector({them: 1}))
    gone = writer.append("f", "file", True, None, 0, T0, 0o644, None, VersionVector({them: 2}))
    state = SyncState("f", me, LogWriter("f", me, my_key))
    state.merged.apply(gone)
    [again] = log_local_changes(state, {"f": scanned("f", OURS)}, {}, ["f"], [])
    assert again.version == VersionVector({me: 1, them: 2})
    assert state.merged["f"] == again


def test_a_new_entry_is_past_every_entry_this_device_made_at_the_path() -> None:
    """Our file lost a conflict and was replaced by theirs; after the applier deleted
    the path (their deletion), we make a new file there: its vector must be past our
    own earlier one too, not restart our counter at 1."""
    me, my_key = device(1)
    them, their_key = device(2)
    state = SyncState("f", me, LogWriter("f", me, my_key))
    [first] = log_local_changes(state, {"f": scanned("f", OURS)}, {}, ["f"], [])
    writer = LogWriter("f", them, their_key)
    theirs = writer.append("f", "file", False, THEIRS, 10, T0 + 5, 0o644, None,
                           VersionVector({them: 1}))
    state.merged.apply(theirs)
    state.versions.pop("f")  # the applier replaced our file, then deleted it
    [again] = log_local_changes(state, {"f": scanned("f", "33" * 32)}, {}, ["f"], [])
    assert again.version == VersionVector({me: 2})
    assert first.version.compare(again.version) == "older"


def test_own_log_batch_ends_at_a_head_while_entries_are_being_stored() -> None:
    """A peer's folder.log served between an append and its save (the writer ahead of
    the index) must still end at its signed head: it used to be signed at the
    writer's sequence and refused as "entries end at seq N, not at the signed head"."""
    me, my_key = device(1)
    conn = sqlite3.connect(":memory:", isolation_level=None)
    for statement in STATEMENTS:
        conn.execute(statement)
    state = SyncState("f", me, LogWriter("f", me, my_key))
    stored = log_local_changes(state, {"a": scanned("a", OURS)}, {}, ["a"], [])
    _save_entries(conn, stored, state.writer.head())
    log_local_changes(state, {"b": scanned("b", THEIRS)}, {}, ["b"], [])  # not saved yet
    entries, head = log_batch(conn, state, me, 0, my_key)
    public = my_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    replica = LogReplica("f", me, public)
    accepted = replica.accept([LogEntry.decode(e) for e in entries], SignedHead.decode(head))
    assert [e.path for e in accepted] == ["a"]


async def test_an_edit_the_moment_a_fetched_file_lands_is_not_recorded_as_ours(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the soak: a program wrote into a fetched file between its rename into
    place and the applier's stat of it; the index then held the edited stat with the
    fetched object ID, the scanner never rehashed it, and a later deletion from a peer
    destroyed the edit.  The recorded stat must be the temp file's own."""
    import os

    from dizzy.daemon import folder_sync
    from dizzy.daemon.events import EventBus
    from dizzy.protocol.folder_state import Fetch

    me, my_key = device(1)
    them, their_key = device(2)
    state = SyncState("f", me, LogWriter("f", me, my_key))
    theirs = LogWriter("f", them, their_key).append(
        "x.txt", "file", False, THEIRS, 5, T0, 0o644, None, VersionVector({them: 1}))
    applier = folder_sync.Applier(tmp_path, state, {}, None, None, EventBus())  # type: ignore[arg-type]
    tmp = tmp_path / ".x.txt.dizzy-0badc0de.tmp"
    tmp.write_bytes(b"fetch")
    os.utime(tmp, ns=(T0, T0))
    applier.ready.append((tmp, tmp_path / "x.txt", Fetch("x.txt", theirs)))
    real_rename = os.rename

    def rename_then_edit(src: Any, dst: Any) -> None:
        real_rename(src, dst)
        with open(dst, "ab") as f:  # the user's program, right on time
            f.write(b" and an edit")

    monkeypatch.setattr(folder_sync.os, "rename", rename_then_edit)
    await applier._flush()
    recorded = applier.files["x.txt"]
    on_disk = os.lstat(tmp_path / "x.txt")
    assert (recorded.size, recorded.mtime_ns) == (5, T0)
    assert (on_disk.st_size, on_disk.st_mtime_ns) != (recorded.size, recorded.mtime_ns)
