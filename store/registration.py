"""Writing paths into a ``LocalStore``: ``add_path``/``add_text``/``add_texts``,
``register_built`` and the ``import_*`` family, all through one registration protocol.

Registration protocol of single paths (``Registering._commit``; batches: ``importbatch``, same guarantees):

1. take the GC lock shared (held for the whole operation);
2. stream the content once into ``tmp/<pid>-<rand>/<rand>.*`` (``_Scratch``): the canonical tree
   and the compressed object, hashing both (``objects.TreeIngest``/``NarSink``); fsync the object;
3. take the path's (striped) lock; if the path became valid meanwhile, drop our copy and return;
   if another live process has placed the path's tree and not registered it yet (a build,
   ``stagedbuild``), release the lock, wait for that process, and start step 3 again
   (``_registration_lock``): its tree may be mounted in a running sandbox;
4. add the path to this process's temp roots;
5. rename the object into ``objects/`` and fsync its directory;
6. remove any stale unregistered tree at the real path, rename ours there, seal it;
7. insert the row (with refs and sigs) in one transaction: now the path is valid.

Each row says if the path was made here (``add_*``, ``register_built``) or imported: ``madehere``.

A crash before 7 leaves at most unregistered files (GC removes them, verify ignores
them); after 7 everything the row promises is in place. Readers re-verify digests.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from . import db, hookmarks
from .errors import FormatError, StoreError
from .hashes import Hash
from .ingest import PathFilter, TreeIngest
from .locks import FileLock, PlacerWait, path_lock_file
from .narsink import NarSink
from .objects import ZSTD_LEVEL, ObjectInfo, chunks_of, ingest_stream, publish_object
from .objread import TeeReader, decompress_verified, expect_nar, file_expectation, read_object
from .pathadmit import admitted_sigs, check_ca, tree_content
from .pathinfo import PathInfo
from .paths import StorePath, check_name, make_source_path, make_text_path
from .scratch import Scratch as _Scratch
from .scratch import writing
from .temprootscan import live_rooter
from .treeplan import check_source
from .trees import move_into_place, restore_canonical

if TYPE_CHECKING:
    import sqlite3

    from .localstore import LocalStore


class Registering:
    """The write half of ``LocalStore`` (a mixin: it uses the store's ``root``,
    ``store_dir``, ``real_store``, ``objects``, ``conn``, ``gc_lock_path``,
    ``_scratch_dir``, ``query``/``is_valid``/``parse_path``/``_keep``)."""

    if TYPE_CHECKING:  # that contract, as the host (``LocalStore``) defines it
        root: Path
        store_dir: str
        real_store: Path
        objects: Path
        gc_lock_path: Path
        _scratch_dir: Path

        @property
        def conn(self) -> sqlite3.Connection: ...
        def query(self, path: str) -> PathInfo | None: ...
        def is_valid(self, path: str) -> bool: ...
        def parse_path(self, path: str | StorePath) -> StorePath: ...
        def _keep(self, path: str, locked: bool = True) -> None: ...

    def add_path(self, src: Path, name: str | None = None, filter: PathFilter | None = None) -> PathInfo:
        """Add a file or tree as a content-addressed source path (``nix-store --add``):
        path = ``make_source_path(name, nar_hash)``; ``filter(path, kind)`` may skip
        entries below ``src``. An explicit ``name`` must be valid (``""`` is refused);
        ``src`` must exist and must not contain the store root (the copy, made under the
        root's ``tmp/``, would be walked and copied again, endlessly)."""
        src = Path(src)
        check_source(src, filter, self.root, self._scratch_dir.parent)  # (tmp/, where the copy is made)
        if name is None:
            base = Path(os.path.abspath(src)).name
            try:
                name = check_name(base)
            except FormatError as e:

                def shown(t: str) -> str:  # a byte that is not UTF-8 as \xff, not \udcff
                    return os.fsencode(t).decode("utf-8", "backslashreplace")

                why = (
                    str(e)
                    if shown(base) == base
                    else f"its name '{shown(base)}' has bytes that are not UTF-8"
                )
                raise StoreError(
                    f"cannot add {shown(str(src))}: {why} (give the path a name: --name NAME)"
                ) from None
        else:
            name = check_name(name)
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
            return self._commit(info, tree, tmp, made_here=True)

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
            return self._commit(info, tree, tmp, made_here=True)

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
        return self.import_objects(todo, made_here=True) if todo else []

    def register_built(
        self,
        path: str,
        tree: Path,
        references: Iterable[str],
        deriver: str | None,
        stop: Callable[[], bool] | None = None,
    ) -> PathInfo:
        """Register a finished build output ``tree`` (file or directory, on the same file
        system as the store) as input-addressed ``path``. The tree is canonicalised in
        place (setuid/setgid files, devices, sockets and fifos are rejected), archived,
        and moved to ``real_path(path)``. If ``path`` is already valid the existing info is
        returned and ``tree`` is left alone. ``stop`` bounds the archiving (a build's
        ``--timeout``): ``TreeIngest`` asks it per MiB and raises ``IngestStopped``, and
        nothing is registered."""
        sp = self.parse_path(path)
        path = str(sp)
        refs = tuple(sorted(set(map(str, references))))
        with self._writing() as tmp, self._registration_lock(sp):
            existing = self.query(path)
            if existing is not None:
                self._keep(path)
                return existing
            oi = self._ingest(
                lambda sink: TreeIngest(sink, stop=stop).run(Path(tree), canonicalise=True), tmp
            )
            info = PathInfo(
                path, oi.nar_hash, oi.nar_size, refs, deriver, file_hash=oi.file_hash, file_size=oi.file_size
            )
            if os.lstat(tree).st_dev == os.stat(self.real_store).st_dev:
                return self._commit(info, Path(tree), tmp, have_lock=True, made_here=True)
            # build dir on another file system: materialise from the new object instead
            copy = tmp / "tree"
            assert info.file_hash is not None and info.file_size is not None
            stream = read_object(
                tmp / "object", path, (info.file_hash, info.file_size), (info.nar_hash, info.nar_size)
            )
            restore_canonical(stream, copy)
            return self._commit(info, copy, tmp, have_lock=True, made_here=True)

    def import_nar(self, info: PathInfo, nar_src: BinaryIO | Iterable[bytes]) -> PathInfo:
        """Add ``info.path`` from its uncompressed NAR (substitution). The NAR hash and
        size are checked while streaming, then its ``ca`` (``pathadmit.check_ca``); on a
        mismatch nothing is added. Signatures: ``pathadmit.admitted_sigs``."""
        info = admitted_sigs(info, store_root=self.root)
        with self._importing(info) as (tmp, existing):
            if existing is not None:
                return existing
            tree = tmp / "tree"

            def run(sink: NarSink) -> None:
                restore_canonical(ingest_stream(chunks_of(nar_src), sink), tree)

            oi = self._ingest(run, tmp)
            expect_nar(info, oi.nar_hash, oi.nar_size)
            check_ca(info, tree_content(tree, info.nar_hash))
            return self._commit(
                replace(info, file_hash=oi.file_hash, file_size=oi.file_size), tree, tmp, True
            )

    def import_object(self, info: PathInfo, zst: BinaryIO) -> PathInfo:
        """Add ``info.path`` from a compressed object (as served by a registry), keeping
        the compressed bytes as the object. Checks ``info.file_hash``/``file_size`` (if
        set), the NAR hash and size and the ``ca`` as ``import_nar`` does; a mismatch names
        the path and the object by its digest (``importbatch.incoming``), as a batch does."""
        from .importbatch import incoming

        info = admitted_sigs(info, store_root=self.root)
        with self._importing(info) as (tmp, existing):
            if existing is not None:
                return existing
            tree, obj = tmp / "tree", tmp / "object"
            tee = TeeReader(zst, os.open(obj, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            try:
                stream = decompress_verified(
                    tee, incoming(info), file_expectation(info), (info.nar_hash, info.nar_size)
                )
                restore_canonical(stream, tree)
                os.fsync(tee.fd)
            finally:
                os.close(tee.fd)
            check_ca(info, tree_content(tree, info.nar_hash))
            file_hash = Hash("sha256", tee.sha.digest())
            return self._commit(replace(info, file_hash=file_hash, file_size=tee.size), tree, tmp, True)

    def import_objects(
        self, items: Iterable[tuple[PathInfo, BinaryIO]], made_here: bool = False
    ) -> list[PathInfo]:
        """``import_object`` for many paths with group commit (see ``store.importbatch``):
        ``items`` in dependency order (a path's references must be valid or come earlier),
        each compressed object verified while it streams (file hash/size if set, NAR
        hash/size always). Returns the infos in ``items`` order (already-valid paths: the
        existing info). On a mismatch the paths before the bad one are registered, the
        bad one and those after it are not, and the error is raised. ``items`` may be a
        generator that blocks (e.g. on downloads): batches commit as they fill. The paths
        are recorded as imported (``madehere``), unless ``made_here`` (``add_texts``: this
        store's own derivations)."""
        from .importbatch import import_objects

        with self._writing() as tmp:
            (tmp / "batch").mkdir()
            return import_objects(self._store(), items, tmp / "batch", made_here)

    # ------------------------------------------------------------------ registration internals

    def _store(self) -> LocalStore:
        """This object as the whole store it is the write half of (for the functions taking one)."""
        from .localstore import LocalStore

        assert isinstance(self, LocalStore), type(self)
        return self

    def _path_lock(self, sp: StorePath) -> Path:
        return path_lock_file(self.root, sp.hash_part)

    @contextlib.contextmanager
    def _registration_lock(self, sp: StorePath) -> Iterator[None]:
        """Hold ``sp``'s registration lock, taken at a moment when no other live process
        has its tree placed but unregistered (step 3 of the protocol). Such a tree is a
        build's output that later builds may have mounted: rather than replace it as a
        crashed writer's leftover, release the lock and wait until that process has
        registered the path (the caller then finds it valid) or is gone. While the lock
        is held nobody can place a tree there (``stagedbuild.place`` takes it too)."""
        wait: PlacerWait | None = None
        while True:
            with FileLock(self._path_lock(sp)):
                pid = self._placer(sp)
                if pid is None:
                    yield
                    return
            wait = wait or PlacerWait(str(sp))
            wait.sleep(pid)

    def _placer(self, sp: StorePath) -> int | None:
        """The pid of another live process whose tree sits unregistered at ``sp``'s real
        path (it names the path in its temp roots), else None."""
        if not os.path.lexists(self.real_store / sp.base) or self.is_valid(str(sp)):
            return None
        return live_rooter(self.root / "temproots", str(sp))

    @contextlib.contextmanager
    def _importing(self, info: PathInfo) -> Iterator[tuple[_Scratch, PathInfo | None]]:
        """For importing ``info``: check it, take the shared GC lock and the path's lock,
        and yield (scratch names, the existing info if the path is valid already, which
        is then kept as a temp root)."""
        self._check_importable(info)
        with self._writing() as tmp, self._registration_lock(self.parse_path(info.path)):
            existing = self.query(info.path)
            if existing is not None:
                self._keep(info.path)
            yield tmp, existing

    def _writing(self) -> contextlib.AbstractContextManager[_Scratch]:
        """``scratch.writing`` in this object's scratch directory."""
        self.conn  # noqa: B018 - a closed store says so before anything is written
        return writing(self.gc_lock_path, self._scratch_dir)

    def _ingest(
        self, run: Callable[[NarSink], object], tmp: _Scratch, threads: int | None = None
    ) -> ObjectInfo:
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

    def _commit(
        self, info: PathInfo, tree: Path, tmp: _Scratch, have_lock: bool = False, made_here: bool = False
    ) -> PathInfo:
        """Steps 3-7 of the registration protocol (caller holds the shared GC lock);
        ``made_here``: the row says the path was made in this store, else imported
        (``madehere``)."""
        sp = self.parse_path(info.path)
        self._check_refs(info)
        with contextlib.nullcontext() if have_lock else self._registration_lock(sp):
            existing = self.query(info.path)
            self._keep(info.path)
            if existing is not None:
                return existing
            assert info.file_hash is not None
            publish_object(tmp / "object", self.objects, info.file_hash)
            try:
                move_into_place(tree, self.real_store / sp.base, tmp / "stale")
            except OSError as e:
                # name the store directory, not the temp tree (same errno: a full disk is
                # still one to the server's 507). The object stays for GC: a writer of
                # another path with the same NAR may be using it (only GC's exclusive
                # lock makes deleting an object safe)
                raise OSError(e.errno, f"{e.strerror} (placing {info.path})", str(self.real_store)) from None
            # before the row: a kill between the two leaves no free marker on a valid import
            hookmarks.drop_free(self._store(), [info.path])
            info = replace(info, registration_time=int(time.time()))
            db.insert(self.conn, info, sp.hash_part, ultimate=made_here)
            return info
