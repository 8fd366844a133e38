"""The build loop's bookkeeping thread (a mixin of ``build.Builder``): archive and commit
placed outputs, run the signing hook, and fail one derivation, not the run, when that
goes wrong.

Theory of operation
-------------------
Everything after a build's outputs are placed runs on one FIFO thread (``_background``):
archiving them (``stagedbuild.archive``), the group commit (``stagedbuild.commit``),
saving logs, the ``after_build`` hook. ``realise`` waits for it (``_wait_hooks``).

A derivation whose outputs cannot be archived (its ``--timeout`` ran out, the object
cannot be written: a full disk, ``ulimit -f``) or registered (``commit`` refused them:
a tree replaced, an object name taken by a directory) is a *late failure*: its placed
outputs are dropped (``_drop``: not registered, not counted as inputs, their hook not
run; the trees stay for GC, a running build may have them mounted), so is whatever was
built on them (by reference or as an input derivation: ``_dropped_drvs``), and the rest
of the batch is committed. A batch whose commit fails is committed again one derivation
at a time, so only the derivations at fault fail. Nothing is half registered: a commit's
rows go in one transaction, after its objects are durable (``stagedbuild``).

Late failures are kept in ``_late`` (derivation -> ``BuildError`` naming it and what
failed). Without ``keep_going`` the first one stops the run as a build failure does (the
running sandboxes are killed; ``realise`` reports it, not the builds it killed); with it
(``-k``) it is reported at once and the scheduler takes it as that derivation's failure
(``buildsched``: what needs it is not attempted), so ``BuildFailures`` lists it. A hook
that fails with a ``KilnError`` under ``-k`` is recorded in ``_hook_failed`` and listed
there too (its outputs are valid: nothing is dropped for it); otherwise it fails the run.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from . import hookmarks
from .buildproduce import BuildError, output_too_slow, overdue
from .derivation import Derivation
from .errors import KilnError
from .ingest import IngestStopped

if TYPE_CHECKING:
    from kiln.sandbox.executor import Executor

    from .build import BuildOptions
    from .buildtmp import BuildDirs
    from .localstore import LocalStore
    from .stagedbuild import Pending, Placed, StagedOutput


class AfterBuild(Protocol):
    """``Builder``'s ``after_build`` hook (signing, provenance): called with a derivation
    built (or left unsigned) and its valid outputs, on the thread whose ``store`` it is."""

    def __call__(
        self,
        drv_path: str,
        drv: Derivation,
        outputs: dict[str, str],
        started: float,
        finished: float,
        *,
        store: LocalStore,
    ) -> None: ...


class Committing:
    """Uses the builder's ``opts``, ``say``, ``executor``, ``_stop``, ``_inner``,
    ``_pending``, ``_drvs``, ``_dirs`` and ``after_build``; ``_init_committing`` sets up
    the rest."""

    if TYPE_CHECKING:
        opts: BuildOptions
        say: Callable[[str], None]
        executor: Executor
        _stop: threading.Event
        _inner: LocalStore
        _pending: Pending
        _drvs: dict[str, Derivation]
        _dirs: BuildDirs
        after_build: AfterBuild | None

    def _init_committing(self) -> None:
        self._dropped: set[str] = set()  # outputs dropped, never to be registered (``_drop``)
        self._dropped_drvs: set[str] = set()  # their derivations
        self._late: dict[str, BuildError] = {}  # late failures, in the order they happened
        self._hook_failed: dict[str, BuildError] = {}  # -k: hooks that failed (outputs valid)
        self._late_lock = threading.Lock()
        self._bk: LocalStore | None = None  # the bookkeeping thread's own store (_bookkeeping_store)
        self._hook_pool: ThreadPoolExecutor | None = None
        self._hook_futures: list[Future[object]] = []
        # hook markers held for a derivation's coming hook (bookkeeping thread only)
        self._marks: dict[str, list[hookmarks.Mark]] = {}

    def _forget_failures(self) -> None:
        """At the start of a ``realise``: nothing of this builder is pending then."""
        with self._late_lock:
            self._late.clear()
            self._hook_failed.clear()
        self._dropped.clear()
        self._dropped_drvs.clear()

    def _late_failures(self) -> dict[str, BuildError]:
        """The late failures so far (a copy), in order."""
        with self._late_lock:
            return dict(self._late)

    def _hook_failures(self) -> dict[str, BuildError]:
        with self._late_lock:
            return dict(self._hook_failed)

    def _commit_pending(self) -> None:
        """Archive every placed output and make them valid (one group commit), then
        release their output locks. Runs on the bookkeeping thread; a no-op if an
        earlier call took them all. A derivation that fails here (see the module
        docstring) is dropped with whatever was built on it, the rest is registered,
        then the batch's first such ``BuildError`` raises (``realise`` reports it once)."""
        from .stagedbuild import archive

        batch = self._pending.take()
        try:
            store = self._bookkeeping_store()
            groups: list[tuple[list[Placed], list[StagedOutput]]] = []
            first: BuildError | None = None
            for items, _, budget, before_commit in batch:
                # (an earlier batch's drops count too: a dependent may come in a later one)
                if self._built_on_dropped(items):
                    self._drop(items)  # built on a dropped output
                    continue
                if before_commit is not None:
                    before_commit()  # (``_hold_marks``)
                until = None if budget is None else time.monotonic() + budget
                try:
                    # archiving (NAR, hashes, zstd) happens here too: a big output is
                    # compressed while the next build already runs with it mounted
                    groups.append(
                        (items, [archive(store, p, functools.partial(overdue, until)) for p in items])
                    )
                except KilnError as e:
                    first = first or self._fail_late(items, e)
            first = self._commit_groups(store, groups) or first
            if first is not None:
                raise first
        finally:
            for _, locks, _, _ in batch:
                locks.close()

    def _commit_groups(
        self, store: LocalStore, groups: list[tuple[list[Placed], list[StagedOutput]]]
    ) -> BuildError | None:
        """Commit the archived ``groups`` (a derivation's placed outputs and their staged
        archives, in build order) in one transaction; if that fails, one derivation at a
        time. Returns the first late failure made here."""
        from .stagedbuild import commit

        try:
            commit(store, [s for _, staged in groups for s in staged])
        except (KilnError, OSError) as e:
            if len(groups) == 1:
                return self._fail_late(groups[0][0], e, "register")
        else:
            self._pending.done(s.info.path for _, staged in groups for s in staged)
            return None
        first: BuildError | None = None
        for items, staged in groups:  # (a commit is one transaction: none of it went in)
            if self._built_on_dropped(items):
                self._drop(items)
                continue
            try:
                commit(store, staged)
            except (KilnError, OSError) as e:
                first = first or self._fail_late(items, e, "register")
                continue
            self._pending.done(s.info.path for s in staged)
        return first

    def _built_on_dropped(self, items: list[Placed]) -> bool:
        """Whether a derivation's placed outputs reference a dropped output, or it had a
        dropped derivation as an input."""
        if any(r in self._dropped for p in items for r in p.references):
            return True
        drv = self._drvs.get(items[0].deriver) if items and items[0].deriver else None
        return drv is not None and any(i in self._dropped_drvs for i, _ in drv.input_drvs)

    def _fail_late(self, items: list[Placed], e: BaseException, step: str = "archive") -> BuildError:
        """Record the late failure of the derivation that placed ``items`` (``e``: what
        archiving or registering them raised) and drop them; without ``keep_going``, stop
        the other builds as a build failure does. Returns its ``BuildError``."""
        drv_path = items[0].deriver or items[0].path
        if isinstance(e, IngestStopped):
            err = BuildError(drv_path, output_too_slow(drv_path, self.opts.timeout, "archive"))
        elif isinstance(e, OSError):  # (from the commit: an object it could not put in place)
            where = f": {e.filename}" if e.filename else ""
            outs = ", ".join(p.path for p in items)
            err = BuildError(drv_path, f"{drv_path}: cannot {step} {outs}: {e.strerror or e}{where}")
        else:
            err = BuildError(drv_path, f"{drv_path}: {e}")
        self._drop(items)
        self._dropped_drvs.add(drv_path)
        with self._late_lock:
            err = self._late.setdefault(drv_path, err)  # (the one ``_wait_hooks`` knows)
        if self.opts.keep_going:
            self.say(f"error: {err}")  # (now, as a build failure is; BuildFailures lists it)
        else:
            self._stop.set()  # the first failure stops the other builds at once
            self.executor.cancel_all()
        return err

    def _drop(self, items: list[Placed]) -> None:
        """Forget placed outputs that will not be registered: later builds do not count
        them as inputs, what is built on them is dropped too, their hooks do not run.
        Their trees stay for GC (it takes unregistered trees): a build may mount them."""
        self._dropped.update(p.path for p in items)
        self._dropped_drvs.update(p.deriver for p in items if p.deriver)
        self._pending.done(p.path for p in items)

    def _background(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` on the single bookkeeping thread (FIFO); ``realise`` waits
        for it and re-raises the first error."""
        if self._hook_pool is None:
            self._hook_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiln-bookkeeping")
        self._hook_futures.append(self._hook_pool.submit(fn, *args))

    def _bookkeeping_store(self) -> LocalStore:
        """The bookkeeping thread's own store object, opened on first use. With its own
        SQLite connection, commits, signing and provenance (fsyncs included) never hold
        the lock the build threads share ``self.store`` under, so the next build's
        staging does not wait for them (SQLite's WAL lets both connections work)."""
        if self._bk is None:
            self._bk = type(self._inner).open(Path(self._inner.root))
        return self._bk

    def _close_bookkeeping_store(self) -> None:
        if self._bk is not None:
            self._bk.close()
            self._bk = None

    def _hold_marks(self, drv_path: str, outs: list[str]) -> None:
        """Hold the hook markers of ``drv_path``'s outputs (``hookmarks``) for its
        ``_run_hook``: on the bookkeeping thread, before ``_commit_pending`` commits them."""
        self._marks[drv_path] = hookmarks.hold_or_warn(self._inner, outs, self.say)

    def _run_hook(
        self, drv_path: str, drv: Derivation, outputs: dict[str, str], started: float, finished: float
    ) -> None:
        """``after_build`` for a derivation built (and committed) just now. Under
        ``keep_going`` a ``KilnError`` from it is that derivation's failure, said now and
        listed by ``BuildFailures``; otherwise it raises (``realise`` reports it)."""
        assert self.after_build is not None
        marks = self._marks.pop(drv_path, [])  # (none: dropped before its commit, or not markable)
        if any(o in self._dropped for o in outputs.values()):
            hookmarks.release(marks, done=True)  # never registered (``_drop``): nothing to sign
            return
        try:
            with hookmarks.running(marks):
                self.after_build(drv_path, drv, outputs, started, finished, store=self._bookkeeping_store())
        except KilnError as e:
            if not self.opts.keep_going:
                raise
            err = BuildError(drv_path, f"cannot sign {drv_path}'s outputs (the next build tries again): {e}")
            with self._late_lock:
                self._hook_failed[drv_path] = err
            self.say(f"error: {err}")

    def _wait_hooks(self, raise_errors: bool = True) -> list[BaseException]:
        """Wait for the bookkeeping thread's work; raise its first error, or (when not
        ``raise_errors``) return them all. Late failures (``_late``) are not among them:
        ``realise`` takes those from there."""
        if self._hook_futures:
            self._background(self._dirs.discard)  # temp dirs prepared for builds not run
            self._background(self._close_bookkeeping_store)
        futures, self._hook_futures = self._hook_futures, []
        errors = [e for f in futures if (e := f.exception()) is not None]
        late = {id(e) for e in self._late_failures().values()}
        errors = [e for e in errors if id(e) not in late]
        # the thread ends with its work: an idle pool thread would outlive the build (and
        # keep the process from ending at once, see ``kiln.main.exit_now``); the next
        # ``_background`` starts a new one
        pool, self._hook_pool = self._hook_pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        if errors and raise_errors:
            raise errors[0]
        return errors
