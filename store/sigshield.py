"""Deferring a signal's exception over a few lines that must not be cut in the middle.

Why: kiln's handlers for SIGINT, SIGTERM and SIGHUP (``kiln.common``) raise an exception
in the main thread, wherever it is. Python runs a handler between two bytecodes, so the
exception can come out of the pure-Python parts of ``queue.Queue`` and
``threading.Condition``: between a notify's ``waiter.release()`` and its removal of that
waiter (which then stays behind and eats a later notify meant for a thread that is
waiting: that thread sleeps for ever), or just after a ``with cond:`` took the lock
(which is then never released: every other thread blocks on it). A producer feeding
worker threads (``narsink.NarSink``) could so leave the command waiting for ever on ^C.

How: ``shielded`` is a context manager; while the main thread is inside one (nesting
counts), ``deliver`` (called by the handler with the exception it would raise) records
the exception instead of raising it, and leaving the outermost region raises it. Keep
regions short, or let them end soon once ``pending()`` says a signal came (a wait in a
region polls it: ``wait_for``, ``join``): a signal is held only while one runs. The first
signal of a region wins; a second one is dropped (one exception ends the command either
way). In a thread other than the main one a region does nothing (handlers run only in
the main thread), and without a handler that calls ``deliver`` (a library caller's
default ^C handler) it changes nothing either.
"""

from __future__ import annotations

import _thread  # (not threading: the CLI's handlers import this module on every command)
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (cached `kiln eval`)
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

#: seconds a ``wait_for`` sleeps before it looks for a deferred signal again
POLL = 0.05


class _State(_thread._local):
    depth = 0  # shielded regions the thread is in
    pending: BaseException | None = None  # the exception deferred meanwhile


_state = _State()


class _Shield:
    __slots__ = ()

    def __enter__(self) -> None:
        # (a signal before the depth is raised lands before the region: nothing was done)
        _state.depth += 1

    def __exit__(self, *exc: object) -> None:
        s = _state
        s.depth -= 1
        if not s.depth and s.pending is not None:
            e, s.pending = s.pending, None
            raise e


#: ``with shielded: ...`` defers ``deliver``'s exception to the end of the block
shielded = _Shield()


def deliver(exc: BaseException) -> None:
    """For a signal handler: raise ``exc`` now, or, inside a shielded region, when the
    region ends."""
    s = _state
    if s.depth:
        if s.pending is None:
            s.pending = exc
        return
    s.pending = None
    raise exc


def pending() -> bool:
    """True if a signal's exception waits for the current region to end."""
    return _state.pending is not None


def wait_for(cond: threading.Condition, predicate: Callable[[], object]) -> None:
    """``cond.wait_for(predicate)`` (``cond`` held, inside a shielded region) that also
    returns once a signal is deferred, so the region ends and raises it."""
    while not predicate():
        if _state.pending is not None:
            return
        cond.wait(POLL)


def join(thread: threading.Thread, timeout: float | None = None) -> None:
    """``thread.join(timeout)`` inside a shielded region, returning early once a signal is
    deferred. (Not only for the signal's sake: CPython 3.11's ``Thread.join`` and
    ``is_alive``, cut by a signal's exception while the thread runs, mark it stopped.)"""
    end = None if timeout is None else time.monotonic() + timeout
    while thread.is_alive():
        if _state.pending is not None:
            return
        left = POLL if end is None else min(POLL, end - time.monotonic())
        if left <= 0:
            return
        thread.join(left)


def finish(cleanup: Callable[[], object]) -> None:
    """Run ``cleanup`` (a removal of temp files: safe to repeat) to its end although a
    signal comes meanwhile, then raise the signal's exception.

    Under kiln's handlers the exception waits for the end of the region ``cleanup`` runs
    in. One that lands before the region is entered, or is raised inside it by another
    handler (Python's own ^C handler, in a library caller), is caught and ``cleanup`` runs
    again from the start. A cleanup cut half-way used to leave part of a temp dir behind
    (a command interrupted while it removed its scratch names: exit 130, but not
    everything removed, until the next GC). Only the few bytecodes between the caller's
    code and this function's ``try`` remain open to a signal. An exception of
    ``cleanup``'s own propagates (a signal's, if one came, instead)."""
    caught: BaseException | None = None
    failure: Exception | None = None
    done = False
    while not done:
        try:
            with shielded:
                try:
                    cleanup()
                except Exception as e:  # (raised below, unless a signal came: not run again)
                    failure = e
                done = True
        except KeyboardInterrupt as e:  # (kiln's handlers raise only KeyboardInterrupts)
            caught = caught or e
    if caught is not None:
        raise caught
    if failure is not None:
        raise failure
