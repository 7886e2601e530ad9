"""The soak's own parts (scripts/soak): the ledger's invariant, and the workload
keeping an exact ledger when nothing else touches the folder."""

from __future__ import annotations

import random
from pathlib import Path

from tests.soak.ledger import Ledger, file_key, link_key
from tests.soak.monitor import slope_per_minute
from tests.soak.tree import TreeHasher, differences
from tests.soak.workload import HostWorkload, Limits, conflict_pair

MARK = ".sync-conflict-"


def test_a_version_must_survive_unless_destroyed_after_its_last_write() -> None:
    ledger = Ledger()
    kept, gone, rewritten, orphan = (file_key(c * 64) for c in "abcd")
    for key in (kept, gone, rewritten):
        ledger.record("h", "create", wrote=[(key, ledger.next_seq())])
    ledger.record("h", "delete-file", killed=[gone, rewritten])
    # the same bytes written again after their deletion must survive again
    ledger.record("h", "create", wrote=[(rewritten, ledger.next_seq())])
    ledger.record("h", "append", wrote=[(orphan, ledger.next_seq())], orphaned=True)
    assert ledger.must_survive() == {kept, rewritten}
    tree = {"a": ("file", 0o644, "a" * 64, 3), "x/b.sync-conflict-1-X": ("file", 0o644,
                                                                        "c" * 64, 5)}
    verdict = ledger.check(tree, MARK)
    assert verdict.ok and verdict.conflict_copies == 1 and verdict.bytes_checked == 8
    # a missing survivor is lost; bytes nobody wrote are reported with their path
    verdict = ledger.check({"a": ("file", 0o644, "a" * 64, 3),
                            "l": ("link", 0, "nowhere", 0)}, MARK)
    assert verdict.lost == [rewritten]
    assert verdict.unknown == [("l", link_key("nowhere"))]
    assert not verdict.ok


def test_workload_ledger_matches_an_untouched_folder(tmp_path: Path) -> None:
    """With no daemon, every version the ledger says must survive is in the tree and
    the tree holds nothing else: the ledger itself raises no false alarm."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        root.mkdir()
    works = [HostWorkload(r.name, r, tmp_path / "scratch", seed, ledger,
                          Limits(max_files=60, max_bytes=8 * 1024 * 1024))
             for seed, r in enumerate(roots)]
    rng = random.Random(7)
    done: set[str] = set()
    for i in range(600):
        done.add(works[i % 2].step())
        if i % 25 == 0:
            conflict_pair(works[0], works[1], rng)
    ledger.close()
    assert {"create", "append", "rename-dir", "delete-dir", "replace"} <= done, done
    hasher = TreeHasher()
    tree = {f"{r.name}/{p}": e for r in roots for p, e in hasher.snapshot(r).items()}
    verdict = ledger.check(tree, MARK)
    assert verdict.ok, (verdict.lost[:5], verdict.unknown[:5])
    assert verdict.files_checked > 10
    assert not list((tmp_path / "scratch").rglob("x-*"))  # trash emptied


def test_tree_differences_and_slope() -> None:
    one = {"a": ("file", 0o644, "1", 1), "d": ("dir", 0o755, None, 0)}
    two = {"a": ("file", 0o600, "1", 1), "d": ("dir", 0o755, None, 0), "e": ("dir", 0o755,
                                                                           None, 0)}
    assert differences([one, two]) == {"a": [one["a"], two["a"]], "e": [None, two["e"]]}
    assert slope_per_minute([(0.0, 10.0), (60.0, 20.0), (120.0, 30.0)]) == 10.0
    assert slope_per_minute([(5.0, 1.0)]) == 0.0
