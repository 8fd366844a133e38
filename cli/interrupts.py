"""kiln's handlers for SIGINT, SIGTERM and SIGHUP, installed around every command
(``common.run_command``): each unwinds the command as Ctrl-C does. ``kiln.common``
re-exports both names."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP in a command that builds (``terminate_as_interrupt``): unwound
    like Ctrl-C; the exit status is 128 + ``signum``."""

    signum = 15


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """For the block, SIGTERM (a CI cancel, ``timeout``) and SIGHUP (the terminal or the
    ssh session went away; unless it is ignored, as under ``nohup``) raise
    ``Terminated`` in the main thread instead of ending the process on the spot, so it
    unwinds as Ctrl-C does: sandboxes killed, scratch trees, disorderfs mounts and locks
    released. Exit 143 or 129.

    The three handlers (SIGINT's too, unless it is ignored) raise through
    ``kiln.store.sigshield``: inside a shielded region (a thread pool's queue and lock
    operations) the exception waits for the region's end. One raised inside a finalizer or
    a weakref callback, which Python would print as "Exception ignored" and drop (the
    command then ran on), is delivered to the main thread again (``sys.unraisablehook``)."""
    import _thread
    import signal  # (not threading: a cached eval runs here too, and must stay light)

    from kiln.store import sigshield

    # A signal's exception raised inside a finalizer or weakref callback cannot propagate:
    # Python hands it to ``sys.unraisablehook``. It is sent to the main thread again (as if
    # the signal came once more; silently: it ends the command as it would have) by a
    # helper thread once the hook has returned: a handler runs at the next bytecode
    # boundary, which would still be in the hook (where the exception would be lost again).
    # Until then the handlers only note the signals. Anything else goes to the hook before.
    hooking, sending = [False], [False]
    again: list[int] = []  # the signals to send again once the hook has returned

    def on_term(signum: int, frame: object) -> None:
        if hooking[0]:
            again.append(signum)
            return
        e = Terminated()
        e.signum = signum
        sigshield.deliver(e)

    def on_int(signum: int, frame: object) -> None:
        if hooking[0]:
            again.append(signum)
            return
        sigshield.deliver(KeyboardInterrupt())

    def send_again() -> None:
        import time

        while True:
            while hooking[0]:
                time.sleep(0.001)
            if not again:
                break
            signal.pthread_kill(main, again.pop(0))  # (a real signal: a blocking call returns)
        sending[0] = False

    def on_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
        if _thread.get_ident() != main:  # (the handlers run in the main thread only)
            old_hook(unraisable)
            return
        hooking[0] = True
        try:
            e = unraisable.exc_value
            if isinstance(e, KeyboardInterrupt):
                again.append(e.signum if isinstance(e, Terminated) else signal.SIGINT)
            else:
                old_hook(unraisable)
            if again and not sending[0]:  # (a signal may also have come meanwhile)
                sending[0] = True
                _thread.start_new_thread(send_again, ())
        finally:
            hooking[0] = False  # (no bytecode boundary from here to the return)

    try:
        old = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_term)}
    except ValueError:  # not the main thread: signals are the main thread's to handle
        old = None
    if old is None:
        yield
        return
    main = _thread.get_ident()
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_term)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        old[signal.SIGINT] = signal.signal(signal.SIGINT, on_int)
    old_hook, sys.unraisablehook = sys.unraisablehook, on_unraisable
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        sys.unraisablehook = old_hook


def wrapped_interrupt(e: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (a signal's) that ``e`` was raised from or during, if any:
    Python wraps an exception in another in places (raised in a class body's
    ``__set_name__``, as during a lazy import: RuntimeError "Error calling __set_name__").
    The command was interrupted then, not failing on its own (``run_command``)."""
    seen: set[int] = set()
    under = e.__cause__ or e.__context__
    while under is not None and id(under) not in seen:
        if isinstance(under, KeyboardInterrupt):
            return under
        seen.add(id(under))
        under = under.__cause__ or under.__context__
    return None
