"""Evaluating on a thread with a large stack (``_deep``), and turning running out of it
into a recipe error (``_recursion_is_recipe_error``, ``_too_deep``): long dependency
chains and nested expressions recurse as deeply as they nest, and unbounded variant
recursion (``p(n = n + 1)``) is a user's error, never an internal one. So is running out
of memory (``MemoryError``): each string and list is held to ``limits``, but many large
values together can still exhaust memory, and the message says that too.

How deep a frame is (``has_frames_above``, ``handler_depth``) is measured in Python
frames, only when it matters (a ``RecursionError`` unwinding, a variant that failed so
reached again): the evaluator's own stack of bindings says nothing about it, as a
nested expression takes frames without taking entries there."""

from __future__ import annotations

import sys

from .errors import RecipeError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see kiln.lang)
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable
    from types import TracebackType
    from typing import TypeVar

    T = TypeVar("T")


def _deep(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a thread with a large stack: long dependency chains recurse deeply."""
    import threading

    result: list[T] = []
    error: list[BaseException] = []
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


def _unwind(t: threading.Thread, done: threading.Event, e: BaseException) -> None:
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
    traceback (unbounded variant recursion like ``p(n = n + 1)``, absurd nesting, or for
    a ``MemoryError`` values grown too large together): a user error, never an internal
    one. Other exceptions pass through unchanged."""

    def run() -> T:
        try:
            return fn()
        except (RecursionError, MemoryError) as e:
            raise _too_deep(e) from None

    return run


#: the evaluator's frames that enter a binding or a package variant (``Evaluator.force``,
#: ``compile.instantiate``): the frames below the innermost of them are one expression's
_BINDING_FRAMES = frozenset({"force", "instantiate"})


def _too_deep(e: RecursionError | MemoryError) -> RecipeError:
    """The ``InfiniteRecursion`` recipe error for ``e``, located at the innermost recipe
    node among its traceback's frames (the evaluator's own stack is unwound by now).
    When most of the depth lies inside one expression (below the innermost binding or
    variant entered), it says so: "expression nested too deeply" (a 200,000-term
    ``1 + 1 + ...``), not a recursion through variants the recipe does not have."""
    from .errors import InfiniteRecursion

    node, tb = None, e.__traceback__
    frames = last_binding = 0
    while tb is not None:
        frames += 1
        frame = tb.tb_frame
        if frame.f_code.co_name in _BINDING_FRAMES:
            last_binding = frames
        cand = frame.f_locals.get("node")
        if getattr(cand, "src", None) is not None:
            node = cand
        tb = tb.tb_next
    causes = "unbounded recursion through package variants (like p(n = n + 1)) or nesting deeper than kiln evaluates"
    if isinstance(e, MemoryError):
        # (each string or list is held to ``limits``, but many values together may not fit)
        message = (
            "evaluation went out of memory: values grew too large (many long strings or lists, "
            f"each within kiln's size limits), {causes}"
        )
    elif node is not None and frames - last_binding > frames // 2:
        message = "expression nested too deeply: deeper than kiln evaluates"
    else:
        message = f"evaluation went too deep: {causes}"
    return InfiniteRecursion(message, getattr(node, "src", None), getattr(node, "pos", None))


def has_frames_above(n: int) -> bool:
    """Whether the caller's frame has at least ``n`` Python frames above it (its callers',
    up to its thread's first). Costs ``n`` steps of C, no Python frames."""
    try:
        sys._getframe(n + 1)  # (frame 1 is the caller's)
    except ValueError:  # "call stack is not deep enough"
        return False
    return True


def _frames_above(level: int) -> int:
    """How many Python frames are above the frame ``level`` frames up from this one:
    a doubling, then a bisection, of ``sys._getframe`` probes (C steps, no frame
    objects but the probed ones)."""
    lo, hi = 0, 1  # lo frames above it are known to exist, hi not yet known
    while True:
        try:
            sys._getframe(level + hi)
        except ValueError:
            break
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # lo exist, hi do not
        mid = (lo + hi) // 2
        try:
            sys._getframe(level + mid)
            lo = mid
        except ValueError:
            hi = mid
    return lo


def handler_depth(e: BaseException) -> int:
    """How many Python frames are above the caller, which is handling ``e`` (it is the
    first frame of ``e``'s traceback). One unwinding asks this in every frame of a chain
    of variants it passes, so it is amortised: the first answer is measured
    (``_frames_above``) and kept on ``e`` with its traceback entry; a later caller,
    higher up, counts only its traceback entries down to that one."""
    tb = e.__traceback__
    if tb is None or tb.tb_frame is not sys._getframe(1):  # not handling it: just measure
        return _frames_above(2)
    memo = getattr(e, "_kiln_depth", None)
    depth = None
    if memo is not None:
        below, below_depth = memo
        k = 0
        t: TracebackType | None = tb
        while t is not None and t is not below:
            # (a frame that raised ``e`` again by name has two entries, side by side)
            if t.tb_next is None or t.tb_next.tb_frame is not t.tb_frame:
                k += 1
            t = t.tb_next
        if t is not None:
            depth = below_depth - k
    if depth is None:  # the first to ask (or the traceback was replaced on the way)
        depth = _frames_above(2)
    e._kiln_depth = (tb, depth)  # type: ignore[attr-defined]  # (any exception takes attributes)
    return depth
