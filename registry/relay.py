"""Relaying verified objects and narinfos from one registry to another (``kiln copy``
between registries: ``copy.between``).

``Relay.fetch`` downloads a group's objects into a scratch directory, each verified
(file and NAR digests, bounded by the signed sizes) before it is kept; ``publish``
uploads them with their narinfos, a narinfo never before its object or its references
(``uploadplan``). A group is at most ``GROUP_OBJECTS`` paths or about ``GROUP_BYTES``
bytes of objects, which bounds the scratch space (under ``$TMPDIR``); a full scratch
file system is said with ``scratch_full``.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from kiln.store import narinfo as ni
from kiln.store.errors import FormatError, KilnError
from kiln.store.hashes import Hash

from . import layout, uploadplan
from .client import Client
from .downloadsink import Sink
from .push import MAX_FRAMES, upload_sliced
from .substitute import batchable, batches
from .verify import expect_info, nar_file_hash, verified_bytes, verifier_for

#: a relay group: at most this many paths, or about this many bytes of objects
GROUP_OBJECTS = 500
GROUP_BYTES = 256 << 20


class Relay:
    """Moves verified objects and their narinfos from ``src`` to ``dst`` (see
    ``between``)."""

    def __init__(self, src: Client, dst: Client, sem: asyncio.Semaphore, jobs: int) -> None:
        self.src, self.dst, self.sem, self.jobs = src, dst, sem, jobs

    async def fetch(self, infos: list[ni.NarInfo], scratch: Path) -> dict[str, Path]:
        """Download and verify the objects of ``infos`` (distinct digests) into
        ``scratch``: hex digest -> file. Raises for the first that fails."""
        files: dict[str, Path] = {}
        small, alone = batchable(infos)
        cut = list(batches(small))
        for k, batch in enumerate(cut):
            if not await self._batch(batch, scratch, files):
                alone += [i for b in cut[k:] for i in b]  # no batch endpoint: one request each
                break
        await asyncio.gather(*(self._one(i, scratch, files) for i in alone))
        return files

    async def _batch(self, batch: list[ni.NarInfo], scratch: Path, files: dict[str, Path]) -> bool:
        by_hex = {nar_file_hash(i).hex: i for i in batch}
        errors: list[KilnError] = []

        def got(h: Hash, data: bytes | None) -> None:
            info = by_hex.get(h.hex)
            if info is None or errors:
                return
            if data is None:
                errors.append(KilnError(f"{self.src.url}/{info.url} is missing"))
                return
            try:
                verified_bytes(info, data)
            except FormatError as e:  # past a limit: name the path
                errors.append(KilnError(f"{info.path}: {e}"))
                return
            except KilnError as e:
                errors.append(e)
                return
            f = scratch / h.hex
            f.write_bytes(data)
            files[h.hex] = f

        async with self.sem:
            sizes = {x: i.file_size for x, i in by_hex.items() if i.file_size is not None}
            if not await self.src.blob_batch([nar_file_hash(i) for i in batch], got, sizes):
                return False
        if errors:
            raise errors[0]
        for x, i in by_hex.items():
            if x not in files:
                raise KilnError(f"{self.src.url} did not send {i.url}")
        return True

    async def _one(self, info: ni.NarInfo, scratch: Path, files: dict[str, Path]) -> None:
        async with self.sem:
            f = scratch / nar_file_hash(info).hex
            # bounded: the download stops at FileSize, the NAR inside at NarSize
            ver = verifier_for(info)
            with open(f, "wb") as out:

                def write(chunk: bytes) -> None:
                    ver.update(chunk)
                    out.write(chunk)

                def restart() -> None:  # (a cut download starting over: what came is discarded)
                    nonlocal ver
                    out.seek(0)
                    out.truncate()
                    ver = verifier_for(info)

                try:
                    if not await self.src.download(info.url, Sink(write, restart)):
                        raise KilnError(f"{self.src.url}/{info.url} is missing")
                except FormatError as e:  # past a limit: name the path
                    raise KilnError(f"{info.path}: {e}") from None
            expect_info(info, ver.finish())
            files[nar_file_hash(info).hex] = f

    async def publish(self, group: list[ni.NarInfo], files: dict[str, Path]) -> None:
        """Upload ``group``'s new objects (``files``) and narinfos (in topological order;
        references outside it are published already): chunks ordered by
        ``uploadplan`` (a chunk once those holding its references are in)."""

        def key(i: ni.NarInfo) -> str:
            return i.path.rsplit("/", 1)[1][:32]

        # every path whose object is new carries it, also where two paths share one: the
        # chunks go up concurrently, and a narinfo must never arrive before its object
        # (the server keeps one copy of each object)
        info = {i.path: i for i in group}
        frames = {i.path: (key(i), i.render().encode(), files.get(nar_file_hash(i).hex)) for i in group}

        def refs(p: str) -> tuple[str, ...]:
            return info[p].references

        def size(p: str) -> int:
            return (info[p].file_size or 0) if frames[p][2] is not None else 0

        chunks = uploadplan.plan(list(info), refs, size, self.jobs, MAX_FRAMES)
        if await upload_sliced(self.dst, [frames[p] for p in chunks[0].paths]):

            async def send(paths: list[str]) -> None:
                if not await upload_sliced(self.dst, [frames[p] for p in paths]):
                    raise KilnError(f"{self.dst.url} stopped taking upload batches during the copy")

            await uploadplan.run(chunks, send, self.jobs, done={0})
            return

        async def put_nar(h: str, f: Path) -> None:
            async with self.sem:
                await self.dst.put_file(layout.nar_key(Hash.parse(h, "sha256")), f)

        async def put_info(paths: list[str]) -> None:
            h, text, _ = frames[paths[0]]
            await self.dst.put_bytes(layout.narinfo_key(h), text)

        await asyncio.gather(
            *(put_nar(f.name, f) for f in {f for _, _, f in frames.values() if f is not None})
        )
        # one narinfo per request, each once its references' are in
        await uploadplan.run(
            uploadplan.plan(list(info), refs, lambda p: 0, self.jobs, 1), put_info, self.jobs
        )


def scratch_full(scratch: Path, e: OSError) -> str:
    """Why a copy between registries stopped on a full scratch file system: it names the
    directory, where it comes from (``$TMPDIR``) and how much it needs."""
    return (
        f"the scratch directory {scratch} is on a full file system ({e.strerror}): a copy between "
        f"registries stages up to {GROUP_BYTES >> 20} MiB of objects there at a time (a bigger object "
        "whole); it is made under $TMPDIR (now "
        f"{tempfile.gettempdir()}): set TMPDIR to a directory with room and run the copy again "
        "(what was published stays)"
    )
