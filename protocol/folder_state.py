"""The fold of all devices' logs of a folder, and the sync planner, sans-IO.

``FolderState`` folds log entries into one winner per path.  An entry supersedes
another when its version vector descends from the other's (or it is the same device's
later word on the path); the entries nothing supersedes are the path's heads.  Among
concurrent heads a change beats a deletion, then the later mtime wins, then the
greater device digest, so every device picks the same winner whatever order the logs
arrive in, and the losing live files are reported so their content can be kept as
conflict copies.

``plan`` compares that merged state with what is on disk and says what to do, like
resolvelib's core: pure data in, a list of actions out; the daemon performs them.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from .changelog import EntryKind, LogEntry
from .errors import LocalProtocolError
from .ids import DeviceId
from .paths import MAX_NAME_BYTES, validate_name, validate_relpath
from .versions import VersionVector

Outcome = Literal["wins", "stale", "conflict"]

CONFLICT_MARKER: Final = ".sync-conflict-"
#: An "extension" longer than this is part of the name ("notes.the whole title"),
#: and bounding it guarantees the conflict suffix fits in NAME_MAX after trimming.
MAX_EXTENSION_BYTES: Final = 32


@dataclass(frozen=True, slots=True)
class Decision:
    """What ``FolderState.apply`` made of one entry.

    ``winner`` is the path's entry after the fold; on ``"conflict"``, ``loser`` is
    the concurrent entry that lost (the new one or the former winner).
    """

    outcome: Outcome
    winner: LogEntry
    loser: LogEntry | None = None


def _same_content(a: LogEntry, b: LogEntry) -> bool:
    return (a.kind, a.deleted, a.object_id, a.link_target) == (
        b.kind, b.deleted, b.object_id, b.link_target,
    )


def _conflict_rank(entry: LogEntry) -> tuple[bool, int, bytes]:
    # A change beats a deletion (no data is lost and no copy of nothing is needed),
    # then the later mtime, then the greater device digest: a total order, so every
    # device resolves the same conflict the same way.
    return (not entry.deleted, entry.mtime_ns, entry.device)


def _supersedes(newer: LogEntry, older: LogEntry) -> bool:
    """Whether ``newer`` makes ``older`` obsolete: the same device's later word on the
    path (whatever its vector), or a version that descends from ``older``'s."""
    if newer.device == older.device:
        return newer.seq >= older.seq
    # equal vectors name the same version (a device logged what it fetched): the
    # entry already folded stands
    return older.version.compare(newer.version) in ("older", "equal")


class FolderState:
    """path -> winning ``LogEntry`` across every device's log of one folder.

    Per path the fold keeps every *head*: each entry no other entry supersedes.  The
    winner is the best-ranked head; the other heads are its concurrent rivals.
    Keeping them all (not only the current winner) is what makes the result
    independent of arrival order with three or more devices: an entry that lost to
    one rival may still supersede another (a deletion that descends from B's copy
    but lost to C's concurrent one must still retire B's), and a rival kept only as
    "the loser" was forgotten when a third entry arrived.
    """

    def __init__(self) -> None:
        self._winners: dict[str, LogEntry] = {}
        #: the heads other than the winner, only for paths that have any
        self._rivals: dict[str, tuple[LogEntry, ...]] = {}

    def apply(self, entry: LogEntry) -> Decision:
        """Fold one verified entry in (entries of one device in seq order)."""
        if type(entry) is not LogEntry:
            raise LocalProtocolError("FolderState folds LogEntry values")
        path = entry.path
        current = self._winners.get(path)
        if current is None:
            self._winners[path] = entry
            return Decision("wins", entry)
        heads = (current, *self._rivals.get(path, ()))
        if any(_supersedes(head, entry) for head in heads):
            return Decision("stale", current)
        kept = [head for head in heads if not _supersedes(entry, head)]
        ranked = sorted([*kept, entry], key=_conflict_rank, reverse=True)
        winner = ranked[0]
        self._winners[path] = winner
        if len(ranked) > 1:
            self._rivals[path] = tuple(ranked[1:])
        else:
            self._rivals.pop(path, None)
        if not kept:
            return Decision("wins", entry)
        if winner is entry:
            rival = ranked[1]
            if _same_content(entry, rival):
                # made twice, independently, but identical: nothing to keep
                return Decision("wins", entry)
            return Decision("conflict", entry, rival)
        if _same_content(entry, winner):
            return Decision("stale", winner)
        return Decision("conflict", winner, entry)

    def get(self, path: str) -> LogEntry | None:
        return self._winners.get(path)

    def losers(self, path: str) -> list[LogEntry]:
        """Live files at ``path`` that lost to the winner concurrently (best first):
        their content is kept as conflict copies."""
        winner = self._winners.get(path)
        if winner is None:
            return []
        return [r for r in self._rivals.get(path, ())
                if r.kind == "file" and not r.deleted and not _same_content(r, winner)]

    def loser(self, path: str) -> LogEntry | None:
        """The best-ranked of ``losers``, if any."""
        found = self.losers(path)
        return found[0] if found else None

    def covers(self, path: str, version: VersionVector) -> bool:
        """Whether some head at ``path`` descends from (or is) ``version``: content at
        that version was seen and replaced by the device that made the head."""
        winner = self._winners.get(path)
        if winner is None:
            return False
        return any(head.version.compare(version) in ("newer", "equal")
                   for head in (winner, *self._rivals.get(path, ())))

    def counter(self, path: str, device: bytes) -> int:
        """The highest counter of ``device`` in any head at ``path``: every entry that
        device made there is a head or superseded by one, so this is its latest."""
        winner = self._winners.get(path)
        if winner is None:
            return 0
        return max(head.version.get(device, 0)
                   for head in (winner, *self._rivals.get(path, ())))

    def __getitem__(self, path: str) -> LogEntry:
        return self._winners[path]

    def __contains__(self, path: object) -> bool:
        return path in self._winners

    def __iter__(self) -> Iterator[str]:
        return iter(self._winners)

    def __len__(self) -> int:
        return len(self._winners)


def conflict_name(path: str, mtime_ns: int, device_short: str, attempt: int = 1) -> str:
    """``dir/name.sync-conflict-YYYYMMDD-HHMMSS-SHORTID.ext`` for a conflict copy.

    The time is the losing version's mtime in UTC; the extension stays last so the
    copy opens with the same program.  A dotfile (``.bashrc``) or a name without a
    dot gets the marker at the end.  The stem is trimmed if the name would exceed
    NAME_MAX.  ``attempt`` 2, 3... appends ``-2``, ``-3`` to the short ID: the name
    to try when an earlier copy of another version already holds the first one.
    """
    if type(attempt) is not int or not 1 <= attempt <= 999:
        raise LocalProtocolError(f"conflict copy attempt {attempt!r} out of range")
    parts = validate_relpath(path)
    validate_name(device_short)
    if not device_short.isascii() or not device_short.isalnum():
        raise LocalProtocolError(f"not a short device ID: {device_short!r}")
    seconds = mtime_ns // 1_000_000_000  # floor: a pre-1970 mtime stays in its second
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y%m%d-%H%M%S")
    name = parts[-1]
    dot = name.rfind(".")
    has_ext = 0 < dot < len(name) - 1 and len(name[dot:].encode()) <= MAX_EXTENSION_BYTES
    stem, ext = (name[:dot], name[dot:]) if has_ext else (name, "")
    serial = f"-{attempt}" if attempt > 1 else ""
    suffix = f"{CONFLICT_MARKER}{stamp}-{device_short}{serial}{ext}"
    room = MAX_NAME_BYTES - len(suffix.encode())
    # trim on a character boundary: drop the partial UTF-8 sequence at the cut
    stem = stem.encode()[:room].decode("utf-8", errors="ignore")
    return posixpath.join(*parts[:-1], stem + suffix)


# -- planning ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalFileInfo:
    """What the local index records for a path on disk (kept current by the scanner).

    ``version`` is the version the local content corresponds to: the one it was
    fetched at, or the one our own log gave it when it changed here.
    """

    kind: EntryKind
    object_id: str | None
    size: int
    mtime_ns: int
    mode: int
    version: VersionVector
    link_target: str | None = None


@dataclass(frozen=True, slots=True)
class Fetch:
    """Make ``path`` a file with ``entry``'s content and mode (reusing local chunks)."""

    path: str
    entry: LogEntry


@dataclass(frozen=True, slots=True)
class Delete:
    path: str


@dataclass(frozen=True, slots=True)
class MakeDir:
    path: str
    entry: LogEntry


@dataclass(frozen=True, slots=True)
class MakeLink:
    path: str
    entry: LogEntry


@dataclass(frozen=True, slots=True)
class KeepConflict:
    """Before replacing ``path``, keep its local content (``loser``'s) as a copy.

    The copy goes to ``conflict_name(path, loser.mtime_ns, short ID of loser.device)``.
    """

    path: str
    loser: LogEntry


@dataclass(frozen=True, slots=True)
class Adopt:
    """The disk already holds ``path`` as the merged state has it, but the local index
    knows an older or other version: record ``version`` (ours merged with the
    winner's).  Otherwise a later local change or deletion would be made against the
    old version, look concurrent to the winner and lose (a deletion always does)."""

    path: str
    version: VersionVector


@dataclass(frozen=True, slots=True)
class Nothing:
    """``path`` needs no work; ``reason`` says why (for reporters and debugging)."""

    path: str
    reason: str


Action = Fetch | Delete | MakeDir | MakeLink | KeepConflict | Adopt | Nothing


def conflict_path_for(path: str, loser: LogEntry, attempt: int = 1) -> str:
    return conflict_name(path, loser.mtime_ns, DeviceId(loser.device).short, attempt)


def _matches(local: LocalFileInfo, entry: LogEntry) -> bool:
    return (local.kind, local.object_id, local.link_target, local.mode) == (
        entry.kind, entry.object_id, entry.link_target, entry.mode,
    )


def _make(entry: LogEntry) -> Action:
    if entry.kind == "dir":
        return MakeDir(entry.path, entry)
    if entry.kind == "link":
        return MakeLink(entry.path, entry)
    return Fetch(entry.path, entry)


def _blocked_by_link(
    path: str, local: dict[str, LocalFileInfo], merged: FolderState
) -> str | None:
    # Writing a/b when a is (or is about to become) a symlink would write wherever
    # the link points, possibly outside the folder: refuse the whole subtree.
    parts = path.split("/")
    for depth in range(1, len(parts)):
        ancestor = "/".join(parts[:depth])
        here = local.get(ancestor)
        winner = merged.get(ancestor)
        if (here is not None and here.kind != "dir") or (
            winner is not None and not winner.deleted and winner.kind != "dir"
        ):
            return ancestor
    return None


def _live_directories(merged: FolderState) -> set[str]:
    """Every directory that holds a live entry in the merged state (its ancestors)."""
    live: set[str] = set()
    for path in merged:
        if merged[path].deleted:
            continue
        parent = posixpath.dirname(path)
        while parent and parent not in live:
            live.add(parent)
            parent = posixpath.dirname(parent)
    return live


def _plan_path(
    path: str,
    here: LocalFileInfo | None,
    winner: LogEntry | None,
    merged: FolderState,
    receive_only: bool,
    live_dirs: set[str],
) -> list[Action]:
    if winner is None:
        return [Nothing(path, "only here: the scanner records it")]
    if winner.deleted:
        if here is None:
            return [Nothing(path, "deleted everywhere")]
        if here.kind == "dir":
            if path in live_dirs:
                # Deleted on one device while another put something inside: the entries
                # inside win (a change beats a deletion), so their directory stays.
                return [Nothing(path, "deleted, but entries inside are live")]
            # A directory holds nothing of its own, and a change to it logged here
            # would have beaten the deletion: whatever our version says (a deletion
            # of ours that lost the tie, or none), nothing is lost by deleting it.
            return [Delete(path)]
        # Every head is a deletion here (a live head would have won).  What is here
        # goes if any of them descends from it: a device saw it, then deleted it.
        if receive_only or merged.covers(path, here.version):
            return [Delete(path)]
        return [Nothing(path, "changed here since the deletion")]
    if here is None:
        return [_make(winner)]
    if _matches(here, winner):
        adopted = here.version.merge(winner.version)
        if adopted != here.version:
            return [Adopt(path, adopted)]
        return [Nothing(path, "up to date")]
    if receive_only:
        # local edits are not ours to publish or keep: the folder mirrors the others
        return [_make(winner)]
    relation = here.version.compare(winner.version)
    if relation == "older":
        return [_make(winner)]
    if relation == "concurrent":
        for loser in merged.losers(path):
            if loser.object_id == here.object_id:
                return [KeepConflict(path, loser), _make(winner)]
        if merged.covers(path, here.version):
            # what is here was seen and replaced by the device of a losing head (its
            # content is that head's, or a copy of it, not ours to keep)
            return [_make(winner)]
        return [Nothing(path, "changed here concurrently; not yet in the fold")]
    # "equal" with other content: an edit the scanner has not recorded yet;
    # "newer": our own change leads and the others will fetch it
    return [Nothing(path, f"local version is {relation}")]


_ORDER: Final = {KeepConflict: 0, MakeDir: 1, Fetch: 2, MakeLink: 2, Adopt: 3, Nothing: 3,
                 Delete: 4}


def _action_key(action: Action) -> tuple[int, int, str]:
    depth = action.path.count("/")
    # parents before children when creating, children before parents when deleting
    return (_ORDER[type(action)], -depth if isinstance(action, Delete) else depth, action.path)


def plan(
    local: dict[str, LocalFileInfo], merged: FolderState, receive_only: bool
) -> list[Action]:
    """What to do so the disk matches ``merged``: one or more actions per path.

    Order: conflict copies first (before anything overwrites them), then
    directories parents-first, files and links, and deletions children-first.
    """
    actions: list[Action] = []
    live_dirs = _live_directories(merged)
    for path in sorted(local.keys() | set(merged)):
        blocker = _blocked_by_link(path, local, merged)
        winner = merged.get(path)
        if blocker is not None and winner is not None:
            actions.append(Nothing(path, f"refused: {blocker!r} is not a directory"))
            continue
        actions.extend(_plan_path(path, local.get(path), winner, merged, receive_only,
                                  live_dirs))
    actions.sort(key=_action_key)
    return actions
