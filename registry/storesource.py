"""``StoreSource``: a local kiln store served as a registry (read-only).

Narinfos are rendered from the store's database: ``URL`` is
``nar/<nix32 FileHash>.nar.zst`` and the NAR bytes are the store's object file itself
(the store keeps zstd objects named by the digest of the compressed file), so nothing is
recompressed. With a signing key, missing signatures are added on the fly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import threading
from pathlib import Path

from kiln.store import db
from kiln.store import narinfo as ni
from kiln.store.hashes import Hash
from kiln.store.objects import object_rel_path
from kiln.store.signing import SecretKey, sign_info

from . import layout
from .backends import CACHE_BYTES, CACHE_MAX, CACHE_ONE_MAX, Source
from .narcache import NarinfoCache


class StoreSource(Source):
    def __init__(
        self, root: Path, sign_key: SecretKey | None, store_dir: str | None = None, priority: int = 40
    ) -> None:
        from kiln.store.localstore import LocalStore

        self.store = LocalStore.open(root, store_dir=store_dir, create=False)  # never serve an empty new one
        self.store_dir = self.store.store_dir
        self.sign_key = sign_key
        self._info = layout.cache_info_text(self.store_dir, priority).encode()
        # hash part -> (its object, narinfo)
        self._cache = NarinfoCache(CACHE_MAX, CACHE_BYTES, CACHE_ONE_MAX)
        self._lock = threading.Lock()
        self._version = -1  # the store database's data_version the cache was filled at

    def cache_info(self) -> bytes:
        return self._info

    def narinfo(self, hash_part: str) -> bytes | None:
        with self._lock:
            # another process committed to the store (``kiln store sign`` added a
            # signature, a GC, a build): rendered narinfos may be stale; SQLite's
            # data_version moves exactly then, and reading it costs no I/O
            version = self.store.conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._version:
                self._cache.clear()
                self._version = version
        hit = self._cache.get(hash_part)
        if hit is not None:
            obj, body = hit
            # a path GC deleted since it was rendered must not be advertised any more
            # (its NAR GET would 404): the object is what is served, one stat is cheap
            if os.path.exists(obj):
                return body
            self._cache.drop(hash_part)
        with self._lock:
            info = self.store.query_by_hash_part(hash_part)
            if info is None or info.file_hash is None:
                return None
            file_hash = info.file_hash
            if self.sign_key is not None and not any(
                s.startswith(self.sign_key.name + ":") for s in info.sigs
            ):
                info = dataclasses.replace(info, sigs=(*info.sigs, sign_info(info, self.sign_key)))
        rendered = ni.NarInfo.from_pathinfo(info, layout.nar_key(file_hash), "zstd").render().encode()
        # (a wide one is rendered each time: ``narcache``)
        self._cache.put(hash_part, self.store.objects / object_rel_path(file_hash), rendered)
        return rendered

    def object_file(self, digest: Hash) -> Path | None:
        # The store names objects by the digest of the compressed file, exactly what
        # nar/ and blobs/ URLs carry, so no lookup table is needed.
        p = self.store.objects / object_rel_path(digest)
        return p if p.is_file() else None

    def file(self, key: str) -> Path | None:
        return None

    def att_file(self, hash_part: str, kind: str) -> Path | None:
        p = Path(self.store.root) / "attestations" / hash_part / f"{kind}{layout.ATT_SUFFIX}"
        return p if p.is_file() else None

    def att_listing(self, hash_part: str) -> dict[str, str]:
        d = Path(self.store.root) / "attestations" / hash_part
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            return {}
        out = {}
        for n in names:
            if n.endswith(layout.ATT_SUFFIX) and not n.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    out[n[: -len(layout.ATT_SUFFIX)]] = hashlib.sha256((d / n).read_bytes()).hexdigest()
        return out

    def narinfo_by_nar_hash(self, nar_sha256_hex: str) -> bytes | None:
        """One query, through the database's index on ``paths(nar_hash)``."""
        try:
            want = Hash("sha256", bytes.fromhex(nar_sha256_hex))
        except ValueError:
            return None
        with self._lock:
            found = db.path_by_nar_hash(self.store.conn, want)
        return self.narinfo(found.rsplit("/", 1)[1][:32]) if found is not None else None
