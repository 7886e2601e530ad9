"""Shared pieces of the fault-injection suite: replayable randomness, kills with a
record of what they hit, and checks that a tree never holds bytes nobody wrote.

Every scenario draws its random choices from one ``random.Random`` seeded by
``fault_rng``: the seed is printed, and ``DIZZY_FAULT_SEED=<seed>`` replays a run.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from tests.multi.folder_helpers import tree_snapshot
from tests.multi.test_pairing_loopback import Node

MB = 1024 * 1024


def fault_rng(scenario: str) -> random.Random:
    """A seeded generator; the seed is printed so a failing run can be replayed."""
    raw = os.environ.get("DIZZY_FAULT_SEED")
    seed = int(raw) if raw else random.SystemRandom().randrange(2**32)
    print(f"\n{scenario}: seed {seed} (replay with DIZZY_FAULT_SEED={seed})")
    return random.Random(f"{scenario}:{seed}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MB):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class History:
    """Every content each path ever had on the writing side (sha256 of the bytes).

    A receiver's file under a final name must equal one of them: anything else is a
    torn or corrupted write.
    """

    versions: dict[str, set[str]] = field(default_factory=dict)

    def record(self, rel: str, data_digest: str) -> None:
        self.versions.setdefault(rel, set()).add(data_digest)

    def record_tree(self, root: Path) -> None:
        for rel, (kind, _mode, digest) in tree_snapshot(root).items():
            if kind == "file" and digest is not None:
                self.record(rel, digest)

    def foreign_files(self, root: Path) -> list[str]:
        """Files under ``root`` (temp files aside) whose bytes no version ever had."""
        bad = []
        try:
            snap = tree_snapshot(root)
        except FileNotFoundError:
            snap = tree_snapshot(root)  # one retry: a rename raced the walk
        for rel, (kind, _mode, digest) in snap.items():
            name = rel.rsplit("/", 1)[-1]
            if kind != "file" or (name.startswith(".") and name.endswith(".tmp")):
                continue
            if digest not in self.versions.get(rel, set()):
                bad.append(rel)
        return bad


@dataclass
class KillRecord:
    """What the kills of one scenario hit."""

    kills: int = 0
    by_victim: dict[str, int] = field(default_factory=dict)
    #: kills that found daemon temp files (a file being written) in the folder
    mid_file: int = 0
    restarts_seconds: float = 0.0

    def note(self, victim: str, temps: int) -> None:
        self.kills += 1
        self.by_victim[victim] = self.by_victim.get(victim, 0) + 1
        if temps:
            self.mid_file += 1


def leftover_partials(node: Node) -> list[str]:
    """Files in the daemon's partial-transfer and temp directories."""
    out = []
    for sub in ("partial", "tmp"):
        directory = node.home / sub
        if directory.is_dir():
            out += [f"{sub}/{p.name}" for p in directory.iterdir()]
    return out
