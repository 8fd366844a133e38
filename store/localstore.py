"""``LocalStore``: the on-disk store (objects, materialised trees, SQLite metadata).

Layout under ``root`` (see docs/store.md)::

    config.json            {"store_dir": "/kiln/store", "version": 1}
    db.sqlite              valid paths, references, signatures (store.db)
    objects/<aa>/<sha256 of file>.nar.zst
    <store_dir minus "/">/<hash>-<name>   materialised read-only trees
    gcroots/  temproots/<pid>  locks/  gc.lock  tmp/  quarantine/
    reserved               space kept for ``kiln store gc`` on a full disk (``reserve``)
    attestations/<hash part>/  logs/  keys/  eval-cache/   (beside the store: docs/store.md)

Writing paths (``add_*``, ``import_*``, ``register_built``) and the registration protocol
live in ``registration`` (the ``Registering`` mixin), as does ``madehere``'s flag.

A store on a read-only file system is opened for reading (``read_only``): its database
as SQLite can read it there (``dbreadonly``), temp roots kept by holding the GC lock
(``readonlyroots``); writing to it fails, saying the file system is read-only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from . import db, reserve
from .errors import NoStoreError, StoreError
from .locks import RootHolder, TempRoots
from .objects import fsync_dir, object_rel_path
from .objread import read_object
from .pathinfo import PathInfo
from .paths import DEFAULT_STORE_DIR, StorePath, check_store_dir, new_store_dir_problem
from .perms import DIR_MODE, PRIVATE_DIR_MODE, check_store, make_dir, strip_store_acls
from .readonlyroots import ReadOnlyRoots
from .registration import Registering
from .storeconfig import CONFIG_VERSION as CONFIG_VERSION  # (moved there; imported from here too)
from .storeconfig import config_keep_outputs, config_reserved, init_config
from .storeconfig import config_store_dir as config_store_dir
from .trees import mark_topdir

if TYPE_CHECKING:
    import sqlite3

    from .gc import GcReport
    from .gcremove import Progress
    from .roots import RootChange
    from .signing import PublicKey
    from .verify import VerifyReport

#: each is also in ``paths.STORE_ROOT_ENTRIES``, which no store dir may start with; with
#: its mode (explicit: the umask only narrows it; ``perms``)
_SUBDIRS = {
    "objects": DIR_MODE,
    "gcroots": DIR_MODE,
    "temproots": PRIVATE_DIR_MODE,
    "quarantine": DIR_MODE,
    "tmp": DIR_MODE,
    "locks": PRIVATE_DIR_MODE,
}


#: ``add_root``'s temporary link is ``gcroots/<this><name>.<8 hex>``: a name kept for it
#: (GC deletes such a link, left by a killed ``add_root``; any other link is a root, hand-made
#: ``.name`` ones included)
ROOT_TEMP_PREFIX = ".kiln-tmp-root."
#: longest root name, in bytes: ``ROOT_TEMP_PREFIX<name>.<8 hex>`` fits in 255
ROOT_NAME_MAX = 255 - len(ROOT_TEMP_PREFIX) - 9


def check_root_name(name: str) -> str:
    """``name`` if it can name a GC root (``gcroots/<name>``), else ``StoreError``."""
    if not name or "/" in name or name.startswith(".") or not name.isprintable():
        raise StoreError(
            f"invalid GC root name {name!r} (printable characters, no '/', not starting with '.')"
        )
    if len(os.fsencode(name)) > ROOT_NAME_MAX:
        raise StoreError(
            f"GC root name too long: {len(os.fsencode(name))} bytes, at most {ROOT_NAME_MAX} (its "
            f"temporary link, {ROOT_TEMP_PREFIX}<name>.<8 hex>, must fit a file name's 255)"
        )
    return name


class LocalStore(Registering):
    """A local store rooted at ``root`` whose logical store dir is ``store_dir``.

    Thread-safety: one ``LocalStore`` per thread (it owns one SQLite connection);
    several objects, threads and processes may share a root."""

    def __init__(
        self,
        root: Path,
        store_dir: str,
        reserved: int = reserve.DEFAULT_RESERVED,
        full_disk_read: bool = False,
        keep_outputs: bool = True,
    ) -> None:
        self.root = root
        self.store_dir = store_dir
        #: GC keeps the outputs of live derivations (config.json's ``keep_outputs``, ``gcedges``)
        self.keep_outputs = keep_outputs
        #: bytes of reserved space (``reserve``; config.json's ``reserved``), and what
        #: ``open(release_reserve=True)`` released of it (for ``gc`` to take back)
        self.reserved = reserved
        self.reserve_released = 0
        self.real_store = root / store_dir.lstrip("/")
        self.objects = root / "objects"
        self.tmp = root / "tmp"
        self.gc_lock_path = root / "gc.lock"
        self._conn: sqlite3.Connection | None = db.connect(root / "db.sqlite", full_disk_read)
        #: why this store cannot be written (it is on a read-only file system), or None
        self.read_only: str | None = getattr(self._conn, "read_only", None)
        self.temproots: RootHolder = (
            TempRoots.get(root / "temproots", self.gc_lock_path)
            if self.read_only is None
            else ReadOnlyRoots(self.gc_lock_path)
        )
        self._registered: list[str] = []  # our permanent temp roots, dropped by close()
        # this object's scratch directory: made on the first write (and again after a GC
        # removed it), so a registration does not pay a mkdir + rmdir, and - ``tmp/``
        # being an Orlov top directory - its temp files land in an uncluttered inode group
        self._scratch_dir = self.tmp / f"{os.getpid()}-{os.urandom(6).hex()}"
        # close() runs this; so does exit (the kiln command ends without interpreter
        # teardown, kiln.main.exit_now) or collection, for owners that never call close()
        self._release = weakref.finalize(self, _release, self._conn, self._scratch_dir)

    @property
    def conn(self) -> sqlite3.Connection:
        """The store's SQLite connection; ``StoreError`` once ``close`` has run."""
        if self._conn is None:
            raise StoreError(f"the store object for {self.root} is closed; open it again to use it")
        return self._conn

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        root: Path,
        store_dir: str | None = None,
        create: bool = True,
        release_reserve: bool = False,
        full_disk_read: bool = False,
    ) -> LocalStore:
        """Open the store at ``root``; create it (with ``store_dir``, default
        ``/kiln/store``) if missing and ``create``. An existing store's dir must equal
        ``store_dir`` when that is given. A store another user could change is refused
        (``perms.check_store``). Its reserved space is made once the database is open, if
        missing and the disk has room (``reserve.ensure``); ``release_reserve`` deletes it
        before the database is opened instead (``kiln store gc`` on a full disk: the open
        itself needs space; ``gc.collect`` makes it again). ``full_disk_read``: a
        command that reads and ends soon may open the database on a disk too full for
        SQLite's ``-shm`` (``db.connect``)."""
        root = Path(os.path.abspath(root))
        cfg = root / "config.json"
        try:
            data = json.loads(cfg.read_text())
        except (FileNotFoundError, NotADirectoryError):
            if not create:
                raise NoStoreError(f"no kiln store at {root} (create one with 'kiln store init')") from None
            wanted = check_store_dir(DEFAULT_STORE_DIR if store_dir is None else store_dir, local=True)
            if problem := new_store_dir_problem(wanted):
                raise StoreError(f"cannot make a store with store dir {wanted!r}: {problem}") from None
            # all 256 object shards up front: a first copy of thousands of paths would
            # otherwise create them on its way (a mkdir each, ~0.1-0.4 ms on ext4). Before
            # the config, which marks the store made: a creation killed in between is
            # redone by the next open, not left with some shards for good
            if root.is_dir():  # (someone else's directory is refused before kiln writes in it)
                check_store(root, wanted)
            objects = root / "objects"
            make_dir(objects)
            strip_store_acls(root, wanted)  # (before anything is made in them: perms docstring)
            for i in range(256):
                make_dir(objects / f"{i:02x}")
            fsync_dir(objects)
            data = init_config(root, wanted)
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot read store config {cfg}: {e}") from None
        found = config_store_dir(cfg, data)
        reserved = config_reserved(cfg, data)
        keep_outputs = config_keep_outputs(cfg, data)
        if store_dir is not None and store_dir != found:
            raise StoreError(f"store at {root} uses store dir {found!r}, not {store_dir!r}")
        check_store(root, found)
        for d, mode in (*_SUBDIRS.items(), (found.lstrip("/"), DIR_MODE)):
            try:
                make_dir(root / d, mode)
            except OSError as e:
                if e.errno != errno.EROFS:  # (read-only: opened for reading, below)
                    raise
        strip_store_acls(root, found)  # (a store made by an older kiln, or its new entries)
        mark_topdir(root / "tmp")  # writers' temp trees land in uncluttered inode groups
        if not release_reserve:
            store = cls(root, found, reserved, full_disk_read, keep_outputs)
            reserve.ensure(root, reserved)  # (after the database: never taking what it needs)
            return store
        released = reserve.release(root)
        try:
            store = cls(root, found, reserved, full_disk_read, keep_outputs)
        except BaseException:
            reserve.restore(root, reserved, released)  # (no collection to make it again)
            raise
        store.reserve_released = released
        return store

    def close(self) -> None:
        """Drop this object's temp roots and close the database."""
        if self._conn is None:
            return
        self.temproots.remove(self._registered)
        self._registered.clear()
        self.temproots.release()
        self._release()  # closes the connection
        self._conn = None

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ paths

    def parse_path(self, path: str | StorePath) -> StorePath:
        if isinstance(path, StorePath):
            if path.store_dir != self.store_dir:
                raise StoreError(f"path {path} is not in this store ({self.store_dir})")
            return path
        return StorePath.parse(path, self.store_dir)

    def real_path(self, path: str | StorePath) -> Path:
        """Where the tree of logical ``path`` (or a file inside it) lives on disk."""
        if isinstance(path, str) and path.startswith(self.store_dir + "/"):
            base, _, sub = path[len(self.store_dir) + 1 :].partition("/")
            sp = StorePath.parse_base(base, self.store_dir)
            return self.real_store / sp.base / sub if sub else self.real_store / sp.base
        return self.real_store / self.parse_path(path).base

    def resolve(self, arg: str) -> tuple[str, str]:
        """Map a user-supplied path (logical, or real under the root, possibly with a
        subpath, or a symlink to one) to ``(store path, subpath)``."""
        for cand in (arg, os.path.abspath(arg)):
            for prefix in (self.store_dir, str(self.real_store)):
                if cand.startswith(prefix + "/"):
                    base, _, sub = cand[len(prefix) + 1 :].partition("/")
                    return str(StorePath.parse_base(base, self.store_dir)), sub.strip("/")
        real = os.path.realpath(arg)
        if real != arg and os.path.abspath(arg) != real:
            return self.resolve(real)
        raise StoreError(f"{arg!r} is not a path in the store {self.store_dir} (root {self.root})")

    # ------------------------------------------------------------------ queries

    def query(self, path: str) -> PathInfo | None:
        return db.query(self.conn, str(path))

    def is_valid(self, path: str) -> bool:
        return db.is_valid(self.conn, str(path))

    def query_by_hash_part(self, hash_part: str) -> PathInfo | None:
        return db.query_by_hash_part(self.conn, hash_part)

    def all_paths(self) -> list[str]:
        return db.all_paths(self.conn)

    def referrers(self, path: str) -> list[str]:
        return db.referrers(self.conn, path)

    def _info(self, path: str) -> PathInfo:
        info = self.query(path)
        if info is None:
            raise StoreError(f"path {path} is not valid in the store at {self.root}")
        return info

    def object_path(self, path: str) -> Path:
        """The ``.nar.zst`` object of valid ``path``."""
        info = self._info(path)
        assert info.file_hash is not None
        return self.objects / object_rel_path(info.file_hash)

    def nar(self, path: str) -> Iterator[bytes]:
        """The NAR of ``path`` from its object; raises ``HashMismatch`` after the last
        chunk if the object or the NAR does not match the database."""
        info = self._info(path)
        assert info.file_hash is not None and info.file_size is not None
        return read_object(
            self.objects / object_rel_path(info.file_hash),
            path,
            (info.file_hash, info.file_size),
            (info.nar_hash, info.nar_size),
        )

    def closure(self, paths: Iterable[str]) -> list[str]:
        """All paths reachable from ``paths`` via references, dependencies first
        (deterministic: ties broken by path). Raises if a start path is invalid.

        A reference that is not valid (quarantined, or deleted behind the store's back) is
        left out silently: GC, push and copy walk what is there. A command that *uses* or
        *describes* the closure must not: it asks ``closure_with_holes`` instead."""
        return self.closure_with_holes(paths)[0]

    def closure_with_holes(self, paths: Iterable[str]) -> tuple[list[str], dict[str, tuple[str, ...]]]:
        """``(closure(paths), holes)``: ``holes`` maps each reference of a closure member
        that is not valid in the store to the members that reference it (both sorted; empty
        when the closure is complete). A path with a hole cannot be used: ``kiln run``,
        ``kiln sbom`` refuse it (``IncompleteClosure``), ``kiln store info`` and ``kiln
        verify`` report it. Raises if a start path is invalid."""
        from .closurequery import walk

        # (a dangling reference, quarantined: not a member but a hole; a start path
        # found dangling first is skipped, not raised for; another raises the usual
        # "not valid" error)
        return walk(paths, lambda p: db.references(self.conn, p), self.is_valid, self._info)

    # ------------------------------------------------------------------ roots

    def add_root(self, name: str, path: str) -> RootChange:
        """Make ``gcroots/<name>`` a link to the tree of valid ``path``, relative
        (``../kiln/store/<base>``: right wherever the store is moved), replacing an
        existing root of that name atomically; returns what changed, with what the
        replaced root named (``roots.add_root``)."""
        from .roots import add_root

        return add_root(self, check_root_name(name), path, ROOT_TEMP_PREFIX)

    def temp_root(self, paths: Iterable[str]) -> contextlib.AbstractContextManager[None]:
        """Context manager: keep ``paths`` (and their closures) alive while it is open.

        Entering waits for a running GC to finish; a path that GC deleted before the root
        was registered stays deleted, so check ``is_valid`` *after* entering (as Nix does
        after ``addTempRoot``)."""
        return self.temproots.hold([str(p) for p in paths])

    # ------------------------------------------------------------------ adding

    def add_signatures(self, path: str, sigs: Iterable[str]) -> None:
        self._info(path)
        db.add_signatures(self.conn, path, sigs)

    def remove_signatures(self, path: str, which: Callable[[PathInfo, str], bool]) -> list[str]:
        """Delete, atomically, and return the signatures of ``path`` ``which(info, sig)`` picks."""
        return db.remove_signatures(self.conn, path, which)

    # ------------------------------------------------------------------ maintenance

    def verify(
        self,
        repair: bool = False,
        trusted: list[PublicKey] | None = None,
        sigs_needed: int = 0,
        progress: Progress | None = None,
    ) -> VerifyReport:
        """Re-hash every object and tree; see ``store.verify``. Returns a VerifyReport.
        ``progress(checked, total)`` is told as paths are read."""
        from .verify import verify

        return verify(self, repair=repair, trusted=trusted, sigs_needed=sigs_needed, progress=progress)

    def gc(
        self, dry_run: bool = False, progress: Progress | None = None, **settings: bool | int | None
    ) -> GcReport:
        """Delete everything not reachable from a root; see ``store.gc``. Returns a GcReport.
        ``progress(done, total)`` is told how the deletion goes once the GC lock is free;
        ``settings``: ``gc.collect``'s ``keep_outputs``, ``keep_failed_days``,
        ``eval_cache_days``, ``keep_quarantine_days`` (each None or left out: the store's
        setting)."""
        from .gc import collect

        return collect(self, dry_run=dry_run, progress=progress, **settings)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ internals

    def _keep(self, path: str, locked: bool = True) -> None:
        """``keep([path])``; ``locked``: the caller holds the GC lock already."""
        self.keep([path], locked=locked)

    def keep(self, paths: Iterable[str], *, locked: bool = False) -> None:
        """Make ``paths`` temp roots of this store object until ``close`` (Nix's
        ``addTempRoot``): a GC then keeps them and their closures. Waits for a running
        GC; check ``is_valid`` *after* this call, as a path GC deleted before stays gone."""
        paths = [str(p) for p in paths]
        self.temproots.add(paths, locked=locked)
        self._registered.extend(paths)


def _release(conn: sqlite3.Connection, scratch: Path) -> None:
    """Close the database connection (a committed WAL is checkpointed and removed) and
    remove the scratch directory, which should be empty now; a scratch directory already
    gone or still in use is left for GC. Takes no lock: it may run wherever the cyclic
    garbage collector does (temp roots of a store never closed go at exit instead:
    ``locks.TempRoots``)."""
    conn.close()
    with contextlib.suppress(OSError):
        os.rmdir(scratch)
