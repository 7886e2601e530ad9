"""Random file-system work on one host's copy of a shared folder, for the soak.

Everything a user's programs do to a synced folder: create files (bytes to a few MiB,
some in new subdirectories, some written in place, some renamed in whole), make empty
directories and symlinks, edit in place (append, overwrite in the middle, truncate),
replace a file atomically (as editors save), change modes, rename files and
directories, delete files and whole directories.  Each operation is recorded in the
ledger with exactly the versions it wrote and destroyed (see ledger.py):

* deletes and replacements move the victim out of the folder first (``rename`` into a
  trash directory, ``RENAME_EXCHANGE`` for replacements) and read it there, so the
  bytes destroyed are the bytes recorded, whatever sync did meanwhile;
* renames never replace anything (``RENAME_NOREPLACE``);
* edits read the old bytes and write the new ones through one descriptor (the daemon
  never writes into a file in place, it replaces files by rename).

The folder is also changed under our feet by the daemon, so every choice is made from a
fresh listing and every operation tolerates its target vanishing (counted as
``skipped``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import random
import shutil
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3

from tests.soak.ledger import Key, Ledger, file_key, link_key

MIB = 1024 * 1024
#: the daemon's temp files inside a folder: never ours to touch
TEMP_SUFFIX = ".tmp"
DAEMON_TEMP_MARK = ".dizzy-"
#: errors meaning "sync changed that path under us": the operation is skipped
RACED = frozenset({errno.ENOENT, errno.ELOOP, errno.EISDIR, errno.ENOTDIR, errno.EEXIST,
                   errno.ENOTEMPTY})
#: how deep new directories go (the tree stays browsable in a failure report)
MAX_DEPTH = 4

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]


def renameat2(src: Path, dst: Path, flags: int) -> None:
    if _libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(src))


def is_daemon_temp(name: str) -> bool:
    return name.startswith(".") and DAEMON_TEMP_MARK in name and name.endswith(TEMP_SUFFIX)


class Skip(Exception):
    """The operation found nothing to work on (or its target vanished): not an error."""


@dataclass
class Limits:
    """Keep each host's tree within bounds: past them, deletes outweigh creates."""

    max_files: int = 400
    max_bytes: int = 150 * MIB


def random_size(rng: random.Random) -> int:
    """Mostly small files, some medium, a few of several MiB."""
    roll = rng.random()
    if roll < 0.35:
        return rng.randrange(0, 512)
    if roll < 0.65:
        return rng.randrange(512, 16 * 1024)
    if roll < 0.90:
        return rng.randrange(16 * 1024, 512 * 1024)
    return rng.randrange(512 * 1024, 4 * MIB)


class HostWorkload:
    """One host's workload; ``step`` performs one random operation."""

    def __init__(self, name: str, root: Path, scratch: Path, seed: int, ledger: Ledger,
                 limits: Limits | None = None) -> None:
        self.name = name
        self.root = root
        self.staging = scratch / f"staging-{name}"
        self.trash = scratch / f"trash-{name}"
        self.staging.mkdir(parents=True, exist_ok=True)
        self.trash.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.ledger = ledger
        self.limits = limits or Limits()
        #: one operation at a time on this host (the conflict maker shares it)
        self.lock = threading.Lock()
        self._counter = 0
        self.ops: list[tuple[str, float, Callable[[], None]]] = [
            ("create", 26, self.create_file),
            ("mkdir", 3, self.make_dir),
            ("symlink", 3, self.make_link),
            ("append", 9, lambda: self.edit("append")),
            ("overwrite", 8, lambda: self.edit("overwrite")),
            ("truncate", 4, lambda: self.edit("truncate")),
            ("replace", 6, self.replace_file),
            ("chmod", 3, self.chmod),
            ("rename-file", 9, lambda: self.rename(directory=False)),
            ("rename-dir", 4, lambda: self.rename(directory=True)),
            ("delete-file", 13, lambda: self.delete(directory=False)),
            ("delete-dir", 4, lambda: self.delete(directory=True)),
        ]

    # -- choosing --------------------------------------------------------------------

    def unique(self, prefix: str = "") -> str:
        self._counter += 1
        return f"{prefix}{self.name}-{self._counter:05d}"

    def listing(self) -> tuple[list[Path], list[Path], int]:
        """(regular files and links, directories, bytes) as the folder is now."""
        files: list[Path] = []
        dirs: list[Path] = []
        total = 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            base = Path(dirpath)
            dirs.extend(base / d for d in dirnames)
            for name in filenames:
                if is_daemon_temp(name):
                    continue
                path = base / name
                files.append(path)
                with contextlib.suppress(FileNotFoundError):
                    total += path.lstat().st_size
        return files, dirs, total

    def pick_dir(self, dirs: list[Path], *, new_ok: bool = True) -> Path:
        """The root, an existing directory, or (sometimes) a new one inside either."""
        roll = self.rng.random()
        base = self.root
        if dirs and roll < 0.7:
            base = self.rng.choice(dirs)
        if new_ok and roll > 0.8 and len(base.relative_to(self.root).parts) < MAX_DEPTH:
            base = base / self.unique("d-")
            base.mkdir(parents=True, exist_ok=True)
        return base

    def pick_name(self) -> str:
        return self.unique() + self.rng.choice([".txt", ".bin", ".dat", "", ".tar.gz"])

    def content(self, size: int) -> bytes:
        header = f"soak {self.unique('w-')}\n".encode()
        if size <= len(header):
            return header  # every version unique, so even "tiny" files carry their tag
        return header + self.rng.randbytes(size - len(header))

    # -- one step --------------------------------------------------------------------

    def step(self, files_bias: float = 1.0) -> str:
        """One weighted random operation; returns its name, or "skipped:NAME"."""
        files, _dirs, total = self.listing()
        crowded = len(files) > self.limits.max_files or total > self.limits.max_bytes
        weights = []
        for name, weight, _ in self.ops:
            if crowded and name in ("create", "mkdir", "symlink"):
                weight = 0.0
            elif crowded and name.startswith("delete"):
                weight *= 4
            weights.append(weight)
        name, _, action = self.rng.choices(self.ops, weights=weights)[0]
        with self.lock:
            try:
                action()
            except Skip:
                return f"skipped:{name}"
            except OSError as exc:
                if exc.errno not in RACED:
                    raise
                # sync removed, renamed or replaced what we were about to touch
                self.ledger.record(self.name, f"vanished:{name}", error=str(exc))
                return f"skipped:{name}"
        return name

    # -- operations ------------------------------------------------------------------

    def create_file(self, path: Path | None = None) -> None:
        if path is None:
            _files, dirs, _ = self.listing()
            path = self.pick_dir(dirs) / self.pick_name()
        data = self.content(random_size(self.rng))
        mode = self.rng.choice([0o644, 0o644, 0o600, 0o755])
        seq = self.ledger.next_seq()
        if self.rng.random() < 0.5:
            # in place, as most programs write: the scanner may see it half-written
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view[: 1 * MIB]):]
                orphaned = os.fstat(fd).st_nlink == 0
            finally:
                os.close(fd)
        else:
            # whole, by rename, as careful programs write
            tmp = self.staging / self.unique("s-")
            tmp.write_bytes(data)
            os.chmod(tmp, mode)
            try:
                renameat2(tmp, path, _RENAME_NOREPLACE)
            except OSError:
                tmp.unlink()
                raise
            orphaned = False
        key = file_key(blake3.blake3(data).hexdigest())
        self.ledger.record(self.name, "create", wrote=[(key, seq)], orphaned=orphaned,
                           path=self.rel(path), size=len(data))

    def make_dir(self) -> None:
        _files, dirs, _ = self.listing()
        path = self.pick_dir(dirs, new_ok=False) / self.unique("e-")
        if len(path.relative_to(self.root).parts) > MAX_DEPTH:
            raise Skip
        path.mkdir()
        self.ledger.record(self.name, "mkdir", path=self.rel(path))

    def make_link(self) -> None:
        files, dirs, _ = self.listing()
        path = self.pick_dir(dirs, new_ok=False) / self.unique("ln-")
        # dangling or not, a link is recorded as its target and never followed
        target = f"../nowhere/{self.unique('t-')}"
        if files and self.rng.random() < 0.5:
            target = f"{self.rng.choice(files).name}#{self.unique('t-')}"
        seq = self.ledger.next_seq()
        os.symlink(target, path)
        self.ledger.record(self.name, "symlink", wrote=[(link_key(target), seq)],
                           path=self.rel(path))

    def pick_file(self) -> Path:
        files, _dirs, _ = self.listing()
        regular = [f for f in files if stat.S_ISREG(_lstat_mode(f))]
        if not regular:
            raise Skip
        return self.rng.choice(regular)

    def edit(self, how: str, path: Path | None = None) -> None:
        path = path or self.pick_file()
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Skip
            old = _read_all(fd)
            if how == "truncate" and len(old) < 2:
                how = "append"
            if how == "overwrite" and not old:
                how = "append"
            seq = self.ledger.next_seq()
            if how == "append":
                extra = self.content(self.rng.choice([1, 100, 4096, 65536, 1 * MIB])
                                     if self.rng.random() < 0.9 else 1)
                new = old + extra
                _write_at(fd, extra, len(old))
            elif how == "overwrite":
                offset = self.rng.randrange(len(old))
                patch = self.content(self.rng.randrange(1, 64 * 1024))[: len(old) - offset]
                new = old[:offset] + patch + old[offset + len(patch):]
                _write_at(fd, patch, offset)
            else:
                size = self.rng.randrange(1, len(old))
                new = old[:size]
                os.ftruncate(fd, size)
            orphaned = os.fstat(fd).st_nlink == 0
        finally:
            os.close(fd)
        old_key = file_key(blake3.blake3(old).hexdigest())
        new_key = file_key(blake3.blake3(new).hexdigest())
        # An edit of a file sync replaced meanwhile destroyed nothing on a path.
        self.ledger.record(self.name, how, wrote=[(new_key, seq)],
                           killed=[] if orphaned else [old_key], orphaned=orphaned,
                           path=self.rel(path), size=len(new))

    def replace_file(self) -> None:
        path = self.pick_file()
        data = self.content(random_size(self.rng))
        tmp = self.staging / self.unique("s-")
        tmp.write_bytes(data)
        seq = self.ledger.next_seq()
        try:
            renameat2(tmp, path, _RENAME_EXCHANGE)  # tmp now holds whatever was at path
        except OSError:
            tmp.unlink()
            raise
        killed = self.capture(tmp)
        self.ledger.record(self.name, "replace",
                           wrote=[(file_key(blake3.blake3(data).hexdigest()), seq)],
                           killed=killed, path=self.rel(path), size=len(data))

    def chmod(self) -> None:
        path = self.pick_file()
        os.chmod(path, self.rng.choice([0o600, 0o640, 0o644, 0o755]))
        self.ledger.record(self.name, "chmod", path=self.rel(path))

    def rename(self, directory: bool) -> None:
        files, dirs, _ = self.listing()
        pool = dirs if directory else files
        if not pool:
            raise Skip
        src = self.rng.choice(pool)
        candidates = [d for d in [self.root, *dirs]
                      if not (directory and (d == src or src in d.parents))]
        parent = src.parent if self.rng.random() < 0.5 else self.rng.choice(candidates)
        if directory and len(parent.relative_to(self.root).parts) >= MAX_DEPTH:
            parent = self.root
        dst = parent / (self.unique("r-") + ("" if directory else src.suffix))
        renameat2(src, dst, _RENAME_NOREPLACE)
        self.ledger.record(self.name, "rename-dir" if directory else "rename-file",
                           path=self.rel(src), to=self.rel(dst))

    def delete(self, directory: bool, path: Path | None = None) -> None:
        if path is None:
            files, dirs, _ = self.listing()
            pool = dirs if directory else files
            if not pool:
                raise Skip
            path = self.rng.choice(pool)
        victim = self.trash / self.unique("x-")
        os.rename(path, victim)  # the exact thing deleted, out of sync's reach
        killed = self.capture(victim)
        self.ledger.record(self.name, "delete-dir" if directory else "delete-file",
                           killed=killed, path=self.rel(path))

    def capture(self, victim: Path) -> list[Key]:
        """Keys of everything in ``victim`` (a trashed file, link or tree); removes it."""
        keys: list[Key] = []
        st = victim.lstat()
        if stat.S_ISDIR(st.st_mode):
            for dirpath, _dirnames, filenames in os.walk(victim):
                for name in filenames:
                    # a daemon temp file caught in the move is sync's, not a version
                    if not is_daemon_temp(name):
                        keys.extend(_key_of(Path(dirpath) / name))
            shutil.rmtree(victim)
        else:
            keys.extend(_key_of(victim))
            victim.unlink()
        return keys

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def _lstat_mode(path: Path) -> int:
    try:
        return path.lstat().st_mode
    except FileNotFoundError:
        return 0


def _key_of(path: Path) -> list[Key]:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return [link_key(os.readlink(path))]
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            return [file_key(blake3.blake3(f.read()).hexdigest())]
    return []


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 4 * MIB, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def conflict_pair(a: HostWorkload, b: HostWorkload, rng: random.Random) -> str:
    """The same path changed on two hosts at once: a new file, or an edit of one both
    have.  Returns what was done (for the summary)."""
    if rng.random() < 0.5:
        with a.lock:
            name = f"twin-{a.unique('c-')}.txt"
        for host in (a, b):
            with host.lock:
                try:
                    host.create_file(host.root / name)
                except OSError as exc:
                    if exc.errno not in RACED:
                        raise
        return "twin-create"
    with a.lock:
        files, _dirs, _ = a.listing()
    shared = [f.relative_to(a.root) for f in files
              if (b.root / f.relative_to(a.root)).is_file()
              and not (b.root / f.relative_to(a.root)).is_symlink()]
    if not shared:
        return "twin-none"
    rel = rng.choice(shared)
    for host in (a, b):
        with host.lock:
            try:
                host.edit("append", host.root / rel)
            except Skip:
                continue
            except OSError as exc:
                if exc.errno not in RACED:
                    raise
    return "twin-edit"
