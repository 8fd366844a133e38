"""The build loop: realise derivations into valid store paths.

Theory of operation
-------------------
1. ``load_graph`` parses the ``.drv`` closure; ``plan`` picks the derivations whose
   outputs are not valid (inputs first). A substituter, when given, is asked for all
   missing outputs in one batch and what it has is fetched before re-planning.
2. A scheduler (``buildsched``) runs up to ``jobs`` derivations at once; a derivation starts when all
   its input derivations are done. The first failure stops the other builds at once
   and is reported with the derivation and the tail of its log. With ``keep_going``
   (``-k``) a failure is reported when it happens and everything that does not depend
   on it is still built; ``BuildFailures`` then names every failed derivation and the
   ones not attempted because an input failed.
3. Each derivation is built under a per-output lock (``locks.output_lock``), so two
   ``kiln build`` processes on one graph build each derivation once: the second waits,
   then sees the output valid and skips it.
4. ``buildproduce`` runs the builder. ``builtin:*`` builders (fetchers, the .deb
   unpacker) run in-process *outside* the sandbox — the only step that touches the
   network, and its result is checked against the fixed hash. Every other builder runs
   in the sandbox executor with only the input closure mounted read-only at its
   logical paths and a scratch directory as the writable store dir, from which the
   declared outputs are collected.
5. Outputs are scanned for references (``refscan``), then placed (``stagedbuild``):
   canonicalised and moved to their real paths, where later builds can use them; the
   bookkeeping thread archives them (NAR, hashes, zstd) and makes them valid with one
   group commit per batch, overlapping the next sandbox. A crash before that commit
   leaves only temp dirs and unregistered trees, never a valid path; one between the
   commit and the signing hook leaves its hook to the next run (``hookmarks``). A
   derivation whose outputs cannot be archived or registered there (a full disk, its
   ``--timeout``) fails as a build does, alone (``buildcommit``); under ``-k`` so does a
   signing hook that fails, a left-behind one included. ``--check`` (``buildcheck``)
   rebuilds a valid derivation into a scratch dir and compares NAR hashes."""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .buildcheck import Checking
from .buildcheck import NotDeterministic as NotDeterministic  # re-exported: callers import it from here
from .buildcommit import AfterBuild, Committing
from .buildholes import with_holes
from .buildlocks import Serialized
from .buildlogs import LogStore
from .buildplan import Graph, load_graph, plan, refs_first
from .buildproduce import BuildError as BuildError  # re-exported: callers import it from here
from .buildproduce import Producing, output_too_slow, overdue
from .buildresult import BuildFailures as BuildFailures  # re-exported: callers import it from here
from .buildresult import BuildResult
from .buildsched import Scheduling
from .buildtmp import BuildDirs
from .derivation import Derivation
from .drvparse import decode
from .errors import KilnError, StoreError
from .ingest import IngestStopped
from .progressmode import wants_progress
from .stagedbuild import Pending

if TYPE_CHECKING:
    from kiln.sandbox.executor import Executor

    from .localstore import LocalStore

DEFAULT_LOG_LIMIT = 64 << 20


@dataclass(frozen=True, slots=True)
class BuildOptions:
    jobs: int = 1
    cores: int = 0  # 0 = all cores
    keep_failed: bool = False
    keep_going: bool = False  # -k: build what does not depend on a failure, then fail
    check: bool = False
    rounds: int = 1
    timeout: float | None = None
    max_silent: float | None = None
    max_log_bytes: int = DEFAULT_LOG_LIMIT
    print_logs: bool = False  # -L: stream build logs to stderr
    vary: bool = False  # --check --vary: rebuild under varied conditions (store/vary.py)
    vary_only: frozenset[str] | None = None  # --vary-only: only these of vary.NAMES
    mirrors: tuple[str, ...] = ()
    progress: bool = field(default_factory=wants_progress)  # (asked when made: never at import)


def _say(msg: str) -> None:
    """The default ``say``: a line on stderr, in one write (``print`` makes two)."""
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


Substituter = Callable[[list[str]], set[str]]
"""Given missing output paths, fetch what registries have; return the paths now valid."""


class Builder(Producing, Checking, Scheduling, Committing):
    """Realises derivations in ``store`` with ``executor`` (a ``kiln.sandbox`` executor).

    ``after_build(drv_path, drv, outputs, started, finished, store)`` is called after
    each successful build (used by the CLI for provenance), once its outputs are valid,
    on the bookkeeping thread; ``store`` is that thread's own store object (a second
    SQLite connection), to be used instead of the builder's."""

    def __init__(
        self,
        store: LocalStore,
        executor: Executor,
        options: BuildOptions | None = None,
        substituter: Substituter | None = None,
        after_build: AfterBuild | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        # A LocalStore owns one SQLite connection and one temp-roots file, which must not
        # be used from several threads at once: worker threads share it through a lock.
        self.store = Serialized(store)
        self.executor = executor
        self.opts = options if options is not None else BuildOptions()
        self.substituter = substituter
        self.after_build = after_build
        self.say = say or _say
        self.logs = LogStore(Path(store.root) / "logs")
        self._drvs: dict[str, Derivation] = {}
        self._inner = store
        self._pending = Pending()
        self._dirs = BuildDirs(Path(store.root) / "tmp", getattr(store, "gc_lock_path", None))
        # set on Ctrl-C and on the first failure: running builds are killed, their
        # reference scans stop, and nothing more is placed or started
        self._stop = threading.Event()
        # derivations whose hook this builder ran (or tried): never resumed as left behind
        self._hooked: set[str] = set()
        self._init_committing()  # the bookkeeping thread's state (``buildcommit``)

    # ------------------------------------------------------------------ graph level

    def get_drv(self, drv_path: str) -> Derivation:
        """The parsed derivation at ``drv_path`` (from the loaded graph, else read from
        the store and remembered)."""
        d = self._drvs.get(drv_path)
        if d is None:
            self._drvs.update(self.load([drv_path]).drvs)
            d = self._drvs[drv_path]
        return d

    def read_drv_text(self, drv_path: str) -> str:
        if not self.store.is_valid(drv_path):
            raise StoreError(f"derivation {drv_path} is not in the store (evaluate the recipe first)")
        return decode(self.store.real_path(drv_path).read_bytes(), drv_path)

    def load(self, roots: Iterable[str]) -> Graph:
        return load_graph(roots, self.read_drv_text, self.store.store_dir)

    def realise(self, roots: list[str]) -> list[BuildResult]:
        """Build (or substitute) everything needed for ``roots``; return their outputs."""
        graph = self.load(roots)
        self._drvs.update(graph.drvs)
        with self.store.temp_root(
            list(graph.drvs) + [o.path for d in graph.drvs.values() for _, o in d.outputs]
        ):
            # --check/--rounds rebuild the roots, so their inputs must be valid too even
            # where the roots' outputs are (a GC may have collected build-time inputs)
            wanted = list(roots)
            if self.opts.check or self.opts.rounds > 1:
                wanted += [
                    i
                    for r in roots
                    for i, used in graph.drvs[r].input_drvs
                    if not all(self.store.is_valid(o.path) for n, o in graph.drvs[i].outputs if n in used)
                ]
            # (--check/--rounds rebuild the roots: their inputs' closures must be whole too)
            checking = self.opts.check or self.opts.rounds > 1
            rebuilt = [i for r in roots for i, _ in graph.drvs[r].input_drvs] if checking else []
            graph, makers = with_holes(graph, [*wanted, *rebuilt], self.store, self.say)
            wanted += makers
            todo = plan(graph, wanted, self.store.is_valid)
            if todo and self.substituter is not None:
                missing = [
                    o.path for p in todo for _, o in graph.drvs[p].outputs if not self.store.is_valid(o.path)
                ]
                self.substituter(missing)
                todo = plan(graph, wanted, self.store.is_valid)
            failed: dict[str, BaseException] = {}
            self._stop.clear()
            self._forget_failures()
            try:
                built = set(self._run_all(graph, todo, failed))
                # (in the try: a ^C while the bookkeeping thread still removes a build's
                # dir must wait for it, or the process ends with that dir half removed)
                errors = self._wait_hooks(raise_errors=False)
            except BaseException as e:
                self._wait_hooks(raise_errors=False)  # the build's own error is the one to report
                # after ^C under -jN: the dirs of builds that did not unwind (``buildsched``)
                self._dirs.release_all()
                late = self._late_failures()
                if late and isinstance(e, KilnError) and not self.opts.keep_going:
                    raise next(iter(late.values())) from None  # (it stopped the builds that failed after it)
                raise
            late = self._late_failures()  # archiving or registering failed (``buildcommit``)
            if late and not self.opts.keep_going:
                raise next(iter(late.values()))
            for d, err in [*late.items(), *self._hook_failures().items()]:
                failed.setdefault(d, err)  # (-k: said when it happened)
            built -= self._dropped_drvs  # built, then dropped: its input failed late
            if errors and not failed:
                raise errors[0]
            for error in errors:
                self.say(f"error: {error}")  # (under -k with failures: reported, and the failures raised)
            self._finish_left_hooks(graph, failed)
            # --check means "build it once more and compare" (a root built just now too);
            # --rounds N, with or without it, N builds in all: N - 1 comparisons
            checks = max(1 if self.opts.check else 0, self.opts.rounds - 1)
            realised = [
                r for r in roots if all(self.store.is_valid(o.path) for _, o in graph.drvs[r].outputs)
            ]
            for r in realised if checks else ():
                try:
                    for _ in range(checks):
                        self._check(r, graph.drvs[r])
                except NotDeterministic as e:
                    if not self.opts.keep_going:
                        raise
                    self._failed(r, e, failed)  # -k: the other roots are still checked
            if failed:
                skipped = [p for p in todo if p not in built and p not in failed]
                results = [
                    BuildResult(r, {k: o.path for k, o in graph.drvs[r].outputs}, r in built)
                    for r in realised
                    if r not in failed
                ]
                raise BuildFailures(failed, skipped, results)
        return [BuildResult(r, {k: o.path for k, o in graph.drvs[r].outputs}, r in built) for r in roots]

    # ------------------------------------------------------------------ one derivation

    def build_one(self, drv_path: str, drv: Derivation, position: tuple[int, int] = (1, 1)) -> None:
        """Build one derivation and place its outputs (``stagedbuild``): on return they
        are usable as inputs; the bookkeeping thread makes them valid, then releases the
        output locks (``realise`` waits for it)."""
        from contextlib import ExitStack

        from .buildlocks import output_lock
        from .outputerrors import canonicalise_named
        from .stagedbuild import Placed, place, unplace

        outs = [o.path for _, o in drv.outputs]
        locks = ExitStack()
        handed = False
        try:
            locks.enter_context(output_lock(self.store, outs, self.say))
            if all(self.store.is_valid(p) for p in outs):
                return  # another process built it while we waited
            self.say(f"[{position[0]}/{position[1]}] building {drv_path}")
            started = time.time()
            # --timeout covers the build *and* scanning and archiving its output, which
            # can take far longer than making it did (a sparse file of terabytes)
            deadline = None if self.opts.timeout is None else time.monotonic() + self.opts.timeout
            tmp = self._dirs.take()
            try:
                produced = self._produce(drv_path, drv, tmp, defer=True, deadline=deadline, dirs_made=True)
                if self._stop.is_set():  # cancelled meanwhile: nothing is placed after that
                    raise BuildError(drv_path, f"build of {drv_path} cancelled")
                placed: list[Placed] = []
                try:
                    order = refs_first(drv_path, drv, produced)
                    # every output is checked before any is placed: a sibling of a refused
                    # output (a FIFO, a setuid file...) is never placed, nor registered, as
                    # one on another file system would be at once
                    for name, o in order:
                        canonicalise_named(Path(produced[name][0]), o.path)
                    with self.store.exclusive():
                        for name, o in order:
                            tree, refs = produced[name]
                            r = place(
                                self._inner,
                                o.path,
                                tree,
                                refs,
                                drv_path,
                                tmp / f"{name}.object",
                                canonical=True,
                                stop=functools.partial(overdue, deadline),
                            )
                            if isinstance(r, Placed):
                                placed.append(r)
                except KilnError as e:  # an output the store refuses, or cannot place
                    with self.store.exclusive():  # (the shared connection, as for place)
                        for r in placed:  # its siblings placed before it will not be registered
                            unplace(self._inner, r)
                    if isinstance(e, IngestStopped):  # (registered at once: another file system)
                        raise BuildError(
                            drv_path, output_too_slow(drv_path, self.opts.timeout, "archive")
                        ) from None
                    raise BuildError(drv_path, f"{drv_path}: {e}{self._kept(tmp, drv)}") from e
                # the hook's markers are held before the commit (a kill after it leaves the
                # hook to the next run: hookmarks), by the committing bookkeeping thread:
                # making a marker file is an inode on the journal, off this critical path
                hold = functools.partial(self._hold_marks, drv_path, outs) if self.after_build else None
                # archiving may take what the build left of its --timeout, counted from
                # when the bookkeeping thread starts on it (not from waiting for it)
                budget = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._pending.add(placed, locks, budget, before_commit=hold)
                handed = True
                self._background(self._commit_pending)
            finally:
                # after the commit and the log (same FIFO thread); GC leaves tmp/build-* alone
                self._background(self._dirs.release, tmp)
                if position[0] < position[1] and not self._stop.is_set():
                    self._background(self._dirs.prepare)  # the next build's, while it runs
            if self.after_build:
                # signing and provenance overlap the next sandbox; realise() waits for them
                self._hooked.add(drv_path)
                outputs = {k: o.path for k, o in drv.outputs}
                self._background(self._run_hook, drv_path, drv, outputs, started, time.time())
        finally:
            if not handed:
                locks.close()
