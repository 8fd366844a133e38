"""A ``Substituter``'s downloads of compressed objects (mixed into it), each handed to the
importer through the ``concurrent.futures.Future`` of its path: one request each
(``_one``), hashed while it arrives into a spooled temp file and aborted as soon as it
exceeds the narinfo's ``FileSize`` (and emptied again if a cut download must start
over: ``downloadsink.Sink``), or many small ones in one ``blob_batch``
(``_batch``), each checked against the narinfo's ``FileHash`` and size before it is
handed on. A mismatch is a ``HashMismatch`` on that path's future, naming the path, the
object (``nar/<nix32>.nar.zst``: ``verify.object_of``) and the registry, with the
narinfo's digest and size against what came; a registry without the batch endpoint (or
one busy through every retry) gets one request per object.

Invariant: when ``_one`` or ``_batch`` returns or raises, the future of each of its
paths is resolved (a file, or an exception); a file the importer never takes is closed
by the caller (``Substituter._fetch_many``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import tempfile
from typing import TYPE_CHECKING, Any

from kiln.store import narinfo as ni
from kiln.store.errors import HashMismatch, KilnError
from kiln.store.hashes import Hash

from .client import Client, RegistryError
from .downloadsink import Sink
from .progress import Progress
from .verify import nar_file_hash, object_of


class Downloads:
    """The download half of ``Substituter``, which provides ``_source`` (path -> the
    registry URL that answered for it) and ``client(url)`` (what it reads that registry
    through)."""

    if TYPE_CHECKING:
        _source: dict[str, str]

        def client(self, url: str) -> Client: ...

    async def _download(self, info: ni.NarInfo, sem: asyncio.Semaphore, prog: Progress) -> Any:
        url = self._source.get(info.path)
        if url is None:
            raise KilnError(f"{info.path} was not obtained from query_many of this substituter")
        f = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115 - returned to the caller
        sha = hashlib.sha256()
        size = 0
        limit = info.file_size or 0

        def write(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)
            if size > limit:
                raise HashMismatch(
                    f"download of {object_of(info)} from {url}",
                    f"{nar_file_hash(info).to_nix32()} ({limit} bytes)",
                    f"more than {limit} bytes",
                )
            sha.update(chunk)
            f.write(chunk)
            prog.add(0, len(chunk))

        def restart() -> None:  # (a cut download starting over: what came is discarded)
            nonlocal size, sha
            prog.add(0, -size)
            f.seek(0)
            f.truncate()
            sha, size = hashlib.sha256(), 0

        try:
            async with sem:
                ok = await self.client(url).download(info.url, Sink(write, restart))
            if not ok:
                raise KilnError(f"{url}/{info.url} is missing although the registry lists {info.path}")
            if sha.digest() != nar_file_hash(info).digest or size != limit:
                raise HashMismatch(
                    f"download of {object_of(info)} from {url}",
                    f"{nar_file_hash(info).to_nix32()} ({info.file_size} bytes)",
                    f"{Hash('sha256', sha.digest()).to_nix32()} ({size} bytes)",
                )
        except BaseException:
            f.close()
            raise
        f.seek(0)
        return f

    def _check(self, info: ni.NarInfo, url: str, data: bytes) -> None:
        if len(data) != info.file_size or hashlib.sha256(data).digest() != nar_file_hash(info).digest:
            raise HashMismatch(
                f"download of {object_of(info)} from {url}",
                f"{nar_file_hash(info).to_nix32()} ({info.file_size} bytes)",
                f"{Hash.sha256_of(data).to_nix32()} ({len(data)} bytes)",
            )

    async def _batch(
        self,
        url: str,
        batch: list[ni.NarInfo],
        results: dict[str, concurrent.futures.Future],
        sem: asyncio.Semaphore,
        prog: Progress,
    ) -> None:
        """Fetch ``batch`` (small objects, all from ``url``) with one ``blob_batch``;
        where the registry cannot, one download each. Resolves ``results[path]``."""
        by_hex: dict[str, list[ni.NarInfo]] = {}
        for i in batch:
            by_hex.setdefault(nar_file_hash(i).hex, []).append(i)

        def got(h: Hash, data: bytes | None) -> None:
            for info in by_hex.get(h.hex, []):
                fut = results[info.path]
                if fut.done():
                    continue
                if data is None:
                    fut.set_exception(
                        KilnError(f"{url} lacks the object of {object_of(info)} although it lists the path")
                    )
                    continue
                try:
                    self._check(info, url, data)
                except HashMismatch as e:
                    fut.set_exception(e)
                    continue
                prog.add(0, len(data))
                fut.set_result(io.BytesIO(data))

        try:
            async with sem:
                try:
                    ok = await self.client(url).blob_batch(
                        [nar_file_hash(by_hex[h][0]) for h in by_hex],
                        got,
                        {h: size for h in by_hex if (size := by_hex[h][0].file_size) is not None},
                    )
                except RegistryError as e:
                    # busy through every retry (its batches are bounded, and slow clients
                    # may hold them all): plain downloads are not bounded so, and what a
                    # batch delivered before it failed is already resolved
                    if e.status != 503:
                        raise
                    ok = False
        except BaseException as e:
            for i in batch:
                if not results[i.path].done():
                    results[i.path].set_exception(e if isinstance(e, Exception) else KilnError(str(e)))
            raise
        if not ok:  # no batch endpoint here (or busy): one request per object, as for big ones
            await asyncio.gather(
                *(self._one(i, results, sem, prog) for i in batch if not results[i.path].done())
            )
            return
        for i in batch:
            if not results[i.path].done():
                results[i.path].set_exception(KilnError(f"{url} did not send the object of {object_of(i)}"))

    async def _one(
        self,
        info: ni.NarInfo,
        results: dict[str, concurrent.futures.Future],
        sem: asyncio.Semaphore,
        prog: Progress,
    ) -> None:
        fut = results[info.path]
        try:
            f = await self._download(info, sem, prog)
        except BaseException as e:  # handed to whoever waits for this path
            if not fut.done():
                fut.set_exception(
                    e if isinstance(e, Exception) else KilnError(f"download of {info.path} stopped")
                )
            if not isinstance(e, Exception):
                raise
            return
        if fut.done():
            f.close()
        else:
            fut.set_result(f)
