"""Dependency-ordered upload chunks, for ``kiln push`` and ``kiln copy`` between registries.

A registry publishes a narinfo only once every path it references is published, or
comes earlier in the same ``POST /upload-batch`` (``DirSource.commit_batch``). So the
paths to upload go in one topological order (dependencies first, ``order``), cut into
chunks of at most ``max_count`` paths and about ``max_bytes`` bytes, and a chunk is sent
only after every chunk holding one of its references has been committed (``run``);
chunks with no dependency between them go in parallel, ``jobs`` at a time.

Uploading level by level instead cost one request (two file-system barriers on the
server) per dependency level: 2,000 requests for a chain of 2,000 paths. Here a chain
takes ``len / max_count`` requests, and a wide level still spreads over ``jobs``
requests: the order is cut into pieces of at most ``len / jobs`` paths of one level
each, and a piece that refers to the piece before it (so could not go beside it: a
chain) and to nothing the chunk holding that one did not already wait for is merged
into that chunk while it fits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field

#: a chunk holds at most this many paths (a server takes up to 2,000 per upload batch)
MAX_COUNT = 500
#: ... and about this many bytes of objects (a single larger object goes alone)
MAX_BYTES = 256 << 20


@dataclass(slots=True)
class Chunk:
    """Paths to send in one request, in order; ``deps``: indices of the earlier chunks
    holding their references; ``before``: every chunk committed before this one starts
    (``deps`` and theirs, transitively), as a bit mask (bit ``i``: chunk ``i``), kept
    only where chunks can merge (``max_count`` > 1): N one-path chunks would take
    N²/8 bytes of masks."""

    paths: list[str]
    size: int = 0
    deps: set[int] = field(default_factory=set)
    before: int = 0

    def waits_for(self, i: int) -> bool:
        """Whether chunk ``i`` is committed before this one starts."""
        return bool(self.before >> i & 1)


def plan(
    order: list[str],
    refs: Callable[[str], Iterable[str]],
    size: Callable[[str], int],
    jobs: int,
    max_count: int = MAX_COUNT,
    max_bytes: int = MAX_BYTES,
) -> list[Chunk]:
    """Cut ``order`` (references before referrers; references outside it are taken
    as published already) into chunks; see the module docstring."""
    piece_len = max(1, min(max_count, -(-len(order) // max(1, jobs))))
    chunks: list[Chunk] = []
    where: dict[str, int] = {}  # path -> index of its chunk
    depth: dict[str, int] = {}  # path -> its dependency level within ``order``
    tail: set[str] = set()  # the piece added last to the last chunk

    def close(piece: list[str], nbytes: int) -> None:
        nonlocal tail
        wanted = {r for p in piece for r in refs(p)}
        deps = {where[r] for r in wanted if r in where}
        if chunks:
            last = len(chunks) - 1
            c = chunks[last]
            fits = len(c.paths) + len(piece) <= max_count and c.size + nbytes <= max_bytes
            # it continues the piece before it (a chain) and waits for nothing more
            if fits and not wanted.isdisjoint(tail) and not _mask(deps) & ~(c.before | 1 << last):
                c.paths += piece
                c.size += nbytes
                for p in piece:
                    where[p] = last
                tail = set(piece)
                return
        before = 0
        if max_count > 1:
            before = _mask(deps)
            for d in deps:
                before |= chunks[d].before
        chunks.append(Chunk(list(piece), nbytes, deps, before))
        for p in piece:
            where[p] = len(chunks) - 1
        tail = set(piece)

    piece: list[str] = []
    nbytes = 0
    for p in order:
        n = size(p)
        depth[p] = 1 + max((depth[r] for r in refs(p) if r in depth and r != p), default=-1)
        if piece and (len(piece) >= piece_len or nbytes + n > max_bytes or depth[p] != depth[piece[0]]):
            close(piece, nbytes)
            piece, nbytes = [], 0
        piece.append(p)
        nbytes += n
    if piece:
        close(piece, nbytes)
    return chunks


def _mask(indices: Iterable[int]) -> int:
    m = 0
    for i in indices:
        m |= 1 << i
    return m


async def run(
    chunks: list[Chunk],
    send: Callable[[list[str]], Awaitable[object]],
    jobs: int,
    done: Collection[int] = (),
) -> None:
    """``send(chunk.paths)`` for every chunk but those in ``done`` (sent already), each
    once the chunks it depends on have been sent, at most ``jobs`` at a time. A failed
    chunk's dependents are not sent; the others still are (what they publish is valid
    and spares a re-run), then the first failure in chunk order is raised."""
    sem = asyncio.Semaphore(max(1, jobs))
    tasks: list[asyncio.Future[None]] = []

    async def one(i: int) -> None:
        for d in sorted(chunks[i].deps):
            await tasks[d]  # (raises that chunk's failure: this one is not sent)
        if i in done:
            return
        async with sem:
            await send(chunks[i].paths)

    for i in range(len(chunks)):
        tasks.append(asyncio.ensure_future(one(i)))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
