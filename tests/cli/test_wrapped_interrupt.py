"""A signal whose exception Python wraps in another is still the interrupt: exit 143 (or
130) and ``kiln: terminated``, not ``kiln: internal error: RuntimeError: Error calling
__set_name__ ...`` (exit 70). The full suite hit it once: SIGTERM landing while a lazy
import built ``platform.uname_result`` (its ``cached_property``'s ``__set_name__``). Here
a class body's ``__set_name__`` sends the signal itself, inside the command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = """
import os, signal, sys
from kiln.store import localstore
SIG = getattr(signal, sys.argv.pop(1))
real = localstore.LocalStore.open.__func__
def open_(cls, *a, **k):
    class Descriptor:
        def __set_name__(self, owner, name):
            os.kill(os.getpid(), SIG)
            for _ in range(1000):  # (the handler runs here: its exception is wrapped)
                pass
    class Built:
        field = Descriptor()
    return real(cls, *a, **k)
localstore.LocalStore.open = classmethod(open_)
sys.argv = ["kiln", *sys.argv[1:]]
from kiln.main import cli
cli()
"""


@pytest.mark.parametrize(
    ("sig", "code", "said"), [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")]
)
def test_a_wrapped_signal_is_the_interrupt(tmp_path: Path, sig: str, code: int, said: str) -> None:
    env = dict(os.environ, KILN_HOME=str(tmp_path / "home"))
    r = subprocess.run(
        [sys.executable, "-c", RUNNER, sig, "store", "roots"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (r.returncode, r.stderr.strip().splitlines()[-1:]) == (code, [f"kiln: {said}"]), r.stderr
    assert "internal error" not in r.stderr
