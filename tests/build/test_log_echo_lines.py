"""``kiln build -L`` echoes each build's output line by line, every line after
``<name>> `` (as ``nix build -L``): with ``-j2`` the lines of two builds running at once
were interleaved with nothing saying whose they were, and could mix within a line; and
a last line without a newline ran into kiln's own message (``...at enderror: builder
for ... failed``), so ``grep '^error:'`` missed it. Real sandboxes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]


def _build(store, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "kiln", "build", "-L", "--no-substitute", *args],
        env=dict(os.environ, KILN_HOME=str(store.root)),
        capture_output=True,
    )


def test_parallel_builds_lines_are_whole_and_named(store, graph):
    # each writes a line in two pieces with a pause between, while the other runs
    script = "for i in 1 2 3 4 5; do printf '{n} line %s ' $i; sleep 0.05; printf 'end\\n'; done; echo > $out"
    a, _ = graph.drv("chat-a", script.format(n="A"))
    b, _ = graph.drv("chat-b", script.format(n="B"))
    p = _build(store, "-j2", a, b)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.decode().splitlines()
    for who, name in (("A", "chat-a"), ("B", "chat-b")):
        mine = [ln for ln in lines if ln.startswith(f"{name}> ")]
        assert mine == [f"{name}> {who} line {i} end" for i in range(1, 6)], p.stderr
    # nothing else carries a build's output
    assert not [ln for ln in lines if " line " in ln and not ln.startswith(("chat-a> ", "chat-b> "))], (
        p.stderr
    )


def test_an_unfinished_last_line_does_not_run_into_the_error(store, graph):
    a, _ = graph.drv("failnl", "printf 'progress 50%%\\rprogress 100%%\\rno newline at end'; exit 3")
    p = _build(store, a)
    assert p.returncode != 0
    err = p.stderr.decode()
    assert "failnl> progress 50%\rprogress 100%\rno newline at end\n" in err, err
    assert any(ln.startswith("error: builder for") for ln in err.splitlines()), err


def test_a_very_long_line_is_echoed_in_pieces(store, graph):
    # 200 KiB without a newline: not held back whole; each piece on a line of its own
    a, _ = graph.drv("longline", "head -c 204800 /dev/zero | tr '\\0' x; echo > $out")
    p = _build(store, a)
    assert p.returncode == 0, p.stderr
    pieces = [ln for ln in p.stderr.decode().splitlines() if ln.startswith("longline> ")]
    assert len(pieces) >= 2 and sum(len(ln) - len("longline> ") for ln in pieces) == 204800, len(pieces)
