"""``kiln store verify`` ends on ^C whatever bytecode it lands at. Its main thread waits
for the checking threads' futures; a signal's exception raised just after ``Future.result``
took the future's Condition lock left that lock held, the worker finishing the future
blocked on it, and the pool's shutdown waited for ever (the command hung; a SIGTERM from
CI or ``timeout`` hung it until SIGKILL). The hand-over now runs in a ``sigshield``
region. The moment is made exact: the main thread's ``Condition.__enter__`` inside
``Future.result`` sends SIGINT right after taking the lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from clikit import kiln
from sigkit import sigint_after_condition_lock

RUNNER = (
    """
import sys, time
from kiln.store import verify
real_check = verify._check_path
def slow_check(store, info):
    time.sleep(0.3)  # (the first future is still running when the main thread waits on it)
    return real_check(store, info)
verify._check_path = slow_check
"""
    + sigint_after_condition_lock("result")
    + """
sys.argv = ["kiln", *sys.argv[1:]]
from kiln.main import cli
cli()
"""
)


def test_a_signal_while_verify_waits_for_a_check_ends_it(tmp_path: Path) -> None:
    store = tmp_path / "S"
    for i in range(4):
        src = tmp_path / f"src{i}"
        src.mkdir()
        (src / "f").write_text(f"{i}\n")
        assert kiln("store", "add", str(src), "--store", str(store)).returncode == 0
    env = dict(os.environ, KILN_HOME=str(tmp_path / "home"))
    r = subprocess.run(
        [sys.executable, "-c", RUNNER, "store", "verify", "--store", str(store)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (r.returncode, r.stderr.strip().splitlines()[-1:]) == (130, ["kiln: interrupted"]), r.stderr
    v = kiln("store", "verify", "--store", str(store))
    assert v.returncode == 0, v.stdout + v.stderr
