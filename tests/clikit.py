"""Running the real ``kiln`` command from tests: a fresh ``python -m kiln`` process with
this interpreter (so the checkout under test), output captured as text."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path


def kiln_at(
    tmp: Path, *args: str, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``kiln ARGS...`` with ``KILN_HOME=tmp/home``, 60 s at most; ``env`` adds to it."""
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "KILN_HOME": str(tmp / "home"), **(env or {})},
    )


def kiln(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``kiln ARGS...``; ``env`` adds to (does not replace) the environment."""
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def line_within(stream, seconds: float) -> str:  # noqa: ANN001 - a text stream (a pipe)
    """The next line of ``stream``, or an AssertionError after ``seconds`` without one: a
    test waiting for a process to say something fails rather than hangs when it never
    does. (The reading thread ends when the process is killed and the pipe closes.)"""
    import threading

    got: list[str] = []
    t = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    t.start()
    t.join(seconds)
    if not got:
        raise AssertionError(f"no line within {seconds} s")
    return got[0]


def said_until(stream, text: str, seconds: float) -> str:  # noqa: ANN001 - a text stream
    """The lines ``stream`` gives up to and including the first that contains ``text``
    (each within ``seconds``, ``line_within``); an AssertionError if it ends before."""
    said = ""
    while text not in said:
        line = line_within(stream, seconds)
        assert line, f"it ended without saying {text!r}: {said!r}"
        said += line
    return said


def outcome_within(seconds: float, fn: Callable[[], object], what: str) -> object:
    """``fn()``'s result, or the exception it raised (returned, not raised), run on a
    thread: the test fails saying ``what`` hung instead of hanging itself."""
    out: list = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert out, f"{what} hung (still running after {seconds} s)"
    return out[0]
