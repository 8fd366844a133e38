"""Running a coroutine on an event loop so that a signal cancels it instead of landing
inside asyncio.

Why: kiln's handlers for SIGINT, SIGTERM and SIGHUP (``cli/interrupts.py``) raise their
exception in the main thread between any two bytecodes; while an event loop runs, that is
mostly inside asyncio's own code: a task's wake-up, a future's result copied from a
thread. One cut half-way leaves a task that is never woken again, and the cleanup after
it (cancel the task, run the loop until it ends) waits for ever: an interrupted ``kiln
copy`` hung so about once in a hundred runs. asyncio's ``Runner`` turns SIGINT into a
cancellation of its main task for this reason, but only where Python's default handler
is installed, which kiln's replace.

How: the loop runs inside a ``sigshield`` region, where kiln's handlers only record the
signal; a callback looks for it every ``sigshield.POLL`` seconds and cancels the main
task, whose cleanup (``finally`` blocks, cancelled downloads) then runs as asyncio means
it to; once the task has ended, the region's end raises the signal's exception. A second
signal meanwhile is dropped (``sigshield``): the cleanup is not cut either. Without
kiln's handlers (a library caller's ^C) nothing changes: the exception is raised where it
lands, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from kiln.store import sigshield

T = TypeVar("T")


def run_until_complete(loop: asyncio.AbstractEventLoop, task: asyncio.Future[T]) -> T:
    """``loop.run_until_complete(task)``, a signal cancelling ``task`` (see the module
    docstring): raises the signal's exception once the task has ended."""
    watching: list[asyncio.Handle | asyncio.TimerHandle] = []

    def watch() -> None:
        if not sigshield.pending():
            watching[:] = [loop.call_later(sigshield.POLL, watch)]
        elif not task.done():
            # once: a second cancel would cut the task's cleanup (its ``finally`` awaiting
            # the downloads it cancelled), which then left a thread waiting for ever
            task.cancel()

    with sigshield.shielded:
        watching.append(loop.call_soon(watch))
        try:
            return loop.run_until_complete(task)
        finally:
            for h in watching:
                h.cancel()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, a signal cancelling it (see the module docstring)."""
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        return run_until_complete(loop, loop.create_task(coro))
