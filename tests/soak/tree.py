"""Snapshots of a folder tree for the soak's convergence check, with a hash cache.

A snapshot maps each relative path to (kind, permission bits, BLAKE3 hex of a file's
bytes | a link's target | None for a directory, size).  Nothing is left out: a daemon
temp file or a stray conflict copy on one host is a difference like any other.  While
waiting for convergence the trees are snapshotted every second; the cache (keyed by
device, inode, size, mtime and ctime) keeps that from rehashing unchanged files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

import blake3

Entry = tuple[str, int, str | None, int]
Snapshot = dict[str, Entry]

_CacheKey = tuple[int, int, int, int, int]


class TreeHasher:
    def __init__(self) -> None:
        self._cache: dict[_CacheKey, str] = {}
        self.hashed_bytes = 0

    def digest(self, path: str, st: os.stat_result) -> str:
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        found = self._cache.get(key)
        if found is not None:
            return found
        hasher = blake3.blake3()
        with open(path, "rb") as f:
            while block := f.read(4 * 1024 * 1024):
                hasher.update(block)
        after = os.stat(path, follow_symlinks=False)
        value = hasher.hexdigest()
        self.hashed_bytes += st.st_size
        if (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns) == key[1:]:
            self._cache[key] = value  # stable while read: safe to reuse
        return value

    def snapshot(self, root: Path) -> Snapshot:
        """The whole tree under ``root``; raises FileNotFoundError if it moves meanwhile."""
        out: Snapshot = {}
        stack = [(os.fspath(root), "")]
        while stack:
            directory, prefix = stack.pop()
            with os.scandir(directory) as listing:
                entries = list(listing)
            for entry in entries:
                rel = prefix + entry.name
                st = entry.stat(follow_symlinks=False)
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISLNK(st.st_mode):
                    out[rel] = ("link", 0, os.readlink(entry.path), 0)
                elif stat.S_ISDIR(st.st_mode):
                    out[rel] = ("dir", mode, None, 0)
                    stack.append((entry.path, rel + "/"))
                elif stat.S_ISREG(st.st_mode):
                    out[rel] = ("file", mode, self.digest(entry.path, st), st.st_size)
                else:
                    out[rel] = ("other", mode, None, 0)
        return out


def differences(snaps: Sequence[Mapping[str, Entry]]) -> dict[str, list[Entry | None]]:
    """path -> each snapshot's entry, for every path where they disagree."""
    paths: set[str] = set()
    for snap in snaps:
        paths.update(snap)
    out = {}
    for path in sorted(paths):
        entries = [snap.get(path) for snap in snaps]
        if any(e != entries[0] for e in entries[1:]):
            out[path] = entries
    return out
