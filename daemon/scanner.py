"""Scanning a shared folder: what is on disk now, and what changed since last time.

Blocking code: the caller runs ``scan`` in a worker thread.  A rescan of an unchanged
folder costs one ``lstat`` per entry and no reads: a regular file whose size, mtime and
inode equal the previous scan's keeps its previous object ID.  Everything else is
hashed with BLAKE3 (the ID is the lowercase hex digest, what ``b3sum`` prints).

Safety rules, because a scan result becomes deletions on every peer:

* a root that is missing, not a directory, unreadable, or replaced during the scan
  raises ``FolderMissing`` -- an unmounted disk must pause the folder, never read as
  "everything was deleted";
* a subdirectory that cannot be listed and a file that cannot be read keep their
  previous entries and are listed in ``skipped``;
* a file that changes while it is hashed is listed in ``unstable`` and keeps its
  previous entry (or stays out), so half-written content is never announced;
* symlinks are recorded as links with their target and never followed;
* paths the ignore rules newly exclude are listed in ``now_ignored``, not ``removed``:
  ignoring a file here must not delete it on the peers.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final, Literal

import blake3

from dizzy.protocol.chunking import CHUNK_MIN
from dizzy.protocol.errors import DizzyError, UnsafePath
from dizzy.protocol.ignore import IGNORE_FILE, NO_RULES, IgnoreRules
from dizzy.protocol.outboard import OutboardBuilder
from dizzy.protocol.paths import MAX_DEPTH, MAX_RELPATH_BYTES, validate_name

EntryKind = Literal["file", "dir", "link"]

#: Files up to this size are read whole and hashed with one call: cheaper than a
#: multithreaded hasher, whose thread pool only pays off on large inputs.
SMALL_FILE: Final = 1024 * 1024
#: Read size for large files: large enough that syscalls and Python overhead vanish
#: next to hashing, small enough to stay a modest, reused buffer.  Reads, not mmap: a
#: user's file can be truncated under us, and touching a mapped page past the new end
#: kills the whole daemon with SIGBUS.
READ_BLOCK: Final = 16 * 1024 * 1024
#: A file whose mtime is this close to the moment it was hashed (either side) could be
#: rewritten within the same timestamp tick without its (size, mtime) changing.  File system
#: clocks tick every few milliseconds (coarse kernel clock); 50 ms leaves a margin.
RACY_NS: Final = 50_000_000

# Opening a user's file must never block (a FIFO swapped in after the stat) nor follow
# a symlink swapped in (it could point outside the folder).
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
# Directories are opened, checked and listed through their descriptor, and their
# entries opened relative to it, so a path component swapped for a symlink mid-scan
# never leads outside the folder.  The root itself may be a symlink (user's choice).
_ROOT_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY
_DIR_FLAGS: Final = _ROOT_FLAGS | os.O_NOFOLLOW

HashFile = Callable[[int, int], str]
"""``hash_file(fd, size) -> object ID``: hash an open, read-only regular file."""


class FolderMissing(DizzyError):
    """The folder root is not there as a readable directory: pause, never delete."""

    exit_code = 4
    code = "folder-missing"


@dataclass(frozen=True, slots=True)
class ScannedFile:
    """One entry of a folder as the scanner saw it."""

    #: relative to the folder root, "/"-separated
    path: str
    kind: EntryKind
    #: bytes (files), length of the target (links), 0 (directories)
    size: int
    mtime_ns: int
    #: ``st_ino``, or 0 when the file was modified so close to its hashing that a
    #: rewrite in the same timestamp tick would go unseen; 0 never matches, so the next
    #: scan hashes that file again instead of trusting its (size, mtime)
    inode: int
    #: permission bits (``S_IMODE``); the kind is in ``kind``
    mode: int
    #: BLAKE3 of the contents, lowercase hex; files only
    object_id: str | None = None
    #: links only; never followed
    link_target: str | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    """An entry left out of the scan, and why (shown to the user)."""

    #: relative path; bytes that are not UTF-8 appear as backslash escapes
    path: str
    reason: str


@dataclass
class ScanResult:
    """What one scan found, compared with the previous scan's ``files``."""

    #: the full picture: every entry that is not ignored
    files: dict[str, ScannedFile]
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: changed while being hashed: neither announced nor forgotten; rescan soon
    unstable: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    #: differ from the previous entry only in local bookkeeping (inode, a directory's
    #: mtime): worth saving, nothing to announce
    refreshed: list[str] = field(default_factory=list)
    #: in the previous scan, excluded by the ignore rules now: not deletions
    now_ignored: list[str] = field(default_factory=list)
    #: the rules applied: the caller's plus the root ``.dizzyignore``
    rules: IgnoreRules = field(default_factory=IgnoreRules)
    hashed_files: int = 0
    hashed_bytes: int = 0
    #: encoded outboards of the large files hashed by this scan, by object ID
    outboards: dict[str, bytes] = field(default_factory=dict)
    #: seconds
    elapsed: float = 0.0


def hash_fd(fd: int, size: int) -> str:
    """BLAKE3 of an open file from offset 0 to its end, lowercase hex."""
    if size <= SMALL_FILE:
        # One read (one more to see EOF past a grown file) and one hash call: the
        # whole cost of a small file is its syscalls.
        data = os.pread(fd, size + 1, 0)
        if len(data) > size:  # grew since the stat: hash it all; the caller's
            # before/after comparison then reports the file as unstable
            data += _read_rest(fd, len(data))
        return blake3.blake3(data).hexdigest()
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    _read_blocks(fd, hasher.update)
    return hasher.hexdigest()


def _read_blocks(fd: int, consume: Callable[[memoryview], object]) -> None:
    """Feed ``consume`` the file from offset 0 to its end in READ_BLOCK reads into one
    reused buffer (each view is valid only during the call)."""
    buffer = bytearray(READ_BLOCK)
    view = memoryview(buffer)
    offset = 0
    while n := os.preadv(fd, [buffer], offset):
        consume(view[:n])
        offset += n


def hash_and_chunk_fd(outboards: dict[str, bytes], fd: int, size: int) -> str:
    """``hash_fd``, and for a file of more than one chunk its outboard too (into
    ``outboards``), from the same reads."""
    if size <= CHUNK_MIN:
        return hash_fd(fd, size)
    builder = OutboardBuilder()
    _read_blocks(fd, builder.feed)  # the chunker copies what it keeps between feeds
    outboard = builder.finish()
    outboards[outboard.object_id] = outboard.encode()
    return outboard.object_id


def _read_rest(fd: int, offset: int) -> bytes:
    chunks = []
    while chunk := os.pread(fd, READ_BLOCK, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _shown(relpath: str) -> str:
    # names from os.scandir carry undecodable bytes as surrogates; show them escaped
    return os.fsencode(relpath).decode("utf-8", "backslashreplace")


def _same_content(a: ScannedFile, b: ScannedFile) -> bool:
    """Whether ``b`` says nothing new about ``a``'s path (the inode is local only)."""
    if a.kind != b.kind or a.mode != b.mode:
        return False
    if a.kind == "dir":
        # a directory's mtime moves with every entry added or removed in it, and those
        # entries report themselves
        return True
    return (
        a.size == b.size
        and a.mtime_ns == b.mtime_ns
        and a.object_id == b.object_id
        and a.link_target == b.link_target
    )


def _read_ignore_file(root: str) -> str | None:
    try:
        fd = os.open(os.path.join(root, IGNORE_FILE), _OPEN_FLAGS)
    except OSError:
        return None  # absent, or a symlink (O_NOFOLLOW): no rules from it
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return _read_rest(fd, 0).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def _root_identity(root: str) -> tuple[int, int]:
    try:
        st = os.stat(root)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise FolderMissing(f"folder {root} does not exist") from exc
        raise FolderMissing(f"folder {root} cannot be read: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise FolderMissing(f"folder {root} is not a directory")
    return st.st_dev, st.st_ino


class _Scan:
    """The state of one scan; ``run`` walks the tree once."""

    def __init__(
        self,
        root: str,
        previous: Mapping[str, ScannedFile],
        root_inode: int,
        rules: IgnoreRules,
        hash_file: HashFile,
    ) -> None:
        self.root = root
        self.root_inode = root_inode
        self.previous = previous
        self.rules = rules
        self.hash_file = hash_file
        self.files: dict[str, ScannedFile] = {}
        self.unstable: list[str] = []
        self.skipped: list[Skipped] = []
        self.hashed_files = 0
        self.hashed_bytes = 0
        self._by_inode: dict[int, ScannedFile] | None = None

    def run(self) -> None:
        # Depth-first with an explicit stack: no recursion limit, no generator frames.
        # Each item: (absolute path, relative prefix, depth, inode seen in the listing).
        stack: list[tuple[str, str, int, int]] = [(self.root, "", 0, self.root_inode)]
        while stack:
            dirpath, prefix, depth, inode = stack.pop()
            try:
                dir_fd = os.open(dirpath, _DIR_FLAGS if prefix else _ROOT_FLAGS)
            except OSError as exc:
                self._unlistable(prefix, exc)
                continue
            try:
                # A directory swapped for a symlink (or another directory) between its
                # listing and now must not be walked: it could lead outside the folder.
                if os.fstat(dir_fd).st_ino != inode:
                    self._unlistable(prefix, OSError(errno.ESTALE, "replaced while scanned"))
                    continue
                with os.scandir(dir_fd) as listing:
                    for entry in listing:
                        self._visit(entry, dir_fd, dirpath, prefix, depth, stack)
            except OSError as exc:  # the directory went away while listed
                self._unlistable(prefix, exc)
            finally:
                os.close(dir_fd)

    def _unlistable(self, prefix: str, exc: OSError) -> None:
        if not prefix:
            raise FolderMissing(f"folder {self.root} cannot be read: {exc.strerror}") from exc
        self._keep_subtree(prefix[:-1], f"cannot list directory: {exc.strerror}")

    def _visit(
        self,
        entry: os.DirEntry[str],
        dir_fd: int,
        dirpath: str,
        prefix: str,
        depth: int,
        stack: list[tuple[str, str, int, int]],
    ) -> None:
        name = entry.name
        relpath = prefix + name
        try:
            validate_name(name)
        except UnsafePath as exc:
            self.skipped.append(Skipped(_shown(relpath), str(exc)))
            return
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            return  # vanished
        if self.rules.ignored_entry(relpath, is_dir):
            return
        if depth >= MAX_DEPTH or (
            len(relpath) > MAX_RELPATH_BYTES // 4
            and len(relpath.encode("utf-8")) > MAX_RELPATH_BYTES
        ):
            # a peer would refuse this path (protocol.paths): never offer it
            self.skipped.append(Skipped(relpath, "path too long or too deep to sync"))
            return
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return  # deleted between the listing and the stat: simply gone
        except OSError as exc:
            self._keep(relpath, f"cannot stat: {exc.strerror}")
            return
        mode = st.st_mode
        if stat.S_ISREG(mode):
            self._file(dir_fd, name, relpath, st)
        elif stat.S_ISDIR(mode):
            self.files[relpath] = ScannedFile(
                relpath, "dir", 0, st.st_mtime_ns, st.st_ino, stat.S_IMODE(mode)
            )
            stack.append((f"{dirpath}/{name}", relpath + "/", depth + 1, st.st_ino))
        elif stat.S_ISLNK(mode):
            self._link(dir_fd, name, relpath, st)
        else:
            self.skipped.append(Skipped(relpath, "not a regular file, directory or symlink"))

    def _file(self, dir_fd: int, name: str, relpath: str, st: os.stat_result) -> None:
        prev = self.previous.get(relpath)
        if (
            prev is not None
            and prev.inode == st.st_ino
            and prev.mtime_ns == st.st_mtime_ns
            and prev.size == st.st_size
            and prev.kind == "file"
        ):
            if prev.mode == stat.S_IMODE(st.st_mode):
                self.files[relpath] = prev  # the common case: no new object at all
            else:
                self.files[relpath] = ScannedFile(
                    relpath, "file", prev.size, prev.mtime_ns, prev.inode,
                    stat.S_IMODE(st.st_mode), prev.object_id,
                )  # fmt: skip
            return
        moved = self._moved_from(st) if prev is None else None
        if moved is not None:
            # a rename keeps inode, size and mtime: the content is the one we hashed
            self.files[relpath] = ScannedFile(
                relpath, "file", st.st_size, st.st_mtime_ns, st.st_ino,
                stat.S_IMODE(st.st_mode), moved.object_id,
            )  # fmt: skip
            return
        self._hash(dir_fd, name, relpath, st)

    def _moved_from(self, st: os.stat_result) -> ScannedFile | None:
        if self._by_inode is None:
            # built on the first unknown path only: a rescan with nothing new never pays
            self._by_inode = {
                f.inode: f for f in self.previous.values() if f.kind == "file" and f.inode
            }
        found = self._by_inode.get(st.st_ino)
        if found is None or (found.size, found.mtime_ns) != (st.st_size, st.st_mtime_ns):
            return None
        return found

    def _hash(self, dir_fd: int, name: str, relpath: str, before: os.stat_result) -> None:
        try:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # became a symlink since the listing
                self.unstable.append(relpath)
                self._carry(relpath)
                return
            self._keep(relpath, f"cannot read: {exc.strerror}")
            return
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode) or opened.st_ino != before.st_ino:
                self.unstable.append(relpath)  # replaced since the listing
                self._carry(relpath)
                return
            object_id = self.hash_file(fd, opened.st_size)
            after = os.fstat(fd)
            hashed_at = time.time_ns()
        except OSError as exc:
            self._keep(relpath, f"cannot read: {exc.strerror}")
            return
        finally:
            os.close(fd)
        self.hashed_files += 1
        self.hashed_bytes += after.st_size
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            self.unstable.append(relpath)
            self._carry(relpath)
            return
        # Only an mtime near "now" is racy: a write now would set the mtime to now, so
        # one well ahead of our clock (a file from a device whose clock runs ahead)
        # would change visibly.  Taking those as racy too re-hashed them at every scan
        # and kept them from being served (inode 0 never matches) until the clock
        # caught up.
        racy = abs(after.st_mtime_ns - hashed_at) <= RACY_NS
        self.files[relpath] = ScannedFile(
            relpath, "file", after.st_size, after.st_mtime_ns, 0 if racy else after.st_ino,
            stat.S_IMODE(after.st_mode), object_id,
        )  # fmt: skip

    def _link(self, dir_fd: int, name: str, relpath: str, st: os.stat_result) -> None:
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._keep(relpath, f"cannot read link: {exc.strerror}")
            return
        try:
            target.encode("utf-8")
        except UnicodeEncodeError:
            self.skipped.append(Skipped(relpath, "link target is not valid UTF-8"))
            return
        self.files[relpath] = ScannedFile(
            relpath, "link", st.st_size, st.st_mtime_ns, st.st_ino, stat.S_IMODE(st.st_mode),
            None, target,
        )  # fmt: skip

    def _carry(self, relpath: str) -> None:
        prev = self.previous.get(relpath)
        if prev is not None:
            self.files[relpath] = prev

    def _keep(self, relpath: str, reason: str) -> None:
        """Skip an entry we could not read, keeping what we knew: not a deletion."""
        self.skipped.append(Skipped(relpath, reason))
        self._carry(relpath)

    def _keep_subtree(self, dirpath: str, reason: str) -> None:
        self.skipped.append(Skipped(dirpath, reason))
        inside = dirpath + "/"
        for path, prev in self.previous.items():
            if path.startswith(inside):
                self.files[path] = prev


def scan(
    root: Path,
    previous: Mapping[str, ScannedFile],
    rules: IgnoreRules = NO_RULES,
    *,
    hash_file: HashFile | None = None,
    chunk_large: bool = True,
) -> ScanResult:
    """Walk ``root`` and compare it with ``previous`` (the last scan's ``files``).

    ``rules`` are the caller's own patterns (none by default); the root
    ``.dizzyignore`` is read again on every scan and its patterns come after them (so
    they win a tie).  ``hash_file`` replaces ``hash_fd`` (tests use it to change a file
    mid-hash).  With ``chunk_large`` (the default hasher only), files larger than one
    chunk are chunked in the same read that hashes them, and their outboards come back
    in ``ScanResult.outboards``: a peer's first chunk request then costs no second read
    of the whole file.  Raises ``FolderMissing`` when the root is not a readable directory,
    before or after the walk.
    """
    started = time.monotonic()
    root_str = os.fspath(root)
    identity = _root_identity(root_str)
    text = _read_ignore_file(root_str)
    effective = rules if text is None else rules + IgnoreRules.parse(text)
    outboards: dict[str, bytes] = {}
    if hash_file is None:
        hash_file = partial(hash_and_chunk_fd, outboards) if chunk_large else hash_fd
    walk = _Scan(root_str, previous, identity[1], effective, hash_file)
    walk.run()
    # An unmount or a replaced root during the walk made the listing meaningless.
    if _root_identity(root_str) != identity:
        raise FolderMissing(f"folder {root_str} was replaced during the scan")

    files = walk.files
    result = ScanResult(
        files,
        unstable=sorted(walk.unstable),
        skipped=walk.skipped,
        rules=effective,
        hashed_files=walk.hashed_files,
        hashed_bytes=walk.hashed_bytes,
        outboards=outboards,
    )
    for path, entry in files.items():
        prev = previous.get(path)
        if prev is None:
            result.added.append(path)
        elif prev is not entry:
            if not _same_content(prev, entry):
                result.changed.append(path)
            elif prev != entry:
                result.refreshed.append(path)
    if len(files) != len(previous) or result.added:
        for path, prev in previous.items():
            if path not in files:
                if effective.ignored(path, prev.kind == "dir"):
                    result.now_ignored.append(path)
                else:
                    result.removed.append(path)
    result.added.sort()
    result.changed.sort()
    result.refreshed.sort()
    result.removed.sort()
    result.now_ignored.sort()
    result.elapsed = time.monotonic() - started
    return result
