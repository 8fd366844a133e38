"""An interrupt at a chosen moment of a batch import (``store.importbatch``), with a log of
what its stager threads and the temp dir's removal did, in order.

``install(log)`` patches the running process (a test's, or a ``kiln`` command started by
``run_kiln``): the first staging on a stager thread waits until the main thread has
handed over the last path (it is then past every ``submit``, waiting for the stagers),
sends this process SIGINT, and then waits up to ``HOLD_S`` for the main thread to start
removing the batch's temp dir before it stages its path for real. A fixed import waits
for that staging first; the broken one removed the dir while it ran. Log lines:
``start K``/``end K`` (a staging), ``interrupt``, ``cleanup NAME`` (the main thread
removes scratch entry NAME, ``<rand>.batch`` being the stagers' dir).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

#: how long the interrupting stager waits for the main thread to remove its temp dir
HOLD_S = 3.0

RUNNER = """
import sys
sys.path.insert(0, sys.argv[1])
import stagerprobe
stagerprobe.install(sys.argv[2])
sys.argv = ["kiln", *sys.argv[3:]]
from kiln.main import cli
cli()
"""


def install(log: str | Path, patch: Callable[[object, str, object], None] = setattr) -> None:
    """Patch ``importbatch`` (and the scratch removal) of this process with ``patch``
    (``setattr``, or a test's undoable one); see the module docstring."""
    from kiln.store import importbatch, registration, scratch, trees

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    exhausted, cleanup, first = threading.Event(), threading.Event(), threading.Lock()

    def note(line: str) -> None:
        os.write(fd, f"{line}\n".encode())

    real_import = importbatch.import_objects

    def import_objects(store, items, tmp, made_here=False):  # noqa: ANN001, ANN202
        def handed_over():  # noqa: ANN202
            yield from items
            exhausted.set()

        return real_import(store, handed_over(), tmp, made_here)

    real_stage = importbatch.stage_bytes

    def stage_bytes(info, data, tmp, k):  # noqa: ANN001, ANN202
        note(f"start {k}")
        try:
            if first.acquire(blocking=False):  # (never released: once)
                exhausted.wait(60)
                note("interrupt")
                os.kill(os.getpid(), signal.SIGINT)
                cleanup.wait(HOLD_S)
            return real_stage(info, data, tmp, k)
        finally:
            note(f"end {k}")

    real_remove = trees.remove_tree

    def remove_tree(p):  # noqa: ANN001, ANN202
        if threading.current_thread() is threading.main_thread() and Path(p).name.endswith(".batch"):
            note(f"cleanup {Path(p).name}")
            cleanup.set()
        return real_remove(p)

    patch(importbatch, "import_objects", import_objects)
    patch(importbatch, "stage_bytes", stage_bytes)
    patch(scratch, "remove_tree", remove_tree)
    patch(registration, "remove_tree", remove_tree)


def run_kiln(log: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``kiln ARGS...`` in a fresh process with ``install(log)`` done first."""
    here = str(Path(__file__).parent)
    return subprocess.run(
        [sys.executable, "-c", RUNNER, here, str(log), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def staged_after_cleanup(lines: list[str]) -> list[str]:
    """The staging events (``start``/``end``) logged after the temp dir's removal began,
    and the stagings started but not ended by then."""
    if not any(x.startswith("cleanup ") for x in lines):
        return []
    at = next(i for i, x in enumerate(lines) if x.startswith("cleanup "))
    before, after = lines[:at], lines[at:]
    open_ = {x.split()[1] for x in before if x.startswith("start ")} - {
        x.split()[1] for x in before if x.startswith("end ")
    }
    return [x for x in after if x.startswith(("start ", "end "))] + [f"running {k}" for k in sorted(open_)]
