"""kiln's handlers for SIGINT, SIGTERM and SIGHUP (``common.terminate_as_interrupt``):
they defer their exception while the main thread is in a ``sigshield`` region, one
raised inside a finalizer or weakref callback (which Python would print as "Exception
ignored" and drop) comes again in the main thread, and the final message to a terminal
that hung up (EIO) does not turn the exit status 129 into 1."""

from __future__ import annotations

import contextlib
import os
import pty
import subprocess
import sys

import pytest

from kiln.common import Terminated, _Quiet, run_command


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_a_signal_raised_inside_a_weakref_callback_is_not_lost() -> None:
    """The handler's exception inside a weakref callback was printed ("Exception ignored
    in: <function ...cb>") and dropped: the command ran on to exit 0."""
    r = _python(
        "import os, signal, time, weakref\n"
        "from kiln.common import Terminated, terminate_as_interrupt\n"
        "class O: pass\n"
        "def cb(ref):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    for _ in range(100000): pass  # the handler runs here, inside the callback\n"
        "try:\n"
        "    with terminate_as_interrupt():\n"
        "        o = O(); r = weakref.ref(o, cb); del o\n"
        "        end = time.monotonic() + 2\n"
        # (not a bare ``while ...: pass``: on Python 3.13.0 an exception a signal handler
        # raised in such a loop skipped the enclosing try and with, CPython gh-130279)
        "        while time.monotonic() < end: time.sleep(0.01)\n"
        "        print('ran on')\n"
        "except Terminated as e:\n"
        "    print('terminated', e.signum)\n"
    )
    assert r.stdout == "terminated 15\n" and "Exception ignored" not in r.stderr, (r.stdout, r.stderr)


def test_other_unraisable_exceptions_still_reach_the_hook_before() -> None:
    r = _python(
        "import sys, weakref\n"
        "from kiln.common import terminate_as_interrupt\n"
        "class O: pass\n"
        "def cb(ref): raise ValueError('boom')\n"
        "with terminate_as_interrupt():\n"
        "    o = O(); r = weakref.ref(o, cb); del o\n"
        "print('done')\n"
    )
    assert r.stdout == "done\n" and "Exception ignored" in r.stderr and "ValueError: boom" in r.stderr


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_in_a_shielded_region_is_raised_when_it_ends(sig: str) -> None:
    r = _python(
        "import os, signal\n"
        "from kiln.common import Terminated, terminate_as_interrupt\n"
        "from kiln.store import sigshield\n"
        "signal.signal(signal.SIGHUP, signal.SIG_DFL)  # (the runner may ignore it)\n"
        "with terminate_as_interrupt():\n"
        "    try:\n"
        "        with sigshield.shielded:\n"
        f"            os.kill(os.getpid(), signal.{sig})\n"
        "            for _ in range(100000): pass\n"
        "            print('region finished')\n"
        "    except KeyboardInterrupt as e:\n"
        "        print(type(e).__name__, getattr(e, 'signum', 2))\n"
    )
    want = "KeyboardInterrupt 2" if sig == "SIGINT" else f"Terminated {15 if sig == 'SIGTERM' else 1}"
    assert r.stdout == f"region finished\n{want}\n", (r.stdout, r.stderr)


@contextlib.contextmanager
def _hung_up_terminal():
    """A text stream on a terminal whose other side has closed (writes fail with EIO)."""
    master, slave = pty.openpty()
    os.close(master)
    tty = os.fdopen(slave, "w", buffering=1)  # (line-buffered, as stderr is)
    try:
        yield tty
    finally:
        with contextlib.suppress(OSError):  # (the close's flush hits EIO too)
            tty.close()


def test_a_terminal_that_hung_up_is_a_reader_gone() -> None:
    with _hung_up_terminal() as tty:
        q = _Quiet(tty)
        q.write("kiln: terminated\n")
        q.flush()
        q.write("more\n")  # silently dropped from now on


def test_a_hangup_s_message_to_the_dead_terminal_keeps_status_129(monkeypatch) -> None:
    """SIGHUP before ``kiln run`` started its program: "kiln: terminated" hit EIO on the
    terminal that had gone, and kiln exited 1 instead of 129."""

    def hung_up(argv: list[str]) -> int:
        e = Terminated()
        e.signum = 1
        raise e

    with _hung_up_terminal() as tty:
        monkeypatch.setattr(sys, "stderr", tty)
        assert run_command(hung_up, ["run"]) == 129
        monkeypatch.undo()
