"""Per-output build locks: two builders of the same derivation build it once.

``locks/<hash part>.build`` is held exclusively for the whole build of a derivation
(one file per output, taken in sorted order so two processes cannot deadlock). It is a
different file from the registration lock ``locks/<hash part>.lock`` that
``LocalStore`` takes inside ``register_built``: flock locks on two descriptors conflict
even within one process, so sharing the file would deadlock the builder on itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .locks import FileLock
from .lockwait import take_or_name_holder
from .paths import StorePath
from .perms import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, give_to_owner_of, make_dir

if TYPE_CHECKING:
    from .localstore import LocalStore


def prepare(store: LocalStore, paths: Iterable[str]) -> None:
    """Create the build-lock files of ``paths`` that do not exist yet, so that taking
    them later only opens a file: creating an inode on a journal busy with another
    thread's fsyncs can take a millisecond or more (the build loop calls this on its
    bookkeeping thread for the derivations still to build)."""
    d = Path(store.root) / "locks"
    make_dir(d, PRIVATE_DIR_MODE)
    for p in sorted(set(paths)):
        fd = os.open(
            d / f"{StorePath.parse(p).hash_part}.build",
            os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
            PRIVATE_FILE_MODE,  # (``locks``: nobody else may open it, so nobody else holds it)
        )
        give_to_owner_of(fd, d)
        os.close(fd)


@contextlib.contextmanager
def output_lock(
    store: Any,  # a LocalStore, or the builder's serializing proxy of one (it reads ``root``)
    paths: Iterable[str],
    say: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the build locks of ``paths`` (logical store paths) for the ``with`` body.
    A lock another process holds is waited for after saying so through ``say`` (as Nix
    says "waiting for lock"): that process may be building it, or stopped."""
    d = Path(store.root) / "locks"
    make_dir(d, PRIVATE_DIR_MODE)
    with contextlib.ExitStack() as stack:
        for p in sorted(set(paths)):
            lock = FileLock(d / f"{StorePath.parse(p).hash_part}.build")
            while not lock.acquire(blocking=False):
                if say is None:
                    lock.acquire()  # (says who holds it after a second)
                    break
                who = _holder(lock)
                if who is None:
                    continue  # it came free meanwhile: take it
                say(f"waiting for another kiln process to finish with {p}: its build lock is {who}")
                lock.acquire(notice=False)  # (said already)
                break
            stack.callback(lock.release)
        yield


def _holder(lock: FileLock) -> str | None:
    """Who holds ``lock`` (``lockwait.take_or_name_holder``, through a descriptor of its
    own), or None if it is free (it was taken on that descriptor, and let go again)."""
    try:
        fd = os.open(lock.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return "held by another process"
    try:
        return take_or_name_holder(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)  # (lets the lock go if it was taken)


class Serialized:
    """Proxy that runs every method call of the wrapped store under one lock (attributes
    such as ``root`` and ``store_dir`` are read directly): the build loop's worker
    threads share one ``LocalStore`` (one SQLite connection) through it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.RLock()

    def exclusive(self) -> threading.RLock:
        """The lock itself, for code that uses the wrapped store directly."""
        return self._lock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr
        lock = self._lock

        def call(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return attr(*args, **kwargs)

        return call
