"""What a server serves: a registry directory (``DirSource``) or a local kiln store
(``storesource.StoreSource``), both behind ``Source``.

``DirSource`` wraps a ``Storage``. A narinfo's bytes are cached in memory after the
first read and checked against the file on each use (one ``stat``: a signature merge, a
mirror sync or another worker replaces the file by rename); misses are never cached (a
push must become visible at once). The digests computed while a NAR streamed in are
remembered (in memory; on disk in ``.kiln/nars/<hex>`` for large NARs) so admitting its
narinfo does not re-read a large NAR; one that arrived otherwise is re-hashed on demand.

A server's ``DirSource`` (``zstd_only``) serves only zstd narinfos (a 200 narinfo whose
NAR, xz as ``nix copy`` writes by default, is a 404 makes Nix fail instead of trying its
next substituter; ``foreigncache``); the verdict is cached with the bytes (``b""`` under
the file's stamp). A zstd narinfo published replaces such a narinfo, on a server or not. Readers see every
narinfo, so a client can say why it cannot use one (``verify.check_narinfo``).

A batch links in only the NARs its admitted narinfos name (``batchcommit``); a NAR
``PUT`` on its own stays until ``kiln registry verify --delete-unnamed`` (or a mirror
prune) finds no narinfo naming it an hour later (``unnamedobjects``)."""

from __future__ import annotations

import abc
import dataclasses
import os
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from kiln.store import narinfo as ni
from kiln.store.errors import KilnError
from kiln.store.hashes import Hash
from kiln.store.paths import check_store_dir

from . import layout, objstamp
from .admitca import merged_ca, published
from .dirlock import NARINFO_LOCK, dir_lock
from .narcache import NarinfoCache
from .narhashmap import NarHashMap
from .storage import Durability, FileStorage, GroupSync, open_storage
from .verify import Digests, NarVerifier, nar_file_hash

CACHE_MAX = 200_000
#: ... and at most this many bytes of narinfo (a narinfo may be 4 MiB: entries alone do
#: not bound a server's memory); one over ``CACHE_ONE_MAX`` is read each time instead
CACHE_BYTES = 256 << 20
CACHE_ONE_MAX = 1 << 20
#: objects at least this large get an on-disk digest record (re-hashing them is costly)
RECORD_MIN = 1 << 20
#: ``publish_narinfo``'s message for a narinfo that changed nothing (a 200 may also merge)
UNCHANGED = "already published"


@dataclasses.dataclass(slots=True)
class BatchEntry:
    """One path of a batched upload: its narinfo bytes, a temp file for them, and the
    staged NAR (closed temp file + digests computed while it streamed in), if sent."""

    hash_part: str
    narinfo: bytes
    narinfo_file: BinaryIO | None = None
    nar_file: BinaryIO | None = None
    nar_digests: Digests | None = None
    error: str | None = None
    #: the status of ``error``: 400, or 403 for a narinfo without trusted signatures
    error_status: int = 400
    #: the narinfo, admitted (by the server before it read the NAR; else by ``commit_batch``)
    info: ni.NarInfo | None = None


class Source(abc.ABC):
    """Read side shared by both sources (a ``DirSource`` also has its ``storage``; a
    store has none: nothing is written to it)."""

    store_dir: str

    @abc.abstractmethod
    def cache_info(self) -> bytes: ...

    @abc.abstractmethod
    def narinfo(self, hash_part: str) -> bytes | None: ...

    @abc.abstractmethod
    def object_file(self, digest: Hash) -> Path | None: ...

    @abc.abstractmethod
    def file(self, key: str) -> Path | None: ...

    @abc.abstractmethod
    def att_file(self, hash_part: str, kind: str) -> Path | None:
        """The file of a path's attestation of ``kind`` (``layout.att_key``), if any."""
        ...

    @abc.abstractmethod
    def att_listing(self, hash_part: str) -> dict[str, str]:
        """``{kind: sha256 hex}`` of a path's attestations ({} when none)."""
        ...

    @abc.abstractmethod
    def narinfo_by_nar_hash(self, nar_sha256_hex: str) -> bytes | None:
        """The narinfo of the path whose NarHash is this sha256 (hex), if one is served."""
        ...


def _record_key(file_hash: Hash) -> str:
    """Where a directory keeps the digests of a large object (``Digests.to_record``)."""
    return f"{layout.PRIVATE_DIR}/nars/{file_hash.hex}"


def _is_store_root(d: Path) -> bool:
    """Whether ``d`` holds a kiln store (its database and config, ``kiln store init``)."""
    return (d / "db.sqlite").is_file() and (d / "config.json").is_file()


class DirSource(Source):
    def __init__(
        self,
        directory: Path | str,
        *,
        store_dir: str | None = None,
        durable: bool = True,
        priority: int = 40,
        create: bool = True,
        zstd_only: bool = False,
    ) -> None:
        """A registry directory; one without ``nix-cache-info`` is made a new registry if
        ``create``, else refused (``KilnError``: a reader never makes one). ``zstd_only``
        (servers): ``narinfo`` answers None for a narinfo that is not ``Compression: zstd``."""
        self.zstd_only = zstd_only
        local = urlparse(str(directory))
        where = Path(local.path if local.scheme == "file" else str(directory))
        if local.scheme in ("", "file") and not (where / layout.CACHE_INFO).is_file():
            if not create:
                raise KilnError(f"{directory} is not a registry (no {layout.CACHE_INFO} there)")
            if _is_store_root(where):
                # (making a registry there would scatter one over the store and copy nothing
                # into the store itself, while reporting success)
                raise KilnError(
                    f"{directory} is a kiln store, not a registry (a registry made there would "
                    f"hold the paths, the store would not): copy into a store from a registry with "
                    f"'kiln copy --from URL --to store --store {where} PATH...' (from another local "
                    "store, through a registry: push the paths to one first, or 'kiln serve --store' it)"
                )
        self.storage = open_storage(directory, durable=durable, create=create)  # (a reader makes nothing)
        info = self.storage.read(layout.CACHE_INFO)
        if info is None:
            if not create:
                raise KilnError(f"{directory} is not a registry (no {layout.CACHE_INFO} there)")
            self.store_dir = check_store_dir(store_dir or "/kiln/store")  # (written for every reader)
            self.storage.put_bytes(
                layout.CACHE_INFO, layout.cache_info_text(self.store_dir, priority).encode()
            )
        else:
            self.store_dir = layout.cache_info_of(info, str(directory)).get("StoreDir", "")
            if store_dir and store_dir != self.store_dir:
                raise KilnError(f"registry {directory} has StoreDir {self.store_dir}, not {store_dir}")
        self._info = self.storage.read(layout.CACHE_INFO) or b""
        # hash part -> (file stamp, bytes)
        self._cache = NarinfoCache(CACHE_MAX, CACHE_BYTES, CACHE_ONE_MAX)
        self._digests: dict[str, Digests] = {}
        self._lock = threading.Lock()
        self.by_nar = NarHashMap(self.storage, self.store_dir)  # (see narinfo_by_nar_hash)
        #: one file-system barrier shared by concurrent uploads (group commit)
        self.group_sync = GroupSync(self.storage.barrier)

    def cache_info(self) -> bytes:
        return self._info

    def narinfo(self, hash_part: str) -> bytes | None:
        """The narinfo's bytes. Cached, but checked against the file each time (one
        ``stat``): narinfos are replaced, not immutable — a signature merge, a mirror
        sync or another server worker writes a new file (a rename: a new inode)."""
        key = layout.narinfo_key(hash_part)
        p = self.storage.local_path(key)
        if p is None:  # no cheap way to see a rewrite: not cached
            return self._served(self.storage.read(key))
        try:
            st = os.stat(p)
        except OSError:
            self._cache.drop(hash_part)
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        hit = self._cache.get(hash_part)
        if hit is not None and hit[0] == stamp:
            return (hit[1] or None) if self.zstd_only else hit[1]
        body = self.storage.read(key)
        if body is not None:
            body = self._served(body)
            # the stamp is from before the read: a file replaced in between is read again
            # next time, never served stale (a refused one is kept as b"": no re-read either)
            self._cache.put(hash_part, stamp, b"" if body is None else body)
        return body

    def _served(self, body: bytes | None) -> bytes | None:
        """``body`` unless this source is ``zstd_only`` and it names a file not served."""
        if body is None or not self.zstd_only or layout.served_narinfo(body):
            return body
        return None

    def object_file(self, digest: Hash) -> Path | None:
        """The file holding the compressed NAR with this digest: ``blobs/`` first, then
        ``nar/`` (directories written by ``nix copy --to file://...?compression=zstd``
        have only the latter)."""
        if not isinstance(self.storage, FileStorage):
            return None
        for key in (layout.blob_key(digest), layout.nar_key(digest)):
            p = self.storage.local_path(key)
            if p is not None and p.is_file():
                return p
        return None

    def file(self, key: str) -> Path | None:
        p = self.storage.local_path(key)
        return p if p is not None and p.is_file() else None

    def att_file(self, hash_part: str, kind: str) -> Path | None:
        return self.file(layout.att_key(hash_part, kind))

    def att_listing(self, hash_part: str) -> dict[str, str]:
        from .attest_transfer import listing

        return listing(self.storage, hash_part)

    def narinfo_by_nar_hash(self, nar_sha256_hex: str) -> bytes | None:
        """From a map of every narinfo's NarHash (``narhashmap``: what this process
        publishes at once, what others publish when a miss finds the directory changed,
        reading only the narinfos that changed). May block for that: callers on an
        event loop run it in an executor."""
        h = self.by_nar.lookup(nar_sha256_hex)
        if h is None:
            return None
        body = self.narinfo(h)
        if body is None:  # deleted since it was mapped (--delete-bad, a prune) or not served: another
            # path with the same NAR may still be served; the map finds it once refreshed
            self.by_nar.forget(nar_sha256_hex, h)
            again = self.by_nar.lookup(nar_sha256_hex)
            body = self.narinfo(again) if again is not None and again != h else None
        return body

    # -------------------------------------------------------- write side

    def commit_object(self, tmp: BinaryIO, got: Digests, durable: Durability = None) -> None:
        """Publish a verified staged NAR under ``nar/`` and ``blobs/`` and remember its
        digests: in memory, and for large objects also in ``.kiln/nars/<hex>`` so
        admitting the narinfo later (maybe in another worker) need not re-read it, and
        ``kiln serve`` may call it immutable. The record is a cache (recomputed if lost or
        torn), so it is never fsynced; it is written after the object, so a record never
        speaks for an object that failed. It vouches for the files published here by
        their stamps (``objstamp``), taken once the temp name is gone (its unlink would
        change their ctime): ``tmp``'s name is removed here, callers use it no more."""
        keys = [layout.blob_key(got.file_hash), layout.nar_key(got.file_hash)]
        self.storage.commit_staged(tmp, keys, durable)
        if got.file_size >= RECORD_MIN:
            inode = None
            if self.storage.local_path(keys[0]) is not None:
                try:
                    st = os.stat(tmp.name)
                    inode = (st.st_dev, st.st_ino)
                    os.unlink(tmp.name)  # (the staging block's exit tolerates its absence)
                except OSError:
                    inode = None
            self._write_record(got, keys, inode, None)
        if len(self._digests) >= CACHE_MAX:
            self._digests.clear()
        self._digests[got.file_hash.hex] = got

    def _write_record(
        self, got: Digests, keys: list[str], inode: tuple[int, int] | None, read: objstamp.Stamp | None
    ) -> None:
        """Write ``got``'s digest record, vouching for the files at ``keys`` that are the
        verified ``inode``, for the stamp ``read`` (of a file hashed just now), and for
        those an earlier record vouched for that are unchanged (``objstamp``)."""
        key = _record_key(got.file_hash)
        paths = [p for k in keys if (p := self.storage.local_path(k)) is not None]
        stamps = objstamp.current(paths, inode, objstamp.stamps_of(self.storage.read(key)))
        if read is not None:
            stamps.append(read)
        self.storage.put_bytes(key, objstamp.record(got, stamps), durable=False)

    def vouch(self, got: Digests, keys: list[str], stamp: objstamp.Stamp) -> None:
        """Record that the files at ``keys`` (names of one file) with ``stamp`` hash to
        ``got``: a verifier read them whole, found them unchanged meanwhile and as their
        narinfo says (``registry verify``; ``objtrust`` then serves them immutable)."""
        self._write_record(got, keys, None, stamp)

    def object_digests(self, file_hash: Hash) -> Digests | None:
        """The digests of object ``file_hash`` if it is in the registry, else None: from
        memory or its record when the object is there with the size remembered (``registry
        verify --delete-bad`` deletes a bad object and leaves both behind), else by
        hashing it (and recording it, vouching for the file read if it did not change
        while it was read)."""
        sizes = (self.storage.size(layout.nar_key(file_hash)), self.storage.size(layout.blob_key(file_hash)))
        known = self._digests.get(file_hash.hex)
        if known is not None and known.file_size in sizes:
            return known
        rec = self.storage.read(_record_key(file_hash))
        if rec is not None:
            got = Digests.from_record(rec, file_hash)
            if got is not None and got.file_size in sizes:
                return got
            # torn (never fsynced), damaged or stale: recomputed below and written again
        f = self.storage.open(layout.nar_key(file_hash)) or self.storage.open(layout.blob_key(file_hash))
        if f is None:
            return None
        ver = NarVerifier()
        with f:
            before = objstamp.fstamp(f)
            for chunk in iter(lambda: f.read(1 << 20), b""):
                ver.update(chunk)
            after = objstamp.fstamp(f)
        got = ver.finish()
        if got.file_hash.digest == file_hash.digest and got.file_size >= RECORD_MIN:
            keys = [layout.blob_key(file_hash), layout.nar_key(file_hash)]
            self._write_record(got, keys, None, before if before is not None and before == after else None)
        return got

    def commit_batch(
        self, entries: list[BatchEntry], admit: Callable[[str, str], ni.NarInfo]
    ) -> list[tuple[int, str]]:
        """Publish many (narinfo, optional staged NAR) pairs with two file-system barriers
        in total (``batchcommit``: a NAR is linked in only if an admitted narinfo of the
        batch names it). ``admit(hash_part, text)`` parses and checks signatures (raises
        ``KilnError``) for the entries without ``info``. Each entry gets its own (status,
        message); one bad entry does not stop the others."""
        from .batchcommit import commit

        return commit(self, entries, admit)

    def missing_reference(self, info: ni.NarInfo, also: Collection[str] = ()) -> str | None:
        """The error for a path one of whose references (but itself) is neither
        published here nor among the hash parts ``also``; None if all are. A path is
        published only after its references (pushes go dependencies first), so a client
        that substitutes it finds its whole closure here."""
        for r in info.references:
            h = r.rsplit("/", 1)[1][:32]
            if r != info.path and h not in also and not self._published(h):
                return f"error: {info.path} refers to {r}, which is not published here; push it first"
        return None

    def _published(self, hash_part: str) -> bool:
        """Whether a narinfo for ``hash_part`` is published here: for a server
        (``zstd_only``), one it serves; else any (a ``stat``, not a read)."""
        if self.zstd_only:
            return self.narinfo(hash_part) is not None
        return self.storage.exists(layout.narinfo_key(hash_part))

    def publish_narinfo(self, hash_part: str, info: ni.NarInfo, body: bytes) -> tuple[int, str]:
        """Create-if-absent; identical → 200; same content with other signatures → merged;
        different content → 409. Content is the path, NAR hash and size and references
        (what signatures cover): the same NAR compressed into another file (another
        producer or kiln version, or Nix) is the same content, and the narinfo published
        first, with its file, stays. A false published ``CA:`` is repaired by the new
        (checked) narinfo's (``admitca.merged_ca``)."""
        key = layout.narinfo_key(hash_part)
        missing = self.missing_reference(info)
        if missing is not None:
            return 409, missing
        # create-if-absent is atomic (link), so only the rare compare/merge needs the lock
        if self.storage.put_bytes(key, body, exclusive=True, durable=self.group_sync):
            self.by_nar.learn(info.nar_hash.hex, hash_part)
            return 201, "published"
        # a read-modify-write of the file: other writer processes (workers) too
        with self._lock, dir_lock(self.storage, NARINFO_LOCK):
            old_body = self.storage.read(key) or b""
            if old_body == body:
                return 200, UNCHANGED
            # junk: a 400; an unparseable CA is read as a false one (repaired below)
            old = published(old_body, self.store_dir)
            if not layout.served_narinfo(old_body):
                # a narinfo (parsed: not junk) kiln does not serve or read (xz, nix copy's default):
                # the zstd upload takes its place, or the path stayed unreadable by kiln for ever
                self.storage.put_bytes(key, body)
                self._cache.drop(hash_part)
                self.by_nar.learn(info.nar_hash.hex, hash_part)
                return (
                    201,
                    f"published (replaced a {layout.narinfo_compression(old_body)} narinfo not served)",
                )
            same = (old.path, old.nar_hash, old.nar_size, old.references) == (
                info.path,
                info.nar_hash,
                info.nar_size,
                info.references,
            )
            if not same:
                return (
                    409,
                    f"error: {info.path} is already published with different content (NarHash {old.nar_hash})",
                )
            sigs = tuple(dict.fromkeys(old.sigs + info.sigs))
            got = self.object_digests(nar_file_hash(info))  # (admitted)
            ca, repaired = merged_ca(self.storage, old, info, got) if got is not None else (old.ca, "")
            if sigs == old.sigs and not repaired:
                return 200, UNCHANGED
            merged = dataclasses.replace(old, sigs=sigs, ca=ca)
            self.storage.put_bytes(key, merged.render().encode())
            self._cache.drop(hash_part)
            return 200, f"repaired: {repaired}" if repaired else "signatures merged"
