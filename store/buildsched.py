"""The build loop's scheduler (a mixin of ``build.Builder``): run the planned
derivations, inputs first, one at a time or up to ``jobs`` at once on threads.

Without ``keep_going`` the first failure, or Ctrl-C, stops the others at once (their
sandboxes killed, their reference scans stopped, nothing more placed), as Nix does; with
it (``-k``) a derivation that fails with a ``KilnError`` is reported when it happens and
only the derivations that need it, directly or through others, are dropped. A
derivation whose outputs could not be archived or registered after its build
(``buildcommit``'s late failures) counts the same from when the scheduler sees it,
before each start: without ``-k`` it ends the run, with it what needs it is not started
(what was built on it meanwhile is dropped, and listed as not attempted).

After Ctrl-C (or SIGTERM, SIGHUP) the sandboxed builds still running are given up to
``UNWIND_WAIT`` seconds to unwind (a killed sandbox takes milliseconds), so that each
hands its temp directory back; an in-process fetch or unpack is not waited for (it
cannot be cancelled). ``realise`` then removes every build directory still held
(``BuildDirs.release_all``), a partial download included. The scheduler's own waits
run in ``sigshield`` regions: a signal's exception cut into ``concurrent.futures``'
locking could leave a future's lock held and its worker blocked for ever.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

from . import hookmarks, sigshield
from .buildplan import Graph
from .derivation import Derivation
from .errors import KilnError, StoreError
from .locks import FileLock, path_lock_file
from .paths import StorePath

if TYPE_CHECKING:
    from kiln.sandbox.executor import Executor

    from .build import BuildOptions
    from .buildcommit import AfterBuild
    from .buildlocks import Serialized
    from .buildproduce import BuildError
    from .localstore import LocalStore

#: seconds an interrupted ``-jN`` build waits for its running sandboxed builds to unwind
UNWIND_WAIT = 3.0


class Scheduling:
    """Uses the builder's ``opts``, ``build_one``, ``say``, ``executor``, ``_stop``,
    ``store``, ``after_build``, ``_background``, ``_hooked``, ``_inner``,
    ``_late_failures`` and ``_dropped_drvs``."""

    if TYPE_CHECKING:
        opts: BuildOptions
        say: Callable[[str], None]
        executor: Executor
        _stop: threading.Event
        store: Serialized
        after_build: AfterBuild | None
        _hooked: set[str]
        _inner: LocalStore
        _dropped_drvs: set[str]

        def build_one(self, drv_path: str, drv: Derivation, position: tuple[int, int] = (1, 1)) -> None: ...
        def _background(self, fn: Callable[..., object], *args: object) -> None: ...
        def _late_failures(self) -> dict[str, BuildError]: ...

    def _run_all(self, graph: Graph, todo: list[str], failed: dict[str, BaseException]) -> list[str]:
        """Build ``todo`` (inputs first); return what was built. Under ``keep_going`` a
        derivation that fails with a ``KilnError`` is reported, recorded in ``failed``
        and only what depends on it is dropped; otherwise the first failure is raised."""
        if not todo:
            return []
        if len(todo) > 1:
            from .buildlocks import prepare

            self._background(
                prepare, self._inner, [o.path for p in todo[1:] for _, o in graph.drvs[p].outputs]
            )
        if self.opts.jobs <= 1:
            # no threads: simpler tracebacks, and profilers see the builds
            done_seq: list[str] = []
            skipped: set[str] = set()
            for i, p in enumerate(todo, 1):
                self._late_news(failed)  # (-k: in ``failed`` now; else raised)
                if any(d in failed or d in skipped for d in graph.inputs_of(p)):
                    skipped.add(p)
                    continue  # an input failed (keep_going): not attempted
                try:
                    self.build_one(p, graph.drvs[p], (i, len(todo)))
                except KilnError as e:
                    if not self.opts.keep_going:
                        raise
                    if self._input_dropped(graph, p):
                        skipped.add(p)  # (its build found an input gone: that input's failure)
                    else:
                        self._failed(p, e, failed)
                    continue
                done_seq.append(p)
            return done_seq
        self._stop.clear()
        wanted = set(todo)
        pending = {p: {i for i in graph.inputs_of(p) if i in wanted} for p in todo}
        total, done_n = len(todo), 0
        done: list[str] = []
        failure: BaseException | None = None
        pool = ThreadPoolExecutor(max_workers=max(1, self.opts.jobs))
        interrupted = False
        running: dict[Future[None], str] = {}
        try:
            while pending or running:
                if failure is None:
                    try:
                        late = self._late_news(failed)
                    except KilnError as e:  # (it stopped the running builds already)
                        failure, late = e, []
                    for q in _needing(graph, pending, late):
                        del pending[q]  # not attempted: an input failed after it was built
                if failure is None:
                    for p in sorted(p for p, deps in pending.items() if not deps):
                        if len(running) >= max(1, self.opts.jobs):
                            break
                        del pending[p]
                        running[
                            pool.submit(self.build_one, p, graph.drvs[p], (done_n + len(running) + 1, total))
                        ] = p
                if not running:
                    break
                finished = _wait_first(running)
                for fut in finished:
                    p = running.pop(fut)
                    try:
                        fut.result()
                    except BaseException as e:  # noqa: BLE001 - re-raised below, first failure wins
                        if self.opts.keep_going and isinstance(e, KilnError) and failure is None:
                            if not self._input_dropped(graph, p):  # (else: not attempted, as below)
                                self._failed(p, e, failed)
                            for q in _dependents(pending, p):
                                del pending[q]  # not attempted: an input failed
                            continue
                        if failure is None:
                            # as Nix without --keep-going: the first failure stops the other
                            # builds at once (its error is reported now, theirs not at all)
                            failure = e
                            self._stop.set()
                            self.executor.cancel_all()
                        continue
                    done_n += 1
                    done.append(p)
                    for deps in pending.values():
                        deps.discard(p)
        except KeyboardInterrupt:
            # Ctrl-C reaches only this thread: stop the workers' sandboxes and scans, and
            # let the sandboxed builds unwind (their temp dirs handed back; see the module doc)
            self._stop.set()
            self.executor.cancel_all()
            interrupted = True
            sandboxed = [f for f, p in running.items() if not graph.drvs[p].builder.startswith("builtin:")]
            _wait_all(sandboxed, UNWIND_WAIT)
            raise
        finally:
            # After ^C a worker may still be in an in-process fetch or .deb unpack, which
            # has no way to be cancelled: it is not waited for (the command then ends
            # without it, ``kiln.main.exit_now``, as a kill would end it; the store is
            # made for that), else ^C would wait for a download to finish
            pool.shutdown(wait=not interrupted, cancel_futures=True)
        if failure is not None:
            raise failure
        return done

    def _late_news(self, failed: dict[str, BaseException]) -> list[str]:
        """The derivations that failed on the bookkeeping thread (``buildcommit``: their
        outputs could not be archived or registered) and are not in ``failed`` yet: under
        ``keep_going`` put there (they were reported already) and returned; otherwise the
        first one's ``BuildError`` is raised."""
        late = {d: e for d, e in self._late_failures().items() if d not in failed}
        if late and not self.opts.keep_going:
            raise next(iter(late.values()))
        failed.update(late)
        return list(late)

    def _input_dropped(self, graph: Graph, drv_path: str) -> bool:
        """Whether an input of ``drv_path`` failed late, after it was built (its outputs
        dropped, ``buildcommit``): a build of ``drv_path`` that then fails is listed as
        not attempted because an input failed, not as a failure of its own."""
        return any(i in self._dropped_drvs for i in graph.inputs_of(drv_path))

    def _failed(self, drv_path: str, e: KilnError, failed: dict[str, BaseException]) -> None:
        """Under ``keep_going``: report a failure now (``BuildFailures`` lists it again)."""
        failed[drv_path] = e
        self.say(f"error: {e}")

    def _finish_left_hooks(self, graph: Graph, failed: dict[str, BaseException]) -> None:
        """Run ``after_build`` (signing, provenance) for outputs whose builder left its
        hook unfinished (``hookmarks``: killed between the commit and the hook, or the
        hook failed), for every derivation of the requested graph (``graph``: the roots
        and everything they are built from), inputs first. Not only where planning
        stopped (the roots, what was to be built and its inputs): a run whose signer
        failed leaves the dependencies it built unsigned as well as the target, and the
        re-run that finds them all valid builds nothing and plans nothing but the roots,
        so a dependency would stay unsigned until its own ``.drv`` was built. The cost is
        a stat per output of the graph (``hookmarks.any_left``). Hooks this builder ran
        itself are not run again; a live builder's pending hook and paths without a
        marker (substitutes) are left alone; ``--check`` compares only. The provenance
        gives the registration time as start and end (the build's own times were lost).

        Invariant: a free marker on a valid path means the build that committed the path
        did not finish its hook, whatever part of it ran; so the hook is run again in
        full (it must be idempotent: the same signature is added once, provenance is
        replaced). A signature on the path says nothing: a hook that failed, or was
        killed, after signing and before writing provenance left one (before, such a path
        was taken for a substitute and its marker dropped: the next build passed with no
        provenance). An import never leaves a free marker on the path it makes valid: it
        drops free markers before its row goes in, both under the path's registration
        lock (``hookmarks.drop_free``), and the markers are judged here under the same
        locks, so no import is between the two steps.

        A hook that fails again fails the build (as the hook of a build just made does),
        after the others were tried; its marker stays for the next run. Under
        ``keep_going`` one that fails with a ``KilnError`` is put in ``failed`` instead
        (said now), so that ``BuildFailures`` lists it and what was built is still
        printed and rooted."""
        hook = self.after_build
        if hook is None or self.opts.check or self.opts.rounds > 1:
            return
        failures: list[tuple[str, Exception]] = []
        for d in graph.ready_order(graph.drvs.keys() - self._hooked):
            drv = graph.drvs[d]
            outs = {n: o.path for n, o in drv.outputs}
            if not hookmarks.any_left(self._inner, outs.values()):
                continue  # (the usual case: a stat per output, no lock)
            with _registration_locks(self._inner, outs.values()):
                marks = hookmarks.left_behind(self._inner, list(outs.values()))
                if not marks:
                    continue
                infos = [self.store.query(p) for p in outs.values()]
                if any(i is None for i in infos):  # never committed: nothing to sign
                    hookmarks.release(marks, done=True)
                    continue
            self.say(f"signing {', '.join(outs.values())}: its build stopped before that")
            when = min(i.registration_time for i in infos if i is not None)  # (all valid: checked above)
            try:
                with hookmarks.running(marks):
                    hook(d, drv, outs, when, when, store=self._inner)
            except Exception as e:  # noqa: BLE001 - the others are still tried; raised below
                failures.append((d, e))
        if self.opts.keep_going:
            for d, err in failures:
                if isinstance(err, KilnError):
                    self._failed(d, _left_unsigned(d, err), failed)
            failures = [(d, err) for d, err in failures if not isinstance(err, KilnError)]
        for d, err in failures[1:]:
            self.say(f"error: cannot sign {d}'s outputs: {err}")
        if failures:
            d, err = failures[0]
            if isinstance(err, KilnError):
                raise _left_unsigned(d, err) from err
            raise err


def _left_unsigned(drv_path: str, e: KilnError) -> StoreError:
    """The error for a left-behind hook of ``drv_path`` that failed again with ``e``."""
    return StoreError(
        f"cannot sign {drv_path}'s outputs, left unsigned by an earlier build (the next build tries "
        f"again): {e}"
    )


@contextlib.contextmanager
def _registration_locks(store: LocalStore, paths: Iterable[str]) -> Iterator[None]:
    """Hold the registration (stripe) locks of ``paths``, in ascending order (``locks``)."""
    with contextlib.ExitStack() as held:
        for f in sorted({path_lock_file(Path(store.root), StorePath.parse(p).hash_part) for p in paths}):
            held.enter_context(FileLock(f))
        yield


def _wait_first(running: dict[Future[None], str]) -> set[Future[None]]:
    """``wait(running, return_when=FIRST_COMPLETED)``'s done set, in a shielded region
    (polled: a signal is raised within ``sigshield.POLL``)."""
    with sigshield.shielded:
        while True:
            finished, _ = wait(running, timeout=sigshield.POLL, return_when=FIRST_COMPLETED)
            if finished or sigshield.pending():
                return finished


def _wait_all(futures: list[Future[None]], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``futures`` to finish (a signal meanwhile ends
    the wait; it is raised after it)."""
    end = time.monotonic() + timeout
    with sigshield.shielded:
        while futures and not sigshield.pending() and time.monotonic() < end:
            _, left = wait(futures, timeout=min(sigshield.POLL, max(0.0, end - time.monotonic())))
            futures = list(left)


def _needing(graph: Graph, pending: dict[str, set[str]], failed: list[str]) -> list[str]:
    """The derivations in ``pending`` that need one of ``failed``, directly or through
    others, by the graph (``pending`` no longer lists the inputs that were built)."""
    bad, out = set(failed), []
    grew = bool(bad)
    while grew:
        grew = False
        for q in pending:
            if q not in bad and any(i in bad for i in graph.inputs_of(q)):
                bad.add(q)
                out.append(q)
                grew = True
    return out


def _dependents(pending: dict[str, set[str]], failed: str) -> list[str]:
    """The derivations in ``pending`` that need ``failed``, directly or through others."""
    users: dict[str, list[str]] = {}
    for q, deps in pending.items():
        for d in deps:
            users.setdefault(d, []).append(q)
    out: list[str] = []
    stack = [failed]
    while stack:
        for q in users.get(stack.pop(), ()):
            if q not in out:
                out.append(q)
                stack.append(q)
    return out
