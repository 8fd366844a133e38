"""GC roots: reading, listing, making and removing ``gcroots/`` entries, one way for all.

What a root names. Every entry of ``gcroots/`` (recursively) except ``add_root``'s
leftover temporary links is a root: a symbolic link to a logical or real store path, or
to a path inside one, or to a link that ends in the store (a ``result`` link), or a
regular file holding such a path. ``named_path`` reads one the way GC decides what it
keeps and every command that takes a root NAME looks it up (``kiln run NAME``, ``log``,
``verify``, ``sbom``, ``store info``, ``push``): the link's text (relative to its
directory), then where it resolves to, and then the same two read by the store dir's
components alone (``by_store_dir``: ``<anything>/kiln/store/<base>[/sub]``), so a root
made before the store was moved (``cp -a``, ``rsync`` to a new ``KILN_HOME``) or through
another spelling of its root (a symlinked ``KILN_HOME``) still names its path. The
answer is always the *logical* store path (``/kiln/store/<base>``).

What a root holds. ``add_root`` writes a relative link, ``../kiln/store/<base>`` (the
store dir's components below the store root): it resolves on the host to the tree, so
``ls gcroots/NAME/`` works, and it stays right wherever the store root is moved or
however it is reached. Roots made by earlier kilns hold the absolute physical path; they
are read by the rule above.

Names are per store: one ``gcroots/NAME`` is shared by every recipe and project using the
store. ``add_root`` replaces an existing root of that name atomically (a rename) and says
what it replaced (``RootChange.was``), read under the same shared GC lock just before, so
the caller can tell the user which path lost that root.

``remove_root`` opens each directory of the name without following links, so it never
removes anything outside ``gcroots/``, and removes only a symbolic link or a regular file.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import KilnError, StoreError
from .locks import FileLock

if TYPE_CHECKING:
    from .localstore import LocalStore

#: ``add_root``'s temporary link (``localstore.ROOT_TEMP_PREFIX<name>.<8 hex>``); present
#: under the exclusive GC lock only if its writer died (``add_root`` holds the lock shared
#: while it exists). Only that prefix: a user's own ``.pin.20261130`` is a root (kilns
#: before used ``.<name>.<8 hex>``, and GC took such a root for a temp link and deleted it)
TEMP_LINK = re.compile(r"^\.kiln-tmp-root\..+\.[0-9a-f]{8}\Z")
#: what a regular-file root is read for (a path, one line)
_FILE_BYTES = 8192


@dataclass(frozen=True, slots=True)
class Root:
    """One entry of ``gcroots/``: ``name`` relative to it (``sub/x`` in a subdir),
    ``target`` the link's text or the file's content (or why there is none), ``path``
    the logical store path it names, None if it names none (it protects nothing)."""

    name: str
    target: str
    path: str | None


@dataclass(frozen=True, slots=True)
class RootChange:
    """What ``add_root`` did: ``link`` now holds ``target`` and names ``path``; ``was``
    is what the root it replaced named (its logical path, else its text), None if
    there was none."""

    name: str
    link: Path
    target: str
    path: str
    was: str | None

    @property
    def moved(self) -> bool:
        """Whether a root of this name named another path before."""
        return self.was is not None and self.was != self.path


def by_store_dir(store: LocalStore, target: str) -> list[str]:
    """Store paths a link target may name when spelled through *any* location of this
    store's tree (``<anything>/kiln/store/<base>[/sub]``): a root made before the store was
    moved, or through another spelling of its root (a symlink), still names its path.
    Leftmost first: a subpath of the rooted path may itself hold ``kiln/store/...``."""
    marker = "/" + store.store_dir.strip("/") + "/"
    out = []
    i = target.find(marker)
    while i >= 0:
        out.append(f"{store.store_dir}/{target[i + len(marker) :].split('/', 1)[0]}")
        i = target.find(marker, i + 1)
    return out


def named_path(store: LocalStore, link: str) -> Root:
    """What the entry at ``link`` (a path under ``gcroots/``) names (see the module
    docstring); its ``name`` is ``link``'s base name. Raises ``OSError`` if ``link`` is
    gone. A FIFO, socket, device or directory names nothing (never opened)."""
    dirpath, name = os.path.split(link)
    st = os.lstat(link)
    if stat.S_ISLNK(st.st_mode):
        text = os.readlink(link)
        target = os.path.join(dirpath, text)
        real = os.path.realpath(link)
        cands = [target, real, *by_store_dir(store, target), *by_store_dir(store, real)]
    elif stat.S_ISREG(st.st_mode):
        # O_NONBLOCK: never wait on something swapped in for the file (a FIFO) while
        # holding the exclusive GC lock
        try:
            fd = os.open(link, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                text = f.read(_FILE_BYTES).decode("utf-8", "replace").strip()
        except OSError as e:
            return Root(name, f"(unreadable: {e.strerror})", None)
        # (relative to the file's directory, never to the reader's working directory)
        target = os.path.join(dirpath, text) if text else ""
        cands = [target, *by_store_dir(store, target)] if text else []
    else:
        return Root(name, f"({_kind(st.st_mode)}: names nothing)", None)
    for c in cands:
        try:
            return Root(name, text, store.resolve(c)[0])
        except (KilnError, ValueError):  # names no store path: protects nothing
            continue
    return Root(name, text, None)


def _kind(mode: int) -> str:
    return "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a file"


def each_root(store: LocalStore, stale_tmp: list[str] | None = None) -> Iterator[Root]:
    """Every root in ``gcroots/`` (recursively; a link to a directory is a root, not
    followed), sorted by name within each directory. ``add_root``'s leftover temporary
    links are not roots: appended to ``stale_tmp`` if given. A directory that cannot be
    listed raises ``StoreError`` (it would silently protect nothing)."""

    top = str(store.root / "gcroots")

    def unreadable(e: OSError) -> None:
        # An entry listed as a directory and gone when the walk came to it was a root
        # link removed (or renamed into place) meanwhile, or a directory removed: not
        # unreadable. Only the listings that are there must be read.
        if e.errno in (errno.ENOENT, errno.ENOTDIR) and e.filename != top:
            return
        raise StoreError(f"cannot read GC roots in {e.filename}: {e.strerror} (GC collects nothing while so)")

    for dirpath, dirnames, filenames in os.walk(top, onerror=unreadable):
        dirnames.sort()
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        # (taken out here, so the walk never asks again whether they are links)
        dirnames[:] = [d for d in dirnames if d not in links]
        for name in sorted(filenames + links):
            p = os.path.join(dirpath, name)
            if dirpath == top and TEMP_LINK.match(name) and os.path.islink(p):
                if stale_tmp is not None:
                    stale_tmp.append(p)
                continue
            try:
                r = named_path(store, p)
            except FileNotFoundError:  # removed meanwhile
                continue
            yield Root(os.path.relpath(p, top), r.target, r.path)


def root_at(store: LocalStore, name: str) -> Root | None:
    """The root ``gcroots/<name>`` (a top-level one: what a command's NAME argument
    means), None if there is none: no such entry, a name with ``/``, ``.``, ``..``, or
    a temporary link of ``add_root``, a directory. A FIFO there is returned, naming
    nothing."""
    if not name or "/" in name or name in (".", "..") or "\0" in name or TEMP_LINK.match(name):
        return None
    link = str(store.root / "gcroots" / name)
    try:
        if stat.S_ISDIR(os.lstat(link).st_mode):
            return None  # a directory of roots, not one
        return named_path(store, link)
    except (FileNotFoundError, NotADirectoryError):
        return None


def link_text(store: LocalStore, path: str) -> str:
    """What ``add_root`` writes for ``path``: its tree relative to ``gcroots/``."""
    return f"../{store.store_dir.strip('/')}/{store.parse_path(path).base}"


def add_root(store: LocalStore, name: str, path: str, temp_prefix: str) -> RootChange:
    """Make ``gcroots/<name>`` a link to valid ``path`` (``link_text``), replacing one of
    that name atomically; ``temp_prefix`` names the temporary link (see
    ``TEMP_LINK``). Name checked by the caller."""
    gcroots = store.root / "gcroots"
    link = gcroots / name
    tmp = gcroots / f"{temp_prefix}{name}.{os.urandom(4).hex()}"
    target = link_text(store, path)
    # under the GC lock: a collector that already listed the roots cannot delete
    # the path between the validity check and the new link
    with FileLock(store.gc_lock_path, shared=True):
        if not store.is_valid(path):
            raise StoreError(f"path {path} is not valid in the store at {store.root}")
        try:
            old = named_path(store, str(link))
            was: str | None = old.path or old.target
        except FileNotFoundError:
            was = None
        os.symlink(target, tmp)
        try:
            os.rename(tmp, link)
        except OSError as e:
            os.unlink(tmp)
            if isinstance(e, IsADirectoryError):
                raise StoreError(f"{link} is a directory, not a root: choose another root name") from None
            raise
    return RootChange(name, link, target, path, was)


def remove_root(store: LocalStore, name: str) -> Root:
    """Remove the root ``gcroots/<name>`` (``name`` may hold ``/``: a root in a subdir);
    returns what it named. Refuses (``StoreError``) a name that is not a root: missing,
    a directory, a FIFO, ``.``/``..`` components, ``add_root``'s temporary link. Each
    directory is opened without following links: nothing outside ``gcroots/`` goes."""
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts) or "\0" in name or TEMP_LINK.match(parts[-1]):
        raise StoreError(f"{name!r} is not a GC root name")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(store.root / "gcroots", flags)
    try:
        for part in parts[:-1]:
            try:
                sub = os.open(part, flags, dir_fd=fd)
            except OSError:
                raise StoreError(f"no GC root named {name!r} in {store.root / 'gcroots'}") from None
            os.close(fd)
            fd = sub
        try:
            st = os.lstat(parts[-1], dir_fd=fd)
        except FileNotFoundError:
            st = None
        if st is None or not (stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise StoreError(f"no GC root named {name!r} in {store.root / 'gcroots'}")
        root = named_path(store, str(store.root / "gcroots" / name))  # (what it named: to say)
        try:
            os.unlink(parts[-1], dir_fd=fd)  # (the entry just checked, in the directory opened)
        except OSError as e:  # (named by its path, not the bare name given)
            raise OSError(e.errno, e.strerror, str(store.root / "gcroots" / name)) from None
    finally:
        os.close(fd)
    return Root(name, root.target, root.path)
