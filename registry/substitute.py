"""Substitution: fetch store paths from registries instead of building them.

``Substituter(registries=[(url, priority)], trusted=[PublicKey], sigs_needed=1)``:

- ``query_many(paths)`` asks the registries in priority order (lower number first, as
  in Nix; a priority of None is the registry's own, its ``nix-cache-info`` ``Priority:``,
  read before the first query as Nix does, else ``DEFAULT_PRIORITY``; ties keep the order
  given) for the narinfos of ``paths`` — one batched request per registry for all the
  paths still unresolved — and returns only narinfos that parse for the local store dir,
  describe exactly the requested path, point at a zstd NAR, and carry signatures from
  at least ``sigs_needed`` distinct trusted keys. Anything else is a miss (the reason is
  kept in ``rejected``). A registry that cannot be reached within the connect timeout
  is marked down for the lifetime of this object and skipped: a miss, never a failure.
- ``fetch(store, info)`` downloads the NAR from the registry that answered, hashing the
  compressed bytes while they arrive (abort as soon as the size is exceeded; mismatch
  → ``HashMismatch``), then hands the file to the store (``fetch_many`` of one path:
  ``store.import_objects``), which checks the file hash again and the NAR hash while
  restoring, then the unsigned ``CA:`` against the content (``pathadmit.check_ca``);
  nothing is registered on mismatch. The signatures kept are ``pathadmit.keep_sigs``'s
  (a warning names what was dropped).
- ``fetch_many(store, infos)`` does the same for many paths: small objects in batches
  (``POST /blob-batch``: one round trip for up to 256 paths, in import order), big
  ones one request each, ``jobs`` requests at a time, while one importer thread feeds
  them, dependencies first, to
  ``store.import_objects`` (group commit: a few hundred paths share one ``syncfs`` and
  one database transaction instead of paying fsyncs and a commit each). The importer
  waits for each download in import order, so importing overlaps downloading. (The
  downloads themselves: ``substitute_downloads``.)

A Substituter owns an event loop; use it from one thread. ``close()`` when done. The
fetched paths stay temp roots of the caller's store object until it is closed.

``views`` (url -> ``Client``) is the one hook for reading a registry some other way: a
client put there is used for that URL, for queries and downloads alike, instead of the
one ``opened(url)`` opens (``copy.to_store`` puts an ``indexcheck.IndexedClient`` there,
which reads the registry through its verified signed index). Its owner closes it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from kiln.store import narinfo as ni
from kiln.store.errors import KilnError
from kiln.store.pathadmit import admitted_sigs
from kiln.store.pathinfo import PathInfo
from kiln.store.signing import PublicKey

from .client import Client, Unreachable, open_client
from .looprun import run_until_complete
from .progress import Progress
from .push import levels
from .substitute_downloads import Downloads
from .verify import check_narinfo

#: Objects up to this size are fetched in batches (``Client.blob_batch``) of up to
#: ``BATCH_OBJECTS`` objects or ``BATCH_BYTES`` bytes; bigger ones one request each.
BATCH_OBJECT_MAX = 1 << 20
BATCH_OBJECTS = 256
BATCH_BYTES = 16 << 20


def batches(
    infos: list[ni.NarInfo], max_objects: int = BATCH_OBJECTS, max_bytes: int = BATCH_BYTES
) -> Iterator[list[ni.NarInfo]]:
    """``infos`` in order, cut into lists of at most ``max_objects`` or about
    ``max_bytes`` bytes of compressed objects (a list ends once it reaches either)."""
    batch: list[ni.NarInfo] = []
    size = 0
    for i in infos:
        batch.append(i)
        size += i.file_size or 0
        if len(batch) >= max_objects or size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def batchable(infos: Iterable[ni.NarInfo]) -> tuple[list[ni.NarInfo], list[ni.NarInfo]]:
    """``infos`` split into objects small enough for ``blob_batch`` (known size up to
    ``BATCH_OBJECT_MAX``) and the rest, each fetched alone; order kept."""
    small: list[ni.NarInfo] = []
    alone: list[ni.NarInfo] = []
    for i in infos:
        (small if fits_batch(i) else alone).append(i)
    return small, alone


def fits_batch(info: ni.NarInfo) -> bool:
    """Whether ``info``'s object may travel in a ``blob_batch``: its digest and size are
    known and the size is at most ``BATCH_OBJECT_MAX``."""
    return info.file_hash is not None and info.file_size is not None and info.file_size <= BATCH_OBJECT_MAX


#: the priority of a registry whose ``nix-cache-info`` names none (kiln serve's is 40 too)
DEFAULT_PRIORITY = 40


class Substituter(Downloads):
    def __init__(
        self,
        registries: list[tuple[str, int | None]],
        trusted: list[PublicKey],
        sigs_needed: int = 1,
        jobs: int = 16,
        progress: bool | None = None,
        tokens: dict[str, str] | None = None,
    ) -> None:
        self._given = list(registries)
        #: (url, priority) in the order asked, lowest priority first: ``_order`` makes it
        #: before the first query (the priorities None stands for are read then)
        self.registries: list[tuple[str, int]] = []
        self.trusted = list(trusted)
        self.sigs_needed = sigs_needed
        self.jobs = jobs
        self.progress = progress
        self.tokens = dict(tokens or {})  # url -> bearer token (for --private registries)
        self.down: dict[str, str] = {}
        self.rejected: dict[str, str] = {}
        self._source: dict[str, str] = {}
        self._loop = asyncio.new_event_loop()
        self._clients: dict[str, Client] = {}
        #: url -> the client to read that registry through instead (module docstring);
        #: filled before the first query of that URL
        self.views: dict[str, Client] = {}
        self._importer = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def close(self) -> None:
        async def _close() -> None:
            for c in self._clients.values():
                await c.close()

        self._loop.run_until_complete(_close())
        self._loop.close()
        self._importer.shutdown()

    def __enter__(self) -> Substituter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, coro: Any) -> Any:
        """Run ``coro`` on this substituter's event loop (with its open clients); a signal
        cancels it (``looprun``)."""
        return run_until_complete(self._loop, self._loop.create_task(coro))

    def client(self, url: str) -> Client:
        """What this substituter reads registry ``url`` through: its view if one is set
        (``views``), else its open client (``opened``)."""
        view = self.views.get(url)
        return view if view is not None else self.opened(url)

    def opened(self, url: str) -> Client:
        """The client this substituter opened for registry ``url`` (with its token, if one
        was given; opened on first use), which a view of it wraps."""
        c = self._clients.get(url)
        if c is None:
            c = self._clients[url] = open_client(url, self.tokens.get(url), jobs=self.jobs, create=False)
            c.trusted = self.trusted  # what attestations fetched through it must be signed by
        return c

    # ------------------------------------------------------------ queries

    async def _order(self) -> None:
        """Give each registry without a priority its ``nix-cache-info`` one (else
        ``DEFAULT_PRIORITY``), then sort: the cache infos are read side by side."""

        async def own(url: str) -> int:
            try:
                text = (await self.client(url).cache_info()).get("Priority", "")
            except KilnError as e:  # (unreachable, not a registry: a miss)
                self.down[url] = str(e)  # (not asked again: a dead one costs one timeout)
                text = ""
            return int(text) if text.isdigit() else DEFAULT_PRIORITY

        got = iter(await asyncio.gather(*(own(u) for u, p in self._given if p is None)))
        given = [(u, p if p is not None else next(got)) for u, p in self._given]
        self.registries = sorted(given, key=lambda r: r[1])

    async def _query(self, paths: list[str]) -> dict[str, ni.NarInfo]:
        if len(self.registries) != len(self._given):
            await self._order()
        found: dict[str, ni.NarInfo] = {}
        want = {p.rsplit("/", 1)[1][:32]: p for p in paths}
        for url, _prio in self.registries:
            if not want:
                break
            if url in self.down:
                continue
            try:
                client = self.client(url)  # (a directory that holds no registry: a miss)
                if not client.store_dir:
                    await client.cache_info()
                texts = await client.narinfos(list(want))
            except Unreachable as e:
                self.down[url] = str(e)
                continue
            except KilnError as e:
                self.down[url] = str(e)
                continue
            store_dir = want[next(iter(want))].rpartition("/")[0]
            if client.store_dir != store_dir:
                self.down[url] = f"registry store dir {client.store_dir!r} differs from {store_dir!r}"
                continue
            for h, text in texts.items():
                p = want.get(h)
                if p is None:
                    continue
                try:
                    # (content_proves: the import checks the content against a CA claim)
                    info = check_narinfo(
                        text, store_dir, self.trusted, self.sigs_needed, h, source=url, content_proves=True
                    )
                except KilnError as e:  # (a narinfo that is not zstd names the source itself)
                    self.rejected[p] = str(e) if url in str(e) else f"{url}: {e}"
                    continue
                if info.path != p:
                    self.rejected[p] = f"{url}: narinfo is for {info.path}"
                    continue
                found[p] = info
                self._source[p] = url
                del want[h]
        return found

    def source_of(self, path: str) -> str | None:
        """The registry whose narinfo for ``path`` ``query_many`` took, if any."""
        return self._source.get(path)

    def query_many(self, paths: list[str]) -> dict[str, ni.NarInfo]:
        """Trusted narinfos for those ``paths`` some registry has (see module docstring)."""
        return run_until_complete(self._loop, self._loop.create_task(self._query(list(paths))))

    # ------------------------------------------------------------ fetching

    async def _fetch_many(self, store: Any, infos: list[ni.NarInfo]) -> list[PathInfo]:
        sem = asyncio.Semaphore(self.jobs)
        prog = Progress("fetch", len(infos), sum(i.file_size or 0 for i in infos), self.progress)
        by_path = {i.path: i for i in infos}
        root = getattr(store, "root", None)  # (its keys/: see ``pathadmit.keep_sigs``)
        loop = asyncio.get_running_loop()
        # A level's paths only reference earlier levels: this order is dependencies first.
        order = [p for level in levels(by_path) for p in level]
        # concurrent (not asyncio) futures: resolved on the event loop, waited for on the
        # importer thread directly, without a coroutine hop per path
        results: dict[str, concurrent.futures.Future] = {p: concurrent.futures.Future() for p in order}
        for p in order:
            if self._source.get(p) is None:
                raise KilnError(f"{p} was not obtained from query_many of this substituter")
        # Small objects travel in batches (one round trip for hundreds of paths, in
        # import order so importing starts with the first answers); big ones alone. The
        # batches are cut as ``batches`` cuts them, here per registry and interleaved.
        runners: list[asyncio.Future] = []
        batches: dict[str, list[ni.NarInfo]] = {}
        sizes: dict[str, int] = {}
        for p in order:
            info, url = by_path[p], self._source[p]
            if not fits_batch(info):
                runners.append(asyncio.ensure_future(self._one(info, results, sem, prog)))
                continue
            batch = batches.setdefault(url, [])
            batch.append(info)
            sizes[url] = sizes.get(url, 0) + (info.file_size or 0)
            if len(batch) >= BATCH_OBJECTS or sizes[url] >= BATCH_BYTES:
                runners.append(asyncio.ensure_future(self._batch(url, batch, results, sem, prog)))
                batches[url], sizes[url] = [], 0
        for url, batch in batches.items():
            if batch:
                runners.append(asyncio.ensure_future(self._batch(url, batch, results, sem, prog)))

        def items() -> Any:
            # runs on the importer thread; each download is resolved by the event loop
            for p in order:
                f = results[p].result()
                with f:
                    # junk Sig: lines (unsigned, unbounded) must not reach the database;
                    # over the limit, ones by this store's own keys are kept first
                    yield admitted_sigs(by_path[p].to_pathinfo(), self.trusted, root), f
                prog.add(1)

        try:
            return await loop.run_in_executor(self._importer, store.import_objects, items())
        finally:
            for t in runners:
                t.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
            for fut in results.values():
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    fut.result().close()  # downloads the importer never took (after a failure)
                elif not fut.done():
                    fut.cancel()
            prog.done()

    def fetch(self, store: Any, info: ni.NarInfo) -> PathInfo:
        """Download, verify and register one path (its references must be valid)."""
        return self.fetch_many(store, [info])[0]

    def fetch_many(self, store: Any, infos: list[ni.NarInfo]) -> list[PathInfo]:
        """Download in parallel, import dependencies first."""
        task = self._loop.create_task(self._fetch_many(store, infos))
        try:
            # (under kiln's handlers a signal cancels the task, whose cleanup releases the
            # importer thread, and is raised once it has ended: ``looprun``)
            return run_until_complete(self._loop, task)
        except BaseException:
            # A library caller's Ctrl-C stops the loop with the task still suspended:
            # cancel it and let its cleanup run, which releases the importer thread;
            # otherwise that thread waits forever for downloads nobody will finish, and so
            # does close(). Not when the interrupt landed while the task ran: it then
            # ended with it, and the loop never stops for a task that ended in
            # KeyboardInterrupt or SystemExit (bpo-22429): running it again would wait for
            # ever.
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    self._loop.run_until_complete(task)
            raise


def parse_registries(text: str) -> list[tuple[str, int | None]]:
    """``"URL[?priority=N] ..."`` (whitespace-separated, Nix-style store parameters) →
    ``[(url, priority)]``, None where no ``priority`` is given (the registry's own then:
    ``Substituter``); unknown parameters are dropped from the URL."""
    from urllib.parse import parse_qs, urlsplit, urlunsplit

    out = []
    for item in text.split():
        parts = urlsplit(item)
        q = parse_qs(parts.query)
        prio = int(q["priority"][0]) if "priority" in q and q["priority"][0].isdigit() else None
        out.append((urlunsplit(parts._replace(query="")), prio))
    return out
