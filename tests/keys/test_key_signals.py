"""A ^C (or SIGTERM) while ``kiln key generate --force`` or ``kiln key rotate`` writes its
key files waits for all of them: the result is a matching pair, never a new ``.pub``
beside an old ``.sec``.

Before, a signal landing between the two halves left exactly that (``generate --force``:
the new ``.pub``, then the interrupted ``.sec``; ``rotate default``: ``default.sec`` new,
``default.pub`` old), which nothing repaired (only a missing ``.pub`` is rewritten) and a
rerun of ``rotate`` rotated once more. And a signal just after a key file's temp
descriptor was closed made the cleanup close it again: ``internal error: OSError: [Errno
9] Bad file descriptor`` instead of the interrupt, and the secret key's temp copy left in
the directory. Each moment is made exact here: the patched function sends the process
SIGINT before it does its work.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kiln.store.keyfiles import TEMP_PREFIX, load_public_key, load_secret_key, write_secret_key
from kiln.store.signing import SecretKey

#: ``kiln ARGS...`` with ``MODULE.FUNC`` patched to send SIGINT first, once, when called
#: with a first argument named NAME (argv: MODULE FUNC NAME ARGS...)
RUNNER = """
import importlib, os, signal, sys
mod, func, name = importlib.import_module(sys.argv[1]), sys.argv[2], sys.argv[3]
real, sent = getattr(mod, func), []
def patched(*a, **k):
    if not sent and os.path.basename(str(a[0])) == name:
        sent.append(1)
        os.kill(os.getpid(), signal.SIGINT)
    return real(*a, **k)
setattr(mod, func, patched)
sys.argv = ["kiln", *sys.argv[4:]]
from kiln.main import cli
cli()
"""

#: ``kiln ARGS...`` whose first ``os.close`` of a key file's temp descriptor sends SIGINT
#: right after closing it
CLOSE_RUNNER = """
import os, signal, sys
real = os.close
def close(fd):
    real(fd)
    if not getattr(close, "sent", 0) and sys._getframe(1).f_code.co_name == "_write_atomic":
        close.sent = 1
        os.kill(os.getpid(), signal.SIGINT)
os.close = close
sys.argv = ["kiln", *sys.argv[1:]]
from kiln.main import cli
cli()
"""


def _kiln(home: Path, runner: str, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KILN_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-c", runner, *argv], env=env, capture_output=True, text=True, timeout=60
    )


def _interrupted(r: subprocess.CompletedProcess) -> None:
    assert (r.returncode, r.stderr.strip().splitlines()[-1:]) == (130, ["kiln: interrupted"]), r.stderr


def _pair_matches(sec: Path) -> SecretKey:
    key = load_secret_key(sec)
    assert load_public_key(sec.with_suffix(".pub")) == key.public()
    return key


def test_generate_force_interrupted_between_the_halves_writes_both(tmp_path: Path) -> None:
    home, sec = tmp_path / "home", tmp_path / "k.sec"
    r = _kiln(
        home, RUNNER, "kiln.store.keyfiles", "write_public_key", "x", "key", "generate", "k-1", "-o", str(sec)
    )
    assert r.returncode == 0, r.stderr
    old = load_secret_key(sec)
    args = ["key", "generate", "k-1", "-o", str(sec), "--force"]
    r = _kiln(home, RUNNER, "kiln.cmd_key", "write_secret_key", "k.sec", *args)
    _interrupted(r)
    assert _pair_matches(sec).key != old.key  # the new pair, whole
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_rotate_default_interrupted_before_default_pub_writes_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    keys = home / "keys"
    keys.mkdir(parents=True, mode=0o700)
    old = SecretKey.generate("builder-1")
    write_secret_key(keys / "default.sec", old)
    r = _kiln(
        home, RUNNER, "kiln.store.keyfiles", "write_public_key", "default.pub", "key", "rotate", "default"
    )
    _interrupted(r)
    assert _pair_matches(keys / "default.sec").name == "builder-2"
    assert _pair_matches(keys / "builder-2.sec").name == "builder-2"
    assert _pair_matches(keys / "builder-1.sec").key == old.key  # the old key kept, as on success


def test_a_signal_after_a_key_file_is_closed_is_the_interrupt_and_leaves_no_temp(tmp_path: Path) -> None:
    home, sec = tmp_path / "home", tmp_path / "k.sec"
    r = _kiln(home, CLOSE_RUNNER, "key", "generate", "k-1", "-o", str(sec))
    _interrupted(r)
    assert "Bad file descriptor" not in r.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    _pair_matches(sec)  # (the writes were shielded: the pair is whole)
