"""The folder scanner on real files in a temp directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from dizzy.daemon.scanner import (
    FolderMissing,
    HashFile,
    ScannedFile,
    ScanResult,
    hash_fd,
    scan,
)
from dizzy.protocol.errors import DizzyError
from dizzy.protocol.ignore import NO_RULES, IgnoreRules

# An mtime well in the past: files written by a test and scanned at once are "racy"
# (a same-tick rewrite could hide), and the scanner rightly hashes those again; the
# tests that check "nothing is hashed twice" set their files' mtimes here first.
PAST_NS = 1_600_000_000 * 10**9


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def write(root: Path, relpath: str, data: bytes | str, *, settle: bool = True) -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if settle:
        os.utime(path, ns=(PAST_NS, PAST_NS))
    return path


def rescan(root: Path, before: ScanResult, rules: IgnoreRules = NO_RULES) -> ScanResult:
    return scan(root, before.files, rules)


def test_first_scan_sees_files_dirs_and_empty_dirs(tmp_path: Path) -> None:
    write(tmp_path, "a.txt", "alpha")
    write(tmp_path, "sub/b.bin", b"\x00" * 1000)
    (tmp_path / "empty").mkdir()
    result = scan(tmp_path, {}, NO_RULES)
    assert sorted(result.files) == ["a.txt", "empty", "sub", "sub/b.bin"]
    assert result.added == ["a.txt", "empty", "sub", "sub/b.bin"]
    assert result.changed == result.removed == result.unstable == []
    assert result.hashed_files == 2
    assert result.hashed_bytes == 1005
    a = result.files["a.txt"]
    st = os.lstat(tmp_path / "a.txt")
    assert a == ScannedFile(
        "a.txt", "file", 5, PAST_NS, st.st_ino, st.st_mode & 0o7777, b3(b"alpha"), None
    )
    assert result.files["empty"].kind == "dir"
    assert result.files["empty"].object_id is None


def test_ids_equal_b3sum(tmp_path: Path) -> None:
    sizes = [0, 1, 1023, 1024, 1025, 64 * 1024, 1024 * 1024, 1024 * 1024 + 1, 5_000_000]
    for size in sizes:
        write(tmp_path, f"f{size}", os.urandom(size))
    result = scan(tmp_path, {}, NO_RULES)
    for size in sizes:
        data = (tmp_path / f"f{size}").read_bytes()
        assert result.files[f"f{size}"].object_id == b3(data)
    if shutil.which("b3sum"):
        out = subprocess.run(
            ["b3sum", "--no-names", str(tmp_path / "f5000000")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert result.files["f5000000"].object_id == out.stdout.strip()


def test_hash_fd_reads_past_a_stale_size(tmp_path: Path) -> None:
    path = write(tmp_path, "grown", b"x" * 5000)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert hash_fd(fd, 10) == b3(b"x" * 5000)
        assert hash_fd(fd, 5000) == b3(b"x" * 5000)
    finally:
        os.close(fd)


def test_rescan_with_nothing_changed_hashes_nothing(tmp_path: Path) -> None:
    for i in range(50):
        write(tmp_path, f"d{i % 5}/f{i}", f"content {i}")
    (tmp_path / "empty").mkdir()
    first = scan(tmp_path, {}, NO_RULES)
    second = rescan(tmp_path, first)
    assert second.hashed_bytes == 0
    assert second.hashed_files == 0
    assert second.added == second.changed == second.removed == []
    assert second.files == first.files
    # unchanged files keep the very same entry: nothing was rebuilt
    assert second.files["d0/f0"] is first.files["d0/f0"]


def test_edit_is_a_change(tmp_path: Path) -> None:
    write(tmp_path, "a.txt", "one")
    write(tmp_path, "b.txt", "same")
    first = scan(tmp_path, {}, NO_RULES)
    write(tmp_path, "a.txt", "two", settle=False)
    second = rescan(tmp_path, first)
    assert second.changed == ["a.txt"]
    assert second.added == second.removed == []
    assert second.files["a.txt"].object_id == b3(b"two")
    assert second.hashed_bytes == 3


def test_same_size_same_mtime_rewrite_right_after_a_scan_is_seen(tmp_path: Path) -> None:
    # The racy case: a rewrite within the same timestamp tick as the scan that hashed
    # the file leaves size and mtime unchanged.
    path = write(tmp_path, "racy", "aaaa", settle=False)
    first = scan(tmp_path, {}, NO_RULES)
    assert first.files["racy"].inode == 0  # marked: do not trust (size, mtime) next time
    mtime = os.lstat(path).st_mtime_ns
    path.write_bytes(b"bbbb")
    os.utime(path, ns=(mtime, mtime))
    second = rescan(tmp_path, first)
    assert second.changed == ["racy"]
    assert second.files["racy"].object_id == b3(b"bbbb")


def test_a_racy_file_hashed_again_unchanged_is_refreshed_not_changed(tmp_path: Path) -> None:
    path = write(tmp_path, "racy", "aaaa", settle=False)
    first = scan(tmp_path, {}, NO_RULES)
    assert first.files["racy"].inode == 0
    os.utime(path, ns=(first.files["racy"].mtime_ns, first.files["racy"].mtime_ns))
    time.sleep(0.06)  # past the racy window (RACY_NS), so the next hash is trusted
    second = rescan(tmp_path, first)
    assert second.hashed_files == 1
    assert second.changed == []
    assert second.refreshed == ["racy"]
    assert second.files["racy"].inode == os.lstat(path).st_ino


def test_touch_and_chmod_are_changes(tmp_path: Path) -> None:
    path = write(tmp_path, "a", "x")
    write(tmp_path, "b", "y")
    first = scan(tmp_path, {}, NO_RULES)
    os.utime(path, ns=(PAST_NS + 10**9, PAST_NS + 10**9))
    os.chmod(tmp_path / "b", 0o600)
    second = rescan(tmp_path, first)
    assert second.changed == ["a", "b"]
    assert second.files["b"].mode == 0o600
    # a chmod alone needs no hashing; the touched file is read again
    assert second.hashed_files == 1


def test_delete(tmp_path: Path) -> None:
    write(tmp_path, "keep", "k")
    write(tmp_path, "gone", "g")
    write(tmp_path, "dir/inner", "i")
    first = scan(tmp_path, {}, NO_RULES)
    (tmp_path / "gone").unlink()
    shutil.rmtree(tmp_path / "dir")
    second = rescan(tmp_path, first)
    assert second.removed == ["dir", "dir/inner", "gone"]
    assert sorted(second.files) == ["keep"]


def test_rename_reuses_the_id_without_hashing(tmp_path: Path) -> None:
    write(tmp_path, "old/name.txt", "contents")
    first = scan(tmp_path, {}, NO_RULES)
    (tmp_path / "new").mkdir()
    os.rename(tmp_path / "old/name.txt", tmp_path / "new/name2.txt")
    second = rescan(tmp_path, first)
    assert second.removed == ["old/name.txt"]
    assert second.added == ["new", "new/name2.txt"]
    assert second.files["new/name2.txt"].object_id == b3(b"contents")
    assert second.hashed_bytes == 0


def test_new_empty_dir(tmp_path: Path) -> None:
    write(tmp_path, "a", "a")
    first = scan(tmp_path, {}, NO_RULES)
    (tmp_path / "x/y").mkdir(parents=True)
    second = rescan(tmp_path, first)
    assert second.added == ["x", "x/y"]
    assert second.files["x/y"].kind == "dir"
    assert second.changed == []  # the parent's mtime moved, which is not news


def test_symlinks_are_recorded_and_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside, "secret.txt", "do not read")
    root = tmp_path / "root"
    write(root, "real.txt", "real")
    (root / "inside").symlink_to("real.txt")
    (root / "escape").symlink_to(outside / "secret.txt")
    (root / "escape_dir").symlink_to(outside, target_is_directory=True)
    (root / "dangling").symlink_to("nowhere")
    result = scan(root, {}, NO_RULES)
    assert sorted(result.files) == ["dangling", "escape", "escape_dir", "inside", "real.txt"]
    for name, target in [
        ("inside", "real.txt"),
        ("escape", str(outside / "secret.txt")),
        ("escape_dir", str(outside)),
        ("dangling", "nowhere"),
    ]:
        entry = result.files[name]
        assert (entry.kind, entry.link_target, entry.object_id) == ("link", target, None)
    assert result.hashed_bytes == 4  # only real.txt was read
    assert not any(path.startswith("escape_dir/") for path in result.files)
    # a link retargeted is a change
    (root / "inside").unlink()
    (root / "inside").symlink_to("other.txt")
    again = rescan(root, result)
    assert again.changed == ["inside"]
    assert again.files["inside"].link_target == "other.txt"


def test_a_file_replaced_by_a_symlink_is_a_change(tmp_path: Path) -> None:
    write(tmp_path, "x", "file")
    first = scan(tmp_path, {}, NO_RULES)
    (tmp_path / "x").unlink()
    (tmp_path / "x").symlink_to("/etc/passwd")
    second = rescan(tmp_path, first)
    assert second.changed == ["x"]
    assert second.files["x"].kind == "link"


def test_ignore_rules_with_negation_and_dirs(tmp_path: Path) -> None:
    write(tmp_path, ".dizzyignore", "*.log\n!keep.log\nbuild/\n/top.txt\n")
    write(tmp_path, "a.log", "x")
    write(tmp_path, "keep.log", "x")
    write(tmp_path, "sub/b.log", "x")
    write(tmp_path, "sub/keep.log", "x")
    write(tmp_path, "build/out.o", "x")
    write(tmp_path, "sub/build/out.o", "x")
    write(tmp_path, "build.txt/file", "x")  # "build/" is for directories named build
    write(tmp_path, "top.txt", "x")
    write(tmp_path, "sub/top.txt", "x")
    (tmp_path / "notadir").mkdir()
    write(tmp_path, "notadir/build", "a file named build is not ignored by build/")
    result = scan(tmp_path, {}, NO_RULES)
    assert sorted(result.files) == [
        ".dizzyignore",
        "build.txt",
        "build.txt/file",
        "keep.log",
        "notadir",
        "notadir/build",
        "sub",
        "sub/keep.log",
        "sub/top.txt",
    ]


def test_ignored_dirs_are_not_entered(tmp_path: Path) -> None:
    write(tmp_path, ".dizzyignore", "node_modules/\n")
    write(tmp_path, "node_modules/x/y.js", "x")
    os.mkfifo(tmp_path / "node_modules/x/pipe")  # entering would report it as skipped
    result = scan(tmp_path, {}, NO_RULES)
    assert sorted(result.files) == [".dizzyignore"]
    assert result.skipped == []


def test_callers_rules_and_the_ignore_file_combine(tmp_path: Path) -> None:
    write(tmp_path, ".dizzyignore", "!keep.tmp\n")
    write(tmp_path, "x.tmp", "x")
    write(tmp_path, "keep.tmp", "x")
    result = scan(tmp_path, {}, IgnoreRules.parse("*.tmp"))
    assert sorted(result.files) == [".dizzyignore", "keep.tmp"]


def test_the_ignore_file_is_read_again_on_every_scan(tmp_path: Path) -> None:
    write(tmp_path, "a.log", "x")
    write(tmp_path, "b.txt", "x")
    first = scan(tmp_path, {}, NO_RULES)
    write(tmp_path, ".dizzyignore", "*.log\n")
    second = rescan(tmp_path, first)
    # newly ignored is not a deletion: peers must keep their copies
    assert second.removed == []
    assert second.now_ignored == ["a.log"]
    assert second.added == [".dizzyignore"]
    (tmp_path / ".dizzyignore").unlink()
    third = rescan(tmp_path, second)
    assert third.added == ["a.log"]
    assert third.removed == [".dizzyignore"]


def test_the_ignore_file_itself_syncs_and_temp_files_never_do(tmp_path: Path) -> None:
    write(tmp_path, ".dizzyignore", ".*\n")
    write(tmp_path, ".hidden", "x")
    write(tmp_path, ".a.txt.dizzy-0badf00d.tmp", "half written")
    result = scan(tmp_path, {}, NO_RULES)
    assert sorted(result.files) == [".dizzyignore"]
    (tmp_path / ".dizzyignore").write_text("")
    result = scan(tmp_path, {}, NO_RULES)
    assert sorted(result.files) == [".dizzyignore", ".hidden"]


def test_a_symlinked_ignore_file_is_not_followed(tmp_path: Path) -> None:
    outside = write(tmp_path, "outside-rules", "*\n")
    root = tmp_path / "root"
    write(root, "a", "a")
    (root / ".dizzyignore").symlink_to(outside)
    result = scan(root, {}, NO_RULES)
    assert sorted(result.files) == [".dizzyignore", "a"]


def test_missing_root_raises_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(FolderMissing) as info:
        scan(tmp_path / "nope", {}, NO_RULES)
    assert isinstance(info.value, DizzyError)
    write(tmp_path, "file", "x")
    with pytest.raises(FolderMissing):
        scan(tmp_path / "file", {}, NO_RULES)


def test_a_root_that_vanishes_never_reads_as_everything_deleted(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root, "a", "a")
    first = scan(root, {}, NO_RULES)
    shutil.rmtree(root)
    with pytest.raises(FolderMissing):
        rescan(root, first)
    # an empty directory put back in its place is a real (if sad) state, not an error
    root.mkdir()
    assert rescan(root, first).removed == ["a"]


def test_a_root_replaced_during_the_scan_raises(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root, "a", "a")

    def swap_root(fd: int, size: int) -> str:
        os.rename(root, tmp_path / "elsewhere")
        root.mkdir()
        return hash_fd(fd, size)

    with pytest.raises(FolderMissing):
        scan(root, {}, NO_RULES, hash_file=swap_root)


def test_a_file_modified_while_hashed_is_unstable(tmp_path: Path) -> None:
    path = write(tmp_path, "busy", "first version")
    write(tmp_path, "calm", "calm")

    def modify_while_hashing(fd: int, size: int) -> str:
        digest = hash_fd(fd, size)
        if os.lstat(path).st_ino == os.fstat(fd).st_ino:
            with path.open("ab") as f:
                f.write(b" and more")
        return digest

    first = scan(tmp_path, {}, NO_RULES, hash_file=modify_while_hashing)
    assert first.unstable == ["busy"]
    assert "busy" not in first.files
    assert "busy" not in first.added
    assert first.added == ["calm"]


def test_an_unstable_known_file_keeps_its_previous_entry(tmp_path: Path) -> None:
    path = write(tmp_path, "busy", "v1")
    first = scan(tmp_path, {}, NO_RULES)
    write(tmp_path, "busy", "v2", settle=False)

    def modify_while_hashing(fd: int, size: int) -> str:
        path.write_bytes(b"v3, longer")
        return hash_fd(fd, size)

    second = scan(tmp_path, first.files, NO_RULES, hash_file=modify_while_hashing)
    assert second.unstable == ["busy"]
    assert second.changed == second.removed == []
    assert second.files["busy"] is first.files["busy"]
    third = rescan(tmp_path, second)
    assert third.changed == ["busy"]
    assert third.files["busy"].object_id == b3(b"v3, longer")


def test_bad_names_are_skipped_with_a_reason(tmp_path: Path) -> None:
    write(tmp_path, "good", "g")
    raw = os.fsencode(tmp_path) + b"/bad\xff\xfename"
    fd = os.open(raw, os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    write(tmp_path, "back\\slash", "b")
    result = scan(tmp_path, {}, NO_RULES)
    assert sorted(result.files) == ["good"]
    reasons = {s.path: s.reason for s in result.skipped}
    assert set(reasons) == {"bad\\xff\\xfename", "back\\slash"}
    assert "Unicode" in reasons["bad\\xff\\xfename"]
    assert "'\\\\'" in reasons["back\\slash"]


def test_special_files_are_skipped(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    result = scan(tmp_path, {}, NO_RULES)
    assert result.files == {}
    assert [s.path for s in result.skipped] == ["pipe"]


def test_a_read_error_keeps_what_was_known(tmp_path: Path) -> None:
    write(tmp_path, "a", "a")
    first = scan(tmp_path, {}, NO_RULES)
    write(tmp_path, "a", "b", settle=False)

    def failing(fd: int, size: int) -> str:
        raise PermissionError(13, "Permission denied")

    second = scan(tmp_path, first.files, NO_RULES, hash_file=failing)
    assert second.files["a"] is first.files["a"]
    assert second.changed == second.removed == []
    assert [(s.path, s.reason) for s in second.skipped] == [("a", "cannot read: Permission denied")]


def _swap_the_other_dir(root: Path, swap: Callable[[Path], None]) -> HashFile:
    """A hook that, while "a/f" or "b/f" is hashed, swaps the other, unlisted dir."""

    def hook(fd: int, size: int) -> str:
        hashing = os.fstat(fd).st_ino
        for mine, other in (("a", "b"), ("b", "a")):
            if os.lstat(root / mine / "f").st_ino == hashing and (root / other).is_dir():
                swap(root / other)
                break
        return hash_fd(fd, size)

    return hook


def _scanned_twice(root: Path, swap: Callable[[Path], None]) -> tuple[ScanResult, ScanResult]:
    write(root, "a/f", "a")
    write(root, "b/f", "b")
    first = scan(root, {}, NO_RULES)
    write(root, "a/f", "a2", settle=False)
    write(root, "b/f", "b2", settle=False)
    return first, scan(root, first.files, NO_RULES, hash_file=_swap_the_other_dir(root, swap))


def test_a_directory_that_cannot_be_listed_keeps_what_was_known(tmp_path: Path) -> None:
    def to_file(path: Path) -> None:
        shutil.rmtree(path)
        path.write_bytes(b"now a file")

    first, second = _scanned_twice(tmp_path, to_file)
    (swapped,) = [s.path for s in second.skipped]
    assert second.removed == []
    assert second.files[f"{swapped}/f"] is first.files[f"{swapped}/f"]
    assert second.changed == ["ab".replace(swapped, "") + "/f"]


def test_a_directory_swapped_for_a_symlink_mid_scan_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside, "f", "outside secret")
    write(outside, "other", "outside secret")
    root = tmp_path / "root"

    def to_symlink(path: Path) -> None:
        path.rename(tmp_path / "moved-away")
        path.symlink_to(outside, target_is_directory=True)

    _first, second = _scanned_twice(root, to_symlink)
    (swapped,) = [s.path for s in second.skipped]
    assert f"{swapped}/other" not in second.files
    assert all(f.object_id != b3(b"outside secret") for f in second.files.values())


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_unreadable_entries_keep_what_was_known(tmp_path: Path) -> None:
    write(tmp_path, "locked/inner", "i")
    write(tmp_path, "secret", "s")
    first = scan(tmp_path, {}, NO_RULES)
    os.chmod(tmp_path / "locked", 0)
    os.chmod(tmp_path / "secret", 0)
    write(tmp_path, "secret", "t")  # must be hashed again, and cannot be
    os.chmod(tmp_path / "secret", 0)
    try:
        second = rescan(tmp_path, first)
    finally:
        os.chmod(tmp_path / "locked", 0o755)
        os.chmod(tmp_path / "secret", 0o644)
    assert second.removed == []
    assert second.files["locked/inner"] is first.files["locked/inner"]
    assert second.files["secret"] is first.files["secret"]
    assert sorted(s.path for s in second.skipped) == ["locked", "secret"]


@pytest.mark.slow
def test_benchmark_20000_small_files(tmp_path: Path) -> None:
    count = 20_000
    payload = os.urandom(10 * 1024)
    for d in range(100):
        (tmp_path / f"d{d:03}").mkdir()
    for i in range(count):
        path = tmp_path / f"d{i % 100:03}" / f"f{i:05}"
        path.write_bytes(payload[: 1024 + i % 9216])
        os.utime(path, ns=(PAST_NS, PAST_NS))
    start = time.perf_counter()
    first = scan(tmp_path, {}, NO_RULES)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    second = rescan(tmp_path, first)
    rescan_s = time.perf_counter() - start
    print(f"\n{count} files: first scan {first_s:.2f} s, no-change rescan {rescan_s:.2f} s")
    assert len(first.files) == count + 100
    assert second.hashed_bytes == 0
    assert first_s < 60
    assert rescan_s < 10


def test_large_files_are_chunked_in_the_hashing_read(tmp_path: Path) -> None:
    from dizzy.protocol.chunking import CHUNK_MIN
    from dizzy.protocol.outboard import Outboard, outboard_of

    big = os.urandom(3 * CHUNK_MIN + 12345)
    (tmp_path / "big.bin").write_bytes(big)
    (tmp_path / "small.bin").write_bytes(os.urandom(CHUNK_MIN))  # one chunk: no outboard
    result = scan(tmp_path, {})
    big_id = result.files["big.bin"].object_id
    assert big_id == blake3.blake3(big).hexdigest()
    assert set(result.outboards) == {big_id}
    decoded = Outboard.decode(result.outboards[big_id], expected_object_id=big_id)
    assert decoded == outboard_of(big)
    assert scan(tmp_path, {}, chunk_large=False).outboards == {}
