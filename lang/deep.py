"""Evaluating on a thread with a large stack (``_deep``), and turning running out of it
into a recipe error (``_recursion_is_recipe_error``, ``_too_deep``): long dependency
chains and nested expressions recurse as deeply as they nest, and unbounded variant
recursion (``p(n = n + 1)``) is a user's error, never an internal one."""

from __future__ import annotations

import sys

from .errors import RecipeError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see kiln.lang)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")


def _deep(fn):
    """Run ``fn`` on a thread with a large stack: long dependency chains recurse deeply."""
    import threading

    result: list = []
    error: list = []
    done = threading.Event()

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            error.append(e)
        finally:
            # (not contextlib.suppress: its own Python code is more room for the interrupt)
            try:  # noqa: SIM105
                done.set()
            except BaseException:  # noqa: BLE001, S110 - _unwind's interrupt landed here;
                pass  # it waits on the thread's end as well

    old_limit = sys.getrecursionlimit()
    old_size = threading.stack_size()
    sys.setrecursionlimit(max(old_limit, 400_000))
    try:
        try:
            threading.stack_size(512 * 1024 * 1024)
            # daemon: Ctrl-C in the main thread must not wait for an evaluation to finish
            t = threading.Thread(target=target, name="kiln-eval", daemon=True)
            t.start()
        except (RuntimeError, ValueError, MemoryError):
            # no room for a big stack (ulimit -v): evaluate here, with the usual depth
            sys.setrecursionlimit(old_limit)
            return fn()
        finally:
            threading.stack_size(old_size)
        try:
            # an Event, not t.join(): a join interrupted by Ctrl-C can mark a running
            # thread as stopped (CPython bpo-45274), and _unwind must know it is not
            done.wait()
        except BaseException as e:  # Ctrl-C, or SIGTERM unwinding like it
            _unwind(t, done, e)
            raise
    finally:
        sys.setrecursionlimit(old_limit)
    if error:
        raise error[0]
    return result[0]


#: how long an interrupted evaluation may take to unwind before the command exits anyway
UNWIND_S = 10.0


def _unwind(t, done, e: BaseException) -> None:  # noqa: ANN001 - a Thread and its Event
    """Raise ``e``'s kind in the evaluation thread ``t`` and give it ``UNWIND_S`` to
    unwind (``done`` is set when it has): it may be adding a ``path`` source to the
    store, whose clean-up (a half-written tree and object under ``tmp/``) only runs if
    that thread unwinds. A daemon thread would otherwise just vanish at exit. A second
    Ctrl-C ends the wait."""
    import contextlib
    import ctypes
    import threading
    import time

    if done.is_set() or t.ident is None:
        return
    kind = type(e) if isinstance(e, KeyboardInterrupt | SystemExit) else KeyboardInterrupt
    ident, raise_in = ctypes.c_ulong(t.ident), ctypes.pythonapi.PyThreadState_SetAsyncExc
    # Delivered at the thread's next bytecode, so the thread unwinds as the main thread
    # does on Ctrl-C in ``kiln store add`` (the same code). One catch: CPython gives a new
    # thread's state its creator's id until the new thread runs, and sends the exception
    # to the newest state with that id; so while the evaluation starts a worker thread
    # the exception would kill that worker before it reports having started, and the
    # evaluation would wait for it for ever. A starting thread sits in
    # ``threading._limbo`` from before its state exists until after it has its own id,
    # and enters it under ``_active_limbo_lock``: so the exception is sent under that
    # lock, when no thread is starting.
    lock = getattr(threading, "_active_limbo_lock", None)
    limbo = getattr(threading, "_limbo", None)
    for _ in range(1000):
        if done.is_set():
            break
        with lock if lock is not None else contextlib.nullcontext():
            if not limbo:
                raise_in(ident, ctypes.py_object(kind))
                break
        time.sleep(0.001)
    # until the thread has unwound: ``done`` is set, or the thread is gone (if the
    # interrupt landed in setting ``done``); is_alive is sound here, as nothing joined it
    deadline = time.monotonic() + UNWIND_S
    while not done.wait(0.05) and t.is_alive() and time.monotonic() < deadline:
        pass


def _recursion_is_recipe_error(fn: Callable[[], T]) -> Callable[[], T]:
    """``fn`` wrapped so that a ``RecursionError``/``MemoryError`` it raises becomes an
    ``InfiniteRecursion`` recipe error located at the innermost recipe node found in the
    traceback (unbounded variant recursion like ``p(n = n + 1)``, or absurd nesting): a
    user error, never an internal one. Other exceptions pass through unchanged."""

    def run() -> T:
        try:
            return fn()
        except (RecursionError, MemoryError) as e:
            raise _too_deep(e) from None

    return run


def _too_deep(e: RecursionError | MemoryError) -> RecipeError:
    """The ``InfiniteRecursion`` recipe error for ``e``, located at the innermost recipe
    node among its traceback's frames (the evaluator's own stack is unwound by now)."""
    from .errors import InfiniteRecursion

    what = "too deep" if isinstance(e, RecursionError) else "out of memory"
    node, tb = None, e.__traceback__
    while tb is not None:
        cand = tb.tb_frame.f_locals.get("node")
        if getattr(cand, "src", None) is not None:
            node = cand
        tb = tb.tb_next
    return InfiniteRecursion(
        f"evaluation went {what}: unbounded recursion through package variants "
        "(like p(n = n + 1)) or nesting deeper than kiln evaluates",
        getattr(node, "src", None),
        getattr(node, "pos", None),
    )
