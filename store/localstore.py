"""``LocalStore``: the on-disk store (objects, materialised trees, SQLite metadata).

Layout under ``root`` (see docs/store.md)::

    config.json            {"store_dir": "/kiln/store", "version": 1}
    db.sqlite              valid paths, references, signatures (store.db)
    objects/<aa>/<sha256 of file>.nar.zst
    <store_dir minus "/">/<hash>-<name>   materialised read-only trees
    gcroots/  temproots/<pid>  locks/  gc.lock  tmp/  quarantine/

Registration protocol of single paths (``_commit``; batches: ``importbatch``, same guarantees):

1. take the GC lock shared (held for the whole operation);
2. stream the content once into ``tmp/<pid>-<rand>/<rand>.*`` (``_Scratch``): the canonical tree
   and the compressed object, hashing both (``objects.TreeIngest``/``NarSink``); fsync the object;
3. take the path's (striped) lock; if the path became valid meanwhile, drop our copy and return;
4. add the path to this process's temp roots;
5. rename the object into ``objects/`` and fsync its directory;
6. remove any stale unregistered tree at the real path, rename ours there, seal it;
7. insert the row (with refs and sigs) in one transaction: now the path is valid.

A crash before 7 leaves at most unregistered files (GC removes them, verify ignores
them); after 7 everything the row promises is in place. Readers re-verify digests.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from . import db
from .errors import StoreError
from .hashes import Hash
from .ingest import PathFilter, TreeIngest
from .locks import FileLock, TempRoots, path_lock_file
from .objects import (
    ZSTD_LEVEL,
    NarSink,
    ObjectInfo,
    TeeReader,
    chunks_of,
    decompress_verified,
    expect_nar,
    fsync_dir,
    ingest_stream,
    object_rel_path,
    publish_object,
    read_object,
)
from .pathinfo import PathInfo
from .paths import DEFAULT_STORE_DIR, StorePath, check_name, check_store_dir, make_source_path, make_text_path
from .trees import mark_topdir, move_into_place, remove_tree, restore_canonical

if TYPE_CHECKING:
    from .gc import GcReport
    from .signing import PublicKey
    from .verify import VerifyReport

CONFIG_VERSION = 1
_SUBDIRS = ("objects", "gcroots", "temproots", "quarantine", "tmp", "locks")


class LocalStore:
    """A local store rooted at ``root`` whose logical store dir is ``store_dir``.

    Thread-safety: one ``LocalStore`` per thread (it owns one SQLite connection);
    several objects, threads and processes may share a root."""

    def __init__(self, root: Path, store_dir: str) -> None:
        self.root = root
        self.store_dir = store_dir
        self.real_store = root / store_dir.lstrip("/")
        self.objects = root / "objects"
        self.tmp = root / "tmp"
        self.gc_lock_path = root / "gc.lock"
        self.conn = db.connect(root / "db.sqlite")
        self.temproots = TempRoots.get(root / "temproots", self.gc_lock_path)
        self._registered: list[str] = []  # our permanent temp roots, dropped by close()
        # this object's scratch directory: made on the first write (and again after a GC
        # removed it), so a registration does not pay a mkdir + rmdir, and - ``tmp/``
        # being an Orlov top directory - its temp files land in an uncluttered inode group
        self._scratch_dir = self.tmp / f"{os.getpid()}-{secrets.token_hex(6)}"
        # removed by close(), or at exit/collection for owners that never call close()
        self._drop_scratch = weakref.finalize(self, _rmdir_quietly, self._scratch_dir)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, root: Path, store_dir: str | None = None, create: bool = True) -> LocalStore:
        """Open the store at ``root``; create it (with ``store_dir``, default
        ``/kiln/store``) if missing and ``create``. An existing store's dir must equal
        ``store_dir`` when that is given."""
        root = Path(os.path.abspath(root))
        cfg = root / "config.json"
        try:
            data = json.loads(cfg.read_text())
        except FileNotFoundError:
            if not create:
                raise StoreError(f"no kiln store at {root} (create one with 'kiln store init')") from None
            data = _init_config(root, check_store_dir(store_dir or DEFAULT_STORE_DIR))
            # all 256 object shards up front: a first copy of thousands of paths would
            # otherwise create them on its way (a mkdir each, ~0.1-0.4 ms on ext4)
            objects = root / "objects"
            objects.mkdir(exist_ok=True)
            for i in range(256):
                (objects / f"{i:02x}").mkdir(exist_ok=True)
            fsync_dir(objects)
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot read store config {cfg}: {e}") from None
        found = data.get("store_dir")
        if not isinstance(found, str):
            raise StoreError(f"store config {cfg} has no 'store_dir'")
        if store_dir is not None and store_dir != found:
            raise StoreError(f"store at {root} uses store dir {found!r}, not {store_dir!r}")
        for d in (*_SUBDIRS, found.lstrip("/")):
            (root / d).mkdir(parents=True, exist_ok=True)
        mark_topdir(root / "tmp")  # writers' temp trees land in uncluttered inode groups
        return cls(root, found)

    def close(self) -> None:
        """Drop this object's temp roots and close the database."""
        if self.conn is None:
            return
        self.temproots.remove(self._registered)
        self._registered.clear()
        self.temproots.release()
        self._drop_scratch()
        self.conn.close()
        self.conn = None

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
        (deterministic: ties broken by path). Raises if a start path is invalid."""
        order: list[str] = []
        state: dict[str, int] = {}
        for start in sorted(set(map(str, paths))):
            if start in state:
                continue
            if not self.is_valid(start):
                self._info(start)  # raises the usual "not valid" error
            stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(db.references(self.conn, start))))]
            state[start] = 1
            while stack:
                node, it = stack[-1]
                nxt = next((r for r in it if r != node and r not in state), None)
                if nxt is None:
                    stack.pop()
                    state[node] = 2
                    order.append(node)
                elif self.is_valid(nxt):
                    state[nxt] = 1
                    stack.append((nxt, iter(sorted(db.references(self.conn, nxt)))))
                else:
                    state[nxt] = 2  # dangling (quarantined) reference: verify reports it
        return order

    # ------------------------------------------------------------------ roots

    def add_root(self, name: str, path: str) -> Path:
        """Make ``gcroots/<name>`` a symlink to the tree of valid ``path`` (replacing an
        existing root of that name atomically)."""
        if not name or "/" in name or name.startswith("."):
            raise StoreError(f"invalid GC root name {name!r} (no '/', not starting with '.')")
        self._info(path)
        link = self.root / "gcroots" / name
        tmp = self.root / "gcroots" / f".{name}.{secrets.token_hex(4)}"
        os.symlink(self.real_path(path), tmp)
        os.rename(tmp, link)
        return link

    def temp_root(self, paths: Iterable[str]) -> contextlib.AbstractContextManager[None]:
        """Context manager: keep ``paths`` (and their closures) alive while it is open.

        Entering waits for a running GC to finish; a path that GC deleted before the root
        was registered stays deleted, so check ``is_valid`` *after* entering (as Nix does
        after ``addTempRoot``)."""
        return self.temproots.hold([str(p) for p in paths])

    # ------------------------------------------------------------------ adding

    def add_path(self, src: Path, name: str | None = None, filter: PathFilter | None = None) -> PathInfo:
        """Add a file or tree as a content-addressed source path (``nix-store --add``):
        path = ``make_source_path(name, nar_hash)``; ``filter(path, kind)`` may skip
        entries below ``src``."""
        src = Path(src)
        name = check_name(name or Path(os.path.abspath(src)).name)
        with self._writing() as tmp:
            tree = tmp / "tree"
            oi = self._ingest(lambda sink: TreeIngest(sink, filter).run(src, tree), tmp)
            sp = make_source_path(name, oi.nar_hash, store_dir=self.store_dir)
            info = PathInfo(
                str(sp),
                oi.nar_hash,
                oi.nar_size,
                file_hash=oi.file_hash,
                file_size=oi.file_size,
                ca=f"fixed:r:sha256:{oi.nar_hash.nix32}",
            )
            return self._commit(info, tree, tmp)

    def add_text(self, name: str, text: bytes, references: Iterable[str]) -> PathInfo:
        """Add a text path (a ``.drv`` file): a non-executable file whose path is
        ``make_text_path(name, text, references)``."""
        refs = sorted(set(map(str, references)))
        sp = make_text_path(name, text, [self.parse_path(r) for r in refs], self.store_dir)
        if self.is_valid(str(sp)):
            self._keep(str(sp), locked=False)  # root first, then re-check: GC may have run
            existing = self.query(str(sp))
            if existing is not None:
                return existing
        with self._writing() as tmp:
            tree = tmp / "tree"
            fd = os.open(tree, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(text)
            oi = self._ingest(lambda sink: TreeIngest(sink).run(tree, canonicalise=True), tmp, threads=0)
            info = PathInfo(
                str(sp),
                oi.nar_hash,
                oi.nar_size,
                references=tuple(refs),
                file_hash=oi.file_hash,
                file_size=oi.file_size,
                ca=f"text:sha256:{Hash.sha256_of(text).nix32}",
            )
            return self._commit(info, tree, tmp)

    def add_texts(self, items: Iterable[tuple[str, bytes, Iterable[str]]]) -> list[PathInfo]:
        """``add_text`` for many ``(name, text, references)`` at once, in dependency
        order (a text's references valid or earlier in ``items``), with group commit:
        the NARs and objects are made in memory and registered by ``import_objects``
        (one syncfs and one transaction per few hundred paths instead of an fsync and a
        commit each). Returns the infos in ``items`` order."""
        import io

        import zstandard

        from .nar import file_nar

        todo: list[tuple[PathInfo, BinaryIO]] = []
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        for name, text, references in items:
            refs = sorted(set(map(str, references)))
            sp = make_text_path(name, text, [self.parse_path(r) for r in refs], self.store_dir)
            nar = file_nar(text)
            obj = compressor.compress(nar)
            info = PathInfo(
                str(sp),
                Hash.sha256_of(nar),
                len(nar),
                references=tuple(refs),
                file_hash=Hash.sha256_of(obj),
                file_size=len(obj),
                ca=f"text:sha256:{Hash.sha256_of(text).nix32}",
            )
            todo.append((info, io.BytesIO(obj)))
        return self.import_objects(todo) if todo else []

    def register_built(
        self, path: str, tree: Path, references: Iterable[str], deriver: str | None
    ) -> PathInfo:
        """Register a finished build output ``tree`` (file or directory, on the same file
        system as the store) as input-addressed ``path``. The tree is canonicalised in
        place (setuid/setgid files, devices, sockets and fifos are rejected), archived,
        and moved to ``real_path(path)``. If ``path`` is already valid the existing info is
        returned and ``tree`` is left alone."""
        sp = self.parse_path(path)
        path = str(sp)
        refs = tuple(sorted(set(map(str, references))))
        with self._writing() as tmp, FileLock(self._path_lock(sp)):
            existing = self.query(path)
            if existing is not None:
                self._keep(path)
                return existing
            oi = self._ingest(lambda sink: TreeIngest(sink).run(Path(tree), canonicalise=True), tmp)
            info = PathInfo(
                path, oi.nar_hash, oi.nar_size, refs, deriver, file_hash=oi.file_hash, file_size=oi.file_size
            )
            if os.lstat(tree).st_dev == os.stat(self.real_store).st_dev:
                return self._commit(info, Path(tree), tmp, have_lock=True)
            # build dir on another file system: materialise from the new object instead
            copy = tmp / "tree"
            assert info.file_hash is not None and info.file_size is not None
            stream = read_object(
                tmp / "object", path, (info.file_hash, info.file_size), (info.nar_hash, info.nar_size)
            )
            restore_canonical(stream, copy)
            return self._commit(info, copy, tmp, have_lock=True)

    def import_nar(self, info: PathInfo, nar_src: BinaryIO | Iterable[bytes]) -> PathInfo:
        """Add ``info.path`` from its uncompressed NAR (substitution). The NAR hash and
        size are checked while streaming; on mismatch nothing is added."""
        self._check_importable(info)
        with self._writing() as tmp, FileLock(self._path_lock(self.parse_path(info.path))):
            existing = self.query(info.path)
            if existing is not None:
                self._keep(info.path)
                return existing
            tree = tmp / "tree"

            def run(sink: NarSink) -> None:
                restore_canonical(ingest_stream(chunks_of(nar_src), sink), tree)

            oi = self._ingest(run, tmp)
            expect_nar(info, oi.nar_hash, oi.nar_size)
            return self._commit(
                replace(info, file_hash=oi.file_hash, file_size=oi.file_size), tree, tmp, True
            )

    def import_object(self, info: PathInfo, zst: BinaryIO) -> PathInfo:
        """Add ``info.path`` from a compressed object (as served by a registry), keeping
        the compressed bytes as the object. Checks ``info.file_hash``/``file_size`` (if
        set) and the NAR hash and size."""
        self._check_importable(info)
        with self._writing() as tmp, FileLock(self._path_lock(self.parse_path(info.path))):
            existing = self.query(info.path)
            if existing is not None:
                self._keep(info.path)
                return existing
            tree, obj = tmp / "tree", tmp / "object"
            tee = TeeReader(zst, os.open(obj, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            try:
                expect_file = None if info.file_hash is None else (info.file_hash, info.file_size or 0)
                stream = decompress_verified(tee, info.path, expect_file, (info.nar_hash, info.nar_size))
                restore_canonical(stream, tree)
                os.fsync(tee.fd)
            finally:
                os.close(tee.fd)
            file_hash = Hash("sha256", tee.sha.digest())
            return self._commit(replace(info, file_hash=file_hash, file_size=tee.size), tree, tmp, True)

    def import_objects(self, items: Iterable[tuple[PathInfo, BinaryIO]]) -> list[PathInfo]:
        """``import_object`` for many paths with group commit (see ``store.importbatch``):
        ``items`` in dependency order (a path's references must be valid or come earlier),
        each compressed object verified while it streams (file hash/size if set, NAR
        hash/size always). Returns the infos in ``items`` order (already-valid paths: the
        existing info). On a mismatch the paths before the bad one are registered, the
        bad one and those after it are not, and the error is raised. ``items`` may be a
        generator that blocks (e.g. on downloads): batches commit as they fill."""
        from .importbatch import import_objects

        with self._writing() as tmp:
            (tmp / "batch").mkdir()
            return import_objects(self, items, tmp / "batch")

    def add_signatures(self, path: str, sigs: Iterable[str]) -> None:
        self._info(path)
        db.add_signatures(self.conn, path, sigs)

    # ------------------------------------------------------------------ maintenance

    def verify(
        self, repair: bool = False, trusted: list[PublicKey] | None = None, sigs_needed: int = 0
    ) -> VerifyReport:
        """Re-hash every object and tree; see ``store.verify``. Returns a VerifyReport."""
        from .verify import verify

        return verify(self, repair=repair, trusted=trusted, sigs_needed=sigs_needed)

    def gc(self, dry_run: bool = False) -> GcReport:
        """Delete everything not reachable from a root; see ``store.gc``. Returns a GcReport."""
        from .gc import collect

        return collect(self, dry_run=dry_run)

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

    def _path_lock(self, sp: StorePath) -> Path:
        return path_lock_file(self.root, sp.hash_part)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[_Scratch]:
        """Shared GC lock + private temp names ``tmp/<pid>-<rand>/<rand>.<what>`` (in this
        object's scratch directory), removed on exit."""
        with FileLock(self.gc_lock_path, shared=True):
            # GC (which excludes us now) deletes writers' scratch dirs: recreate if needed
            with contextlib.suppress(FileExistsError):
                os.mkdir(self._scratch_dir, 0o700)
            scratch = _Scratch(self._scratch_dir / secrets.token_hex(6))
            try:
                yield scratch
            finally:
                scratch.remove()

    def _ingest(self, run, tmp: _Scratch, threads: int | None = None) -> ObjectInfo:
        fd = os.open(tmp / "object", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        sink = NarSink(fd) if threads is None else NarSink(fd, threads=threads)
        try:
            run(sink)
        except BaseException:
            sink.abort()
            raise
        return sink.finish()

    def _check_importable(self, info: PathInfo, also_valid: set[str] | frozenset[str] = frozenset()) -> None:
        self.parse_path(info.path)
        if info.nar_size <= 0:
            raise StoreError(f"cannot import {info.path}: NAR size is {info.nar_size}")
        self._check_refs(info, also_valid)

    def _check_refs(self, info: PathInfo, also_valid: set[str] | frozenset[str] = frozenset()) -> None:
        missing = [
            r for r in info.references if r != info.path and r not in also_valid and not self.is_valid(r)
        ]
        if missing:
            raise StoreError(
                f"cannot register {info.path}: its references are not valid in this store: "
                + ", ".join(missing[:5])
                + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
            )

    def _commit(self, info: PathInfo, tree: Path, tmp: _Scratch, have_lock: bool = False) -> PathInfo:
        """Steps 3-7 of the registration protocol (caller holds the shared GC lock)."""
        sp = self.parse_path(info.path)
        self._check_refs(info)
        with contextlib.nullcontext() if have_lock else FileLock(self._path_lock(sp)):
            existing = self.query(info.path)
            self._keep(info.path)
            if existing is not None:
                return existing
            assert info.file_hash is not None
            publish_object(tmp / "object", self.objects, info.file_hash)
            move_into_place(tree, self.real_store / sp.base, tmp / "stale")
            info = replace(info, registration_time=int(time.time()))
            db.insert(self.conn, info, sp.hash_part)
            return info


class _Scratch:
    """A writer's temp names: ``scratch / "object"`` is ``<scratch dir>/<rand>.object``.
    Plain names in the store object's long-lived scratch directory rather than a temp
    directory per registration: that would cost a mkdir and an rmdir (two inode
    operations) each time. GC treats every ``<pid>-…`` entry of ``tmp/`` as a writer's
    leftover, so these are cleaned up after a crash too."""

    __slots__ = ("base", "used")

    def __init__(self, base: Path) -> None:
        self.base = base
        self.used: set[Path] = set()

    def __truediv__(self, what: str) -> Path:
        p = self.base.with_name(f"{self.base.name}.{what}")
        self.used.add(p)
        return p

    def remove(self) -> None:
        for p in self.used:
            remove_tree(p)


def _rmdir_quietly(d: Path) -> None:
    """Remove a scratch directory that should be empty now; anything else (already gone,
    still in use) is left for GC."""
    with contextlib.suppress(OSError):
        os.rmdir(d)


def _init_config(root: Path, store_dir: str) -> dict:
    """Create ``root`` and its ``config.json`` atomically (another process may race us:
    ``link`` fails if the config appeared, and then that one wins)."""
    root.mkdir(parents=True, exist_ok=True)
    data = {"store_dir": store_dir, "version": CONFIG_VERSION}
    tmp = root / f".config.json.{os.getpid()}.{secrets.token_hex(4)}"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, root / "config.json")
    except FileExistsError:
        data = json.loads((root / "config.json").read_text())
    finally:
        os.unlink(tmp)
    fsync_dir(root)
    return data
