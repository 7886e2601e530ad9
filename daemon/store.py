"""The local object store: one file per object under ``<home>/objects``.

Every write goes to a temp file on the same file system, is fsynced, then renamed into
place, so a killed ``put`` or ``get`` never leaves a half-written file under a final
name.  An object's ID is computed from the *stored copy*, not the source, so an ID can
never name bytes other than the ones kept.  All work here is blocking and runs in worker
threads; ``ObjectStore`` methods prefixed ``sync_`` must not be called from trio.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import blake3

from dizzy.protocol.errors import CorruptData, DizzyError, NotFound, StorageError, UsageError
from dizzy.protocol.manifest import TreeEntry, TreeManifest

from .fsutil import TempFile, fsync_dir, remove_quietly, storage_error, temp_name_beside
from .home import Home
from .index import Index
from .progress import CancelFlag, ProgressCounter

#: bytes per copy_file_range call: big enough that the syscall count is negligible,
#: small enough that progress and cancellation stay responsive.
COPY_SEGMENT = 64 * 1024 * 1024
#: read/write fallback block where copy_file_range is unavailable (pipes, /proc...)
FALLBACK_BLOCK = 4 * 1024 * 1024

ObjectKind = Literal["blob", "tree"]


class Cancelled(DizzyError):
    code = "cancelled"


@dataclass(frozen=True)
class PutResult:
    id: str
    kind: ObjectKind
    size: int
    files: int
    skipped: tuple[str, ...] = ()


def hash_window(hasher: Any, fd: int, offset: int, length: int) -> None:
    # A window of the file we just wrote, mapped only while it is hashed: no copy into
    # Python, and the daemon's resident memory stays at one segment, not the file.
    with mmap.mmap(fd, length, offset=offset, access=mmap.ACCESS_READ) as window:
        hasher.update(window)


def _load_sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return fn


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing this range to disk now (Linux; no-op elsewhere).

    The final fsync then finds most pages already written instead of flushing the whole
    object at the end: the disk works while we are still copying.
    """
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _copy_segment(src: int, dst: int, use_kernel: list[bool]) -> int:
    """Append up to one segment of src to dst; 0 at end of file."""
    if use_kernel[0]:
        try:
            return os.copy_file_range(src, dst, COPY_SEGMENT)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            use_kernel[0] = False  # e.g. across file systems on old kernels
    block = os.read(src, FALLBACK_BLOCK)
    view = memoryview(block)
    while view:
        view = view[os.write(dst, view) :]
    return len(block)


class ObjectStore:
    def __init__(self, home: Home, index: Index) -> None:
        self.home = home
        self.index = index
        # One hashing thread: BLAKE3 of segment k runs while the kernel copies k+1.
        # (blake3 spreads one large update over all cores by itself.)
        self._hash_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dizzy-hash")
        self._known_dirs: set[str] = set()
        self.early_writeback = os.environ.get("DIZZY_EARLY_WRITEBACK", "1") != "0"
        self._dir_lock = threading.Lock()

    def close(self) -> None:
        self._hash_pool.shutdown(wait=True)

    # -- locating ------------------------------------------------------------------

    def object_path(self, object_id: str) -> Path:
        return self.home.objects / object_id[:2] / object_id

    def sync_lookup(self, object_id: str) -> tuple[ObjectKind, int] | None:
        """Kind and size of a stored object, or None.  Drops index rows whose file vanished."""

        def q(conn: sqlite3.Connection) -> tuple[str, int] | None:
            row = conn.execute(
                "SELECT kind, size FROM objects WHERE id = ?", (object_id,)
            ).fetchone()
            return None if row is None else (row[0], row[1])

        row = self.index.call_sync(q)
        if row is None:
            return None
        if not self.object_path(object_id).exists():
            self.index.call_sync(
                lambda c: c.execute("DELETE FROM objects WHERE id = ?", (object_id,))
            )
            return None
        kind: ObjectKind = "tree" if row[0] == "tree" else "blob"
        return kind, row[1]

    def sync_require(self, object_id: str) -> tuple[ObjectKind, int]:
        found = self.sync_lookup(object_id)
        if found is None:
            raise NotFound(f"object {object_id} is not in the local store")
        return found

    def sync_stats(self) -> tuple[int, int]:
        """(object count, total bytes of blobs)."""
        row = self.index.call_sync(
            lambda c: c.execute(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN kind='blob' THEN size END), 0) "
                "FROM objects"
            ).fetchone()
        )
        return int(row[0]), int(row[1])

    # -- writing -------------------------------------------------------------------

    def _new_temp(self, doing: str) -> TempFile:
        return TempFile(self.home.tmp / f"in-{secrets.token_hex(8)}.tmp", doing)

    def _copy_and_hash(
        self, src: int, dst: int, progress: ProgressCounter, cancel: CancelFlag
    ) -> tuple[str, int]:
        """Copy src into dst and hash what landed in dst, pipelined segment by segment.

        The ID is computed from the written copy, so it always names the stored bytes.
        """
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        use_kernel = [True]
        offset = 0
        pending: Future[None] | None = None
        try:
            while True:
                if cancel.is_set:
                    raise Cancelled("cancelled")
                n = _copy_segment(src, dst, use_kernel)
                if n == 0:
                    break
                if pending is not None:
                    pending.result()
                if self.early_writeback:
                    start_writeback(dst, offset, n)
                pending = self._hash_pool.submit(hash_window, hasher, dst, offset, n)
                offset += n
                progress.done += n
        finally:
            if pending is not None:
                pending.result()
        return hasher.hexdigest(), offset

    def _commit(self, tmp: TempFile, object_id: str, size: int, kind: ObjectKind) -> str:
        """fsync the temp copy and rename it into the store under its ID."""
        os.fsync(tmp.fileno())
        tmp.close()
        final = self.object_path(object_id)
        if not final.exists():  # else: same content already stored, keep one copy
            self._ensure_dir(final.parent)
            os.chmod(tmp.path, 0o444)  # stored objects are immutable
            os.rename(tmp.path, final)
            tmp.keep()
            fsync_dir(final.parent)
        now = time.time()
        self.index.call_sync(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO objects (id, kind, size, created) VALUES (?, ?, ?, ?)",
                (object_id, kind, size, now),
            )
        )
        return object_id

    def _ensure_dir(self, path: Path) -> None:
        with self._dir_lock:
            if path.name in self._known_dirs:
                return
            path.mkdir(mode=0o700, exist_ok=True)
            self._known_dirs.add(path.name)

    def sync_put_bytes(self, data: bytes, kind: ObjectKind) -> str:
        with self._new_temp("writing to the object store") as tmp:
            view = memoryview(data)
            while view:
                view = view[os.write(tmp.fileno(), view) :]
            object_id = blake3.blake3(data).hexdigest()
            return self._commit(tmp, object_id, len(data), kind)

    def sync_put_file(
        self, src: Path, progress: ProgressCounter, cancel: CancelFlag
    ) -> tuple[str, int]:
        try:
            src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            raise storage_error(exc, f"opening {src}") from exc
        try:
            before = os.fstat(src_fd)
            if not stat.S_ISREG(before.st_mode):
                raise UsageError(f"not a regular file: {src}")
            with self._new_temp(f"storing {src}") as tmp:
                object_id, size = self._copy_and_hash(src_fd, tmp.fileno(), progress, cancel)
                after = os.fstat(src_fd)
                if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                    raise StorageError(f"{src} changed while being stored; nothing was stored")
                return self._commit(tmp, object_id, size, "blob"), size
        finally:
            os.close(src_fd)

    def sync_put(self, src: Path, progress: ProgressCounter, cancel: CancelFlag) -> PutResult:
        try:
            st = src.lstat()
        except OSError as exc:
            raise storage_error(exc, f"reading {src}") from exc
        if stat.S_ISDIR(st.st_mode):
            progress.total = _tree_bytes(src)
            skipped: list[str] = []
            counts = [0]
            tree_id = self._put_tree(src, progress, cancel, skipped, counts)
            return PutResult(tree_id, "tree", progress.total, counts[0], tuple(skipped))
        if stat.S_ISREG(st.st_mode):
            progress.total = st.st_size
            object_id, size = self.sync_put_file(src, progress, cancel)
            return PutResult(object_id, "blob", size, 1)
        raise UsageError(f"not a regular file or directory: {src}")

    def _put_tree(
        self,
        root: Path,
        progress: ProgressCounter,
        cancel: CancelFlag,
        skipped: list[str],
        counts: list[int],
    ) -> str:
        entries: list[TreeEntry] = []
        total = 0
        try:
            listing = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError as exc:
            raise storage_error(exc, f"listing {root}") from exc
        for entry in listing:
            name = entry.name
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise UsageError(
                    f"file name is not valid UTF-8: {os.fsencode(entry.path)!r}"
                ) from None
            st = entry.stat(follow_symlinks=False)
            mode = stat.S_IMODE(st.st_mode)
            if entry.is_symlink():
                target = os.readlink(entry.path)
                entries.append(TreeEntry(name, "link", mode, 0, target))
            elif entry.is_dir(follow_symlinks=False):
                before = progress.done
                sub_id = self._put_tree(Path(entry.path), progress, cancel, skipped, counts)
                sub_size = progress.done - before
                entries.append(TreeEntry(name, "dir", mode, sub_size, sub_id))
                total += sub_size
            elif entry.is_file(follow_symlinks=False):
                object_id, size = self.sync_put_file(Path(entry.path), progress, cancel)
                entries.append(TreeEntry(name, "file", mode, size, object_id))
                counts[0] += 1
                total += size
            else:
                skipped.append(entry.path)  # sockets, fifos, devices: not content
        manifest = TreeManifest(tuple(entries))
        return self.sync_put_bytes(manifest.encode(), "tree")

    # -- reading -------------------------------------------------------------------

    def sync_read_tree(self, tree_id: str) -> TreeManifest:
        kind, _ = self.sync_require(tree_id)
        if kind != "tree":
            raise UsageError(f"object {tree_id} is a file, not a directory tree")
        data = self.object_path(tree_id).read_bytes()
        if blake3.blake3(data).hexdigest() != tree_id:
            raise CorruptData(f"stored tree {tree_id} is corrupt (hash mismatch)")
        return TreeManifest.decode(data)

    def sync_open_blob(self, object_id: str) -> BinaryIO:
        kind, _ = self.sync_require(object_id)
        if kind == "tree":
            raise UsageError(
                f"object {object_id} is a directory tree; use `dizzy get ID -o DIR`"
            )
        return open(self.object_path(object_id), "rb")

    def iter_blob(self, object_id: str, block: int) -> Iterator[bytes]:
        with self.sync_open_blob(object_id) as f:
            while chunk := f.read(block):
                yield chunk

    # -- exporting -----------------------------------------------------------------

    def sync_export(
        self, object_id: str, dest: Path, progress: ProgressCounter, cancel: CancelFlag
    ) -> Path:
        kind, size = self.sync_require(object_id)
        parent = dest.parent
        if not parent.is_dir():
            raise StorageError(f"output directory does not exist: {parent}")
        if kind == "blob":
            if dest.is_dir():
                raise UsageError(f"output path is a directory: {dest}")
            progress.total = size
            self._export_blob(object_id, dest, 0o644 & ~UMASK, progress, cancel)
            return dest
        if dest.exists() or dest.is_symlink():
            raise UsageError(f"output path already exists: {dest}")
        manifest = self.sync_read_tree(object_id)
        progress.total = sum(e.size for e in manifest.entries if e.kind in ("file", "dir"))
        tmp_dir = temp_name_beside(dest)
        try:
            self._export_tree(manifest, tmp_dir, 0o755, progress, cancel)
            os.rename(tmp_dir, dest)
            fsync_dir(parent)
        except OSError as exc:
            remove_quietly(tmp_dir)
            raise storage_error(exc, f"writing {dest}") from exc
        except BaseException:
            remove_quietly(tmp_dir)
            raise
        return dest

    def sync_export_from(
        self, source: Path, object_id: str, dest: Path, progress: ProgressCounter,
        cancel: CancelFlag,
    ) -> Path:
        """Write a copy of ``source`` (a shared file said to hold ``object_id``) to
        ``dest``, verified against the ID."""
        if not dest.parent.is_dir():
            raise StorageError(f"output directory does not exist: {dest.parent}")
        if dest.is_dir():
            raise UsageError(f"output path is a directory: {dest}")
        progress.total = source.stat().st_size
        self._export_blob(object_id, dest, 0o644 & ~UMASK, progress, cancel, source)
        return dest

    def _export_blob(
        self, object_id: str, dest: Path, mode: int, progress: ProgressCounter, cancel: CancelFlag,
        source: Path | None = None,
    ) -> None:
        src_fd = os.open(source or self.object_path(object_id), os.O_RDONLY | os.O_CLOEXEC)
        try:
            with TempFile(temp_name_beside(dest), f"writing {dest}") as tmp:
                # Verify what we wrote: bit rot in the store must not reach the user's
                # file silently.
                got, _size = self._copy_and_hash(src_fd, tmp.fileno(), progress, cancel)
                if got != object_id:
                    raise CorruptData(
                        f"stored object {object_id} is corrupt (its bytes hash to {got[:16]}...)"
                    )
                os.fchmod(tmp.fileno(), mode)
                os.fsync(tmp.fileno())
                tmp.close()
                os.rename(tmp.path, dest)
                tmp.keep()
                fsync_dir(dest.parent)
        finally:
            os.close(src_fd)

    def _export_tree(
        self,
        manifest: TreeManifest,
        target: Path,
        mode: int,
        progress: ProgressCounter,
        cancel: CancelFlag,
    ) -> None:
        # Writable while we fill it; its real mode is applied last (it may be 0555).
        target.mkdir(mode=0o700)
        for entry in manifest.entries:
            path = target / entry.name  # names were validated by TreeManifest.decode
            if entry.kind == "file":
                self.sync_require(entry.ref)
                self._export_blob(entry.ref, path, entry.mode, progress, cancel)
            elif entry.kind == "dir":
                subtree = self.sync_read_tree(entry.ref)
                self._export_tree(subtree, path, entry.mode, progress, cancel)
            else:
                os.symlink(entry.ref, path)
        os.chmod(target, mode)


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def _read_umask() -> int:
    # os.umask can only be read by setting it: do it once, at import, before any
    # worker thread could create a file under the temporary mask.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()
