"""``registry/looprun``: under kiln's signal handlers a signal does not land inside the
event loop's callbacks; it cancels the running task, whose cleanup runs, and is raised
once the task has ended.

Before, the handler's exception was raised wherever the loop was: inside a callback of
asyncio's own (a future's state copied from a thread, a gather's bookkeeping) it left a
task that was never woken again, and the cleanup after it waited for ever: an
interrupted ``kiln copy --from file://...`` hung about once in a hundred runs (an
interrupt soak). Here the signal is sent from inside a loop callback, at a known moment;
each test installs a handler that raises as kiln's do (``sigshield.deliver``) and puts
the old one back.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest

from kiln.registry import looprun
from kiln.store import sigshield


@pytest.fixture
def kiln_handler() -> Iterator[None]:
    old = signal.signal(signal.SIGINT, lambda signum, frame: sigshield.deliver(KeyboardInterrupt()))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _interrupted_in_a_callback(steps: list[str]) -> asyncio.Future[None]:
    """A future set by a loop callback that sends SIGINT half-way through."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def callback() -> None:
        steps.append("callback begins")
        os.kill(os.getpid(), signal.SIGINT)
        steps.extend(f"callback step {i}" for i in range(3))  # (the handler has run by now)
        fut.set_result(None)
        steps.append("callback ends")

    loop.call_later(0.05, callback)
    return fut


async def _work(steps: list[str]) -> str:
    try:
        await _interrupted_in_a_callback(steps)
        await asyncio.sleep(30)  # (cancelled here)
        return "finished"
    finally:
        steps.append("task cleanup")


def test_a_signal_in_a_loop_callback_cancels_the_task_after_the_callback(kiln_handler: None) -> None:
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        looprun.run(_work(steps))
    assert steps == [
        "callback begins",
        "callback step 0",
        "callback step 1",
        "callback step 2",
        "callback ends",
        "task cleanup",
    ]
    assert not sigshield.pending()


def test_run_until_complete_on_a_long_lived_loop(kiln_handler: None) -> None:
    """The substituter's way: one loop, several runs; after an interrupted one the loop
    runs the next to its end."""
    loop = asyncio.new_event_loop()
    try:
        steps: list[str] = []
        with pytest.raises(KeyboardInterrupt):
            looprun.run_until_complete(loop, loop.create_task(_work(steps)))
        assert steps[-2:] == ["callback ends", "task cleanup"]

        async def quick() -> int:
            await asyncio.sleep(0.01)
            return 7

        assert looprun.run_until_complete(loop, loop.create_task(quick())) == 7
    finally:
        loop.close()


def test_without_kiln_s_handlers_the_interrupt_lands_where_it_did() -> None:
    """A library caller's ^C (Python's own handler): raised inside the callback, as
    before (nothing is deferred)."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        looprun.run(_work(steps))
    assert steps[:1] == ["callback begins"] and "callback ends" not in steps


def test_the_task_is_cancelled_once_so_its_cleanup_can_await(kiln_handler: None) -> None:
    """A cleanup that awaits for longer than the poll (the substituter's: the downloads
    it cancelled) runs to its end. Cancelled again at each poll, it was cut at its first
    ``await``, and what came after (releasing the importer thread) never ran: the command
    then hung in its close."""
    steps: list[str] = []

    async def work() -> None:
        try:
            await _interrupted_in_a_callback(steps)
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(sigshield.POLL * 6)
            steps.append("cleanup finished")

    with pytest.raises(KeyboardInterrupt):
        looprun.run(work())
    assert steps[-1] == "cleanup finished", steps
