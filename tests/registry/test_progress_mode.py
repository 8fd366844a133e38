"""Progress meters draw only on a terminal that can show them: not with ``TERM=dumb``
(CI runners that give jobs a pseudo-terminal, ``docker run -t``, kept every ``\\r``
redraw in their logs) nor with ``KILN_PROGRESS=0``; ``KILN_PROGRESS=1`` asks for them on a
dumb terminal, never on a pipe. Run under a real pseudo-terminal (``kiln push``)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from kiln.store.localstore import LocalStore


def _push_on_a_terminal(store: Path, path: str, reg: Path, **env: str) -> tuple[int, str]:
    master, slave = pty.openpty()
    p = subprocess.Popen(
        [sys.executable, "-m", "kiln", "push", "--store", str(store), path, "--to", f"file://{reg}"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, **env},
    )
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its side
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return p.wait(), out.decode(errors="replace")


def test_push_draws_progress_only_where_it_can_be_shown(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with LocalStore.open(root) as store:
        (tmp_path / "f").write_bytes(b"x" * 100_000)
        path = store.add_path(tmp_path / "f").path
    cases = [
        ({"TERM": "xterm", "KILN_PROGRESS": ""}, True),
        ({"TERM": "dumb", "KILN_PROGRESS": ""}, False),
        ({"TERM": "xterm", "KILN_PROGRESS": "0"}, False),
        ({"TERM": "dumb", "KILN_PROGRESS": "1"}, True),
    ]
    for i, (env, drawn) in enumerate(cases):
        rc, out = _push_on_a_terminal(root, path, tmp_path / f"reg{i}", **env)
        assert rc == 0, out
        assert ("\r" in out.replace("\r\n", "\n") and "\x1b[K" in out) is drawn, (env, out)
        assert "push: 1/1 paths" in out or not drawn, (env, out)
    # never on a pipe, even when asked
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kiln",
            "push",
            "--store",
            str(root),
            path,
            "--to",
            f"file://{tmp_path / 'regp'}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "KILN_PROGRESS": "1"},
    )
    assert r.returncode == 0 and "\x1b[K" not in r.stderr + r.stdout, r.stderr
