"""The soak's ledger: every version the workloads wrote or destroyed, and the check of
the final tree against it.

Content, not paths, is what is tracked.  A file's *key* is ``f:`` + the BLAKE3 of its
bytes, a symlink's is ``l:`` + its target; every write makes bytes no other write
makes (a unique header, random data), so a key names one written version.  Renames
move keys between paths and create none, and conflict copies carry the key of the
version they keep, which is why paths are left out of the invariant: with concurrent
renames of files and of their directories on three hosts, "which path should hold
what" has no single answer, but "which versions must still exist" does.

Each write takes a sequence number *before* it touches the disk; each destruction
takes one *after* (a delete moves the victim into a trash directory first, so the
exact bytes destroyed are read back; an in-place edit reads the bytes it replaces
through the same descriptor).  Invariants checked on the converged tree:

1. **Nothing invented**: every file and link in the final tree holds a key some
   workload wrote (no corruption, no half-written or foreign version).
2. **Nothing lost that was not deleted**: a key whose last write is later than its
   last destruction *anywhere* must be somewhere in the final tree (at any path,
   possibly as a ``*.sync-conflict-*`` copy).  This is sound: for a version to vanish
   legitimately, some host must have deleted or edited a copy of it, and any copy
   descends from a write of it, so that destruction was recorded after that write.
   (A destruction recorded earlier than a rewrite of the same bytes excuses nothing.)
   It is not complete: losing one of two copies of the same version goes unseen.

Writes into a file that sync replaced while the workload held it open (the
workload's descriptor ends with no link left) are recorded as *orphaned*: those
bytes never reached a path, so they are excused, and counted separately.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

Key = str


def file_key(digest: str) -> Key:
    return f"f:{digest}"


def link_key(target: str) -> Key:
    return f"l:{target}"


@dataclass
class Verdict:
    """What the final tree says about the ledger."""

    files_checked: int = 0
    links_checked: int = 0
    bytes_checked: int = 0
    conflict_copies: int = 0
    #: keys that had to survive and are nowhere in the tree
    lost: list[Key] = field(default_factory=list)
    #: paths holding a version no workload ever wrote
    unknown: list[tuple[str, Key]] = field(default_factory=list)
    must_survive: int = 0

    @property
    def ok(self) -> bool:
        return not self.lost and not self.unknown


class Ledger:
    """Thread-safe record of every workload operation, kept in memory and as JSON lines."""

    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._file: IO[str] | None = open(path, "a") if path is not None else None  # noqa: SIM115
        self.last_write: dict[Key, int] = {}
        self.last_kill: dict[Key, int] = {}
        self.ops: dict[str, Counter[str]] = {}
        self.orphaned = 0
        self.twins = 0

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def next_seq(self) -> int:
        """A sequence number: take it before a write, after a destruction."""
        with self._lock:
            self._seq += 1
            return self._seq

    def record(self, host: str, op: str, *, wrote: Iterable[tuple[Key, int]] = (),
               killed: Iterable[Key] = (), orphaned: bool = False, **details: Any) -> None:
        """One finished operation: the keys it wrote (with the sequence numbers taken
        before writing) and the keys it destroyed (numbered now, after the fact)."""
        wrote, killed = list(wrote), list(killed)
        with self._lock:
            self.ops.setdefault(host, Counter())[op] += 1
            for key, seq in wrote:
                self.last_write[key] = max(self.last_write.get(key, 0), seq)
            kill_seq = 0
            if killed or orphaned:
                self._seq += 1
                kill_seq = self._seq
            for key in killed:
                self.last_kill[key] = kill_seq
            if orphaned:
                # the bytes went into an inode sync had already replaced: never on a path
                self.orphaned += 1
                for key, _ in wrote:
                    self.last_kill[key] = kill_seq
            if self._file is not None:
                line = {"t": round(time.time(), 4), "host": host, "op": op,
                        "wrote": [k for k, _ in wrote], "killed": killed, **details}
                if orphaned:
                    line["orphaned"] = True
                self._file.write(json.dumps(line) + "\n")

    def must_survive(self) -> set[Key]:
        with self._lock:
            return {k for k, w in self.last_write.items() if w > self.last_kill.get(k, 0)}

    def known(self, key: Key) -> bool:
        with self._lock:
            return key in self.last_write

    def check(self, tree: Mapping[str, tuple[str, int, str | None, int]],
              conflict_marker: str) -> Verdict:
        """Check a converged tree: relpath -> (kind, mode, digest | target, size)."""
        verdict = Verdict()
        present: set[Key] = set()
        for path, (kind, _mode, value, size) in sorted(tree.items()):
            if kind == "dir" or value is None:
                continue
            key = file_key(value) if kind == "file" else link_key(value)
            if kind == "file":
                verdict.files_checked += 1
                verdict.bytes_checked += size
            else:
                verdict.links_checked += 1
            if conflict_marker in path.rsplit("/", 1)[-1]:
                verdict.conflict_copies += 1
            present.add(key)
            if not self.known(key):
                verdict.unknown.append((path, key))
        survivors = self.must_survive()
        verdict.must_survive = len(survivors)
        verdict.lost = sorted(survivors - present)
        return verdict
