"""A signal while a writer's temp names are removed (``scratch.writing``'s exit, through
``sigshield.finish``): the removal is finished, then the signal's exception raised.

Found by the ^C soak (``test_import_interrupt_stagers``): ``kiln eval --write`` interrupted
just as its batch's temp dir was being removed, after the batch committed, ended 130 with
``<store>/tmp/<pid>-<rand>/<rand>.batch/s1`` left behind (the removal was cut half-way).
Here the moment is made exact: the removal of the ``.batch`` dir sends the process SIGINT
first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from clikit import kiln
from test_import_interrupt_stagers import _drvs_registered, _leftovers, _project

from kiln.store import scratch, sigshield
from kiln.store.localstore import LocalStore

N = 40

#: ``kiln ARGS...`` whose first removal of a ``.batch`` temp dir sends the process SIGINT
#: just before the dir is removed
RUNNER = """
import os, signal, sys
from pathlib import Path
from kiln.store import scratch
real, sent = scratch.remove_tree, []
def remove_tree(p):
    if Path(p).name.endswith(".batch") and not sent:
        sent.append(p)
        os.kill(os.getpid(), signal.SIGINT)
    return real(p)
scratch.remove_tree = remove_tree
sys.argv = ["kiln", *sys.argv[1:]]
from kiln.main import cli
cli()
"""


def test_a_signal_as_a_command_removes_its_temp_dir_waits_for_the_removal(tmp_path: Path) -> None:
    recipe, store = _project(tmp_path, N), tmp_path / "S"
    args = ["eval", "--write", "--no-cache", str(recipe), "--store", str(store)]
    r = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr.strip().splitlines()[-1:]) == (130, ["kiln: interrupted"]), r.stderr
    assert _leftovers(store) == []
    assert _drvs_registered(store) == N  # (the batch had committed: the signal came after)
    v = kiln("store", "verify", "--store", str(store))
    assert v.returncode == 0, v.stdout + v.stderr


def test_a_library_caller_s_ctrl_c_in_the_removal_has_it_done_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's own ^C handler raises inside the removal: ``finish`` runs it again from the
    start, then raises the interrupt."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    real, calls = scratch.remove_tree, []

    def remove_tree(p: Path) -> None:
        calls.append(Path(p).name)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # (raised at the next bytecode: before the removal)
        real(p)

    monkeypatch.setattr(scratch, "remove_tree", remove_tree)
    store = LocalStore.open(tmp_path / "S")
    try:
        texts = [(f"t{i}.drv", f"derivation {i}\n".encode(), []) for i in range(N)]
        with pytest.raises(KeyboardInterrupt):
            store.add_texts(texts)
        assert len(calls) == 2 and calls[0] == calls[1], calls
        assert _leftovers(tmp_path / "S") == []
        assert sum(p.endswith(".drv") for p in store.all_paths()) == N
    finally:
        store.close()


def _kiln_like_handler() -> None:
    signal.signal(signal.SIGINT, lambda signum, frame: sigshield.deliver(KeyboardInterrupt()))


def test_finish_runs_a_cleanup_once_and_raises_the_signal_after_it() -> None:
    old = signal.getsignal(signal.SIGINT)
    _kiln_like_handler()
    steps: list[str] = []

    def cleanup() -> None:
        steps.append("begin")
        os.kill(os.getpid(), signal.SIGINT)
        steps.extend(f"step {i}" for i in range(3))  # (many bytecodes: the handler has run)
        steps.append("end")

    try:
        with pytest.raises(KeyboardInterrupt):
            sigshield.finish(cleanup)
    finally:
        signal.signal(signal.SIGINT, old)
    assert steps == ["begin", "step 0", "step 1", "step 2", "end"]
    assert not sigshield.pending()


def test_finish_passes_a_cleanup_s_own_error_on() -> None:
    def cleanup() -> None:
        raise OSError("cannot remove")

    with pytest.raises(OSError, match="cannot remove"):
        sigshield.finish(cleanup)
    calls: list[int] = []
    sigshield.finish(lambda: calls.append(1))
    assert calls == [1]


def test_a_cleanup_failing_as_a_signal_comes_runs_once_and_the_signal_wins() -> None:
    old = signal.getsignal(signal.SIGINT)
    _kiln_like_handler()
    calls: list[int] = []

    def cleanup() -> None:
        calls.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        raise OSError("cannot remove")

    try:
        with pytest.raises(KeyboardInterrupt):
            sigshield.finish(cleanup)
    finally:
        signal.signal(signal.SIGINT, old)
    assert calls == [1]
