"""Storage backends for a registry: a flat key space of immutable objects.

Keys are the relative names from ``layout`` (``abc.narinfo``, ``nar/x.nar.zst``, ...).
A backend is chosen by URL with ``open_storage``: ``file:///abs/dir`` (or a bare path)
gives ``FileStorage``; ``s3://`` is reserved for a later backend and is refused with a
clear error today. The test-suite in tests/registry/test_storage.py runs against every
backend listed in ``BACKENDS``.

Contract every backend keeps:
- Writes are atomic: ``writer(key)`` yields a file object whose bytes become visible
  under ``key`` only when the ``with`` block exits cleanly; an exception or a crash
  leaves no trace under ``key`` (FileStorage: temp file in ``.kiln/tmp``, fsync, rename).
- ``publish(key, ...)`` with ``exclusive=True`` never replaces an existing object; it
  reports whether it created the key, which is how the server detects conflicts (409)
  without a lock: ``link(2)`` is an atomic create-if-absent.
- Readers never see partial objects, and objects are never modified in place.

Temp files (FileStorage) are named for their writer's lock, so a sweep tells exactly which
a dead writer left: ``tempwriters``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from kiln.store.errors import KilnError
from kiln.store.fileopen import open_regular
from kiln.store.perms import make_dir

from . import tempwriters
from .layout import PRIVATE_DIR
from .tempwriters import SWEEP_EVERY as SWEEP_EVERY  # (re-exported: the server's sweep period)

#: per-write durability: None = the storage default, False = no fsync (caller will call
#: ``barrier()``), True = fsync, or a callable run after the data is written and before
#: it becomes visible (a group barrier shared by concurrent writers).
Durability = bool | Callable[[], None] | None


class StorageError(KilnError):
    """A backend could not be opened or an object could not be stored."""


class Storage(ABC):
    """Abstract key → bytes store. See the module docstring for the contract."""

    url: str

    @abstractmethod
    def read(self, key: str) -> bytes | None:
        """Whole object (for small ones: narinfo, metadata), or None if absent."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO | None:
        """A binary reader for streaming, or None if absent. Caller closes it."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """Object size in bytes, or None if absent."""

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    @abstractmethod
    def writer(
        self, key: str, *, exclusive: bool = False, durable: Durability = None
    ) -> contextlib.AbstractContextManager[BinaryIO]:
        """Context manager yielding a writable file; the object appears atomically on
        clean exit. With ``exclusive`` an existing object is left alone and
        ``FileExistsError`` is raised at exit."""

    @abstractmethod
    def staged(self) -> contextlib.AbstractContextManager[tuple[BinaryIO, Path | None]]:
        """A temp file for data whose key is only known after it is written (blobs are
        named by their digest). Pair with ``commit_staged``; discarded on exit."""

    @abstractmethod
    def commit_staged(self, tmp: BinaryIO, keys: list[str], durable: Durability = None) -> None:
        """Publish a staged temp file under every key in ``keys`` (content-addressed,
        so an existing key is kept as is)."""

    @abstractmethod
    def link_staged(self, tmp: BinaryIO, key: str) -> bool:
        """Publish a closed staged file under ``key`` only if absent; False if it exists.
        (The caller made the bytes durable first, e.g. with one ``barrier()`` for many.)"""

    def put_bytes(
        self, key: str, data: bytes, *, exclusive: bool = False, durable: Durability = None
    ) -> bool:
        """Write ``data`` atomically. Returns False (and changes nothing) when
        ``exclusive`` and the key exists. ``durable=False`` skips the fsync (the caller
        will call ``barrier()`` before depending on it)."""
        try:
            with self.writer(key, exclusive=exclusive, durable=durable) as f:
                f.write(data)
        except FileExistsError:
            return False
        return True

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` (a directory such as ``nar/`` or ``""`` for the top level)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove a key if present (used for private state and failed staging only)."""

    def local_path(self, key: str) -> Path | None:
        """Filesystem path of the object when the backend is local (lets the server use
        sendfile); None for remote backends."""
        return None

    def barrier(self) -> None:
        """Make every write done so far durable (bulk writers skip per-file fsync and
        call this once before publishing what depends on those writes). Backends
        whose writes are durable on return need not override it."""
        return None


class FileStorage(Storage):
    """A directory on the local filesystem. ``durable`` fsyncs files before rename."""

    def __init__(self, root: Path, *, durable: bool = True, create: bool = True) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        self.durable = durable
        self._tmp = self.root / PRIVATE_DIR / "tmp"
        self._writers = self.root / PRIVATE_DIR / "writers"
        if create:
            # exact modes (``kiln.store.perms``), whatever the umask: under 000 these, and
            # the private ``.kiln/``, were world-writable; under 077 no other user (a
            # static server's) could read what is published here
            try:
                for d in (self._tmp, self.root / "nar", self.root / "blobs", self.root / "index"):
                    make_dir(d, exact=True)
            except OSError as e:
                # a directory on a read-only mount (a Nix cache without kiln's directories)
                # is still served and read; a write fails when it is tried, saying so
                if e.errno != errno.EROFS or not self.root.is_dir():
                    raise
        elif not self.root.is_dir():
            raise StorageError(f"registry directory {self.root} does not exist")

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid registry key {key!r}")
        return self.root / key

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def read(self, key: str) -> bytes | None:
        f = self.open(key)
        if f is None:
            return None
        with f:
            return f.read()

    def open(self, key: str) -> BinaryIO | None:
        """A regular file only: anything else at that name (a directory, a FIFO someone
        made there, which would block the read for ever) is no object."""
        try:
            return open_regular(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def sweep_temp(self) -> int:
        """Remove the temp files in ``.kiln/tmp`` that writers which died left, and the
        writer lock files of dead writers that have none left (``tempwriters.sweep``);
        returns how many temp files went. Safe at any time, beside live writers."""
        return tempwriters.sweep(self._tmp, self._writers)

    def size(self, key: str) -> int | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size

    def _temp(self) -> contextlib.AbstractContextManager[BinaryIO]:
        """A new temp file in ``.kiln/tmp`` for a block, named for this process's writer
        lock (``tempwriters.temp_file``)."""
        return tempwriters.temp_file(self._tmp, self._writers)

    def _finish(self, f: BinaryIO, durable: Durability) -> None:
        f.flush()
        if callable(durable):
            f.close()
            if self.durable:
                durable()  # a shared barrier (GroupSync) instead of a private fsync
            return
        if self.durable if durable is None else durable:
            os.fsync(f.fileno())
        f.close()

    def barrier(self) -> None:
        if not self.durable:
            return
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _syncfs is not None:
                _syncfs(fd)  # one flush for the whole file system
            else:
                os.sync()
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def writer(self, key: str, *, exclusive: bool = False, durable: Durability = None) -> Iterator[BinaryIO]:
        dest = self._path(key)
        with self._temp() as f:
            yield f
            self._finish(f, durable)
            _place(f.name, dest, exclusive)  # link = atomic create-if-absent (FileExistsError)

    @contextlib.contextmanager
    def staged(self) -> Iterator[tuple[BinaryIO, Path | None]]:
        with self._temp() as f:
            yield f, Path(f.name)

    def commit_staged(self, tmp: BinaryIO, keys: list[str], durable: Durability = None) -> None:
        if not tmp.closed:
            self._finish(tmp, durable)
        for key in keys:
            with contextlib.suppress(FileExistsError):
                _place(tmp.name, self._path(key), True)  # same bytes under every name; never clobber

    def link_staged(self, tmp: BinaryIO, key: str) -> bool:
        try:
            _place(tmp.name, self._path(key), True)
        except FileExistsError:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        rel = prefix.rstrip("/") + "/" if prefix else ""
        try:
            with os.scandir(base) as it:
                for e in it:
                    if e.is_file() and not e.name.startswith("."):
                        yield rel + e.name
        except FileNotFoundError:
            return

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))


def _place(src: str, dest: Path, exclusive: bool) -> None:
    """link (create-if-absent) or rename ``src`` to ``dest``, creating the parent
    directory only when it is missing (no mkdir/stat on the hot path)."""
    op = os.link if exclusive else os.replace
    try:
        op(src, dest)
    except FileNotFoundError:
        make_dir(dest.parent, exact=True)  # (0755 whatever the umask: published)
        op(src, dest)


def _load_syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs(fd)`` (Linux), or None where there is none."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).syncfs
        fn.argtypes = [ctypes.c_int]
        return fn
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


class GroupSync:
    """Group commit: many threads each need "my writes are durable" before they publish;
    one ``barrier()`` serves every caller that arrived before it started. A caller waits
    for a barrier that *started after* its call, so its writes are always covered."""

    def __init__(self, barrier: Callable[[], None]) -> None:
        self._barrier = barrier
        self._cond = threading.Condition()
        self._started = 0
        self._done = 0
        self._running = False

    def __call__(self) -> None:
        with self._cond:
            target = self._started + 1
            while self._done < target:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._started += 1
                mine = self._started
                self._cond.release()
                try:
                    self._barrier()
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._done = mine
                    self._cond.notify_all()


#: URL schemes with a backend. The parametrised storage tests run over each.
BACKENDS = ("file",)


def open_storage(url: str | Path, *, create: bool = True, durable: bool = True) -> Storage:
    """Open the backend a URL names: ``file:///abs/dir`` or a plain directory path."""
    text = str(url)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file"):
        path = unquote(parsed.path) if parsed.scheme else text
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise StorageError(f"file URL {text!r} names host {parsed.netloc!r}; use file:///absolute/path")
        if not path:
            raise StorageError(f"storage URL {text!r} has no path")
        return FileStorage(Path(path), create=create, durable=durable)
    if parsed.scheme == "s3":
        raise StorageError(
            f"storage URL {text!r}: the s3:// backend is not implemented yet (use file:///dir)"
        )
    raise StorageError(f"unsupported storage URL {text!r} (expected file:///dir)")
