"""Source text for test runners (``python -c``) that send SIGINT at an exact moment of the
stdlib's thread hand-over code."""

from __future__ import annotations


def sigint_after_condition_lock(caller: str) -> str:
    """Python source that patches ``threading.Condition.__enter__`` so that the first time
    the main thread takes a Condition's lock inside a function named ``caller``
    (``Queue.get``: "get", ``Future.result``: "result") it sends the process SIGINT right
    after taking it: the handler runs at the next bytecode, with the lock held."""
    return f"""
import os as _os, signal as _signal, sys as _sys, threading as _threading
_main, _armed, _enter = _threading.get_ident(), [True], _threading.Condition.__enter__
def _patched(self):
    hit = _armed[0] and _threading.get_ident() == _main and _sys._getframe(1).f_code.co_name == {caller!r}
    r = _enter(self)
    if hit:
        _armed[0] = False
        _os.kill(_os.getpid(), _signal.SIGINT)
    return r
_threading.Condition.__enter__ = _patched
"""
