"""Build output on the operator's terminal: what kiln prints of a build in its own
messages (a failed build's log tail, file names of its output) has the build's control
characters escaped, always; ``-L`` and ``kiln log`` escape them on a terminal and pass
the log's bytes through untouched to a pipe or file. Real sandboxes, a real pty."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store.build import Builder, BuildError, BuildOptions
from kiln.store.buildlogs import TerminalSafe, shown_output

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]

#: a title, an erased line overwritten after a CR, and OSC 52 (writes the clipboard)
HOSTILE = r"normal\n\033]0;TITLE\007\033[2K\rerror: all good\n\033]52;c;ZWNobyBwd25lZA==\007\n"
RAW = b"normal\n\x1b]0;TITLE\x07\x1b[2K\rerror: all good\n\x1b]52;c;ZWNobyBwd25lZA==\x07\n"
SHOWN = b"normal\n\\x1b]0;TITLE\\x07\\x1b[2K\\rerror: all good\n\\x1b]52;c;ZWNobyBwd25lZA==\\x07\n"


def _prefixed(name: bytes, text: bytes) -> bytes:
    """``text`` as ``-L`` echoes it: every line after ``<name>> ``."""
    return b"".join(name + b"> " + line + b"\n" for line in text.split(b"\n")[:-1])


def _no_controls(text: str) -> None:
    bad = [c for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F]
    assert not bad, repr(text)


def test_a_failed_builds_log_tail_is_escaped(store, graph):
    """Escaped; a line redrawn with lone CRs (a progress bar) shows what a terminal was
    left showing, the text after the last CR, not every frame run together."""
    a, _ = graph.drv(
        "esc", f"printf '{HOSTILE}'; printf 'crlf\\r\\n'; printf 'get 10%%\\rget 100%%\\n'; exit 1"
    )
    with pytest.raises(BuildError) as e:
        Builder(store, BwrapExecutor(), BuildOptions(), say=lambda m: None).realise([a])
    msg = str(e.value)
    _no_controls(msg)
    assert "  error: all good\n" in msg and "TITLE" not in msg and "  get 100%\n" in msg + "\n"
    assert "\\x1b]52;c;ZWNobyBwd25lZA==\\x07" in msg and "  crlf\n" in msg + "\n"


def test_file_names_of_an_output_in_an_error_are_escaped(store, graph):
    # a stray reference's file name is the build's choice, as its log is
    script = "mkdir $out; echo /kiln/store/00000000000000000000000000000000-x > \"$out/$(printf 'a\\033]0;T\\007')\""
    a, _ = graph.drv("strayname", script)
    with pytest.raises(BuildError) as e:
        Builder(store, BwrapExecutor(), BuildOptions(), say=lambda m: None).realise([a])
    _no_controls(str(e.value))
    assert "a\\x1b]0;T\\x07: /kiln/store/00000000000000000000000000000000-x" in str(e.value)


def _kiln(home: Path, args: list[str], tty: str) -> tuple[int, bytes, bytes]:
    """Run kiln with ``tty`` ('stdout' or 'stderr') on a pseudo-terminal, the other on a
    pipe; return (status, what the terminal got, what the pipe got)."""
    master, slave = pty.openpty()
    env = dict(os.environ, KILN_HOME=str(home))
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, tty: slave}
    p = subprocess.Popen([sys.executable, "-m", "kiln", *args], env=env, stdin=subprocess.DEVNULL, **streams)
    os.close(slave)
    got = b""
    while True:
        try:
            piece = os.read(master, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not piece:
            break
        got += piece
    os.close(master)
    piped = (p.stderr if tty == "stdout" else p.stdout).read()
    p.wait()
    return p.returncode, got.replace(b"\r\n", b"\n"), piped  # (the pty's ONLCR)


def test_print_build_logs_escapes_on_a_terminal_only(store, graph):
    a, _ = graph.drv("esc-l", f"printf '{HOSTILE}'; echo done > $out")
    rc, term, _ = _kiln(store.root, ["build", "-L", "--no-substitute", a], "stderr")
    assert rc == 0, term
    assert _prefixed(b"esc-l", SHOWN) in term and b"\x1b" not in term and b"\x07" not in term, term
    b, _ = graph.drv("esc-l2", f"printf '{HOSTILE}'; echo done > $out")
    p = subprocess.run(
        [sys.executable, "-m", "kiln", "build", "-L", "--no-substitute", b],
        env=dict(os.environ, KILN_HOME=str(store.root)),
        capture_output=True,
    )
    # a pipe gets the bytes as they are (each line after the build's name)
    assert p.returncode == 0 and _prefixed(b"esc-l2", RAW) in p.stderr, p.stderr


def test_kiln_log_escapes_on_a_terminal_only(store, graph):
    a, _ = graph.drv("esc-log", f"printf '{HOSTILE}'; echo done > $out")
    Builder(store, BwrapExecutor(), BuildOptions(), say=lambda m: None).realise([a])
    rc, term, _ = _kiln(store.root, ["log", a], "stdout")
    assert rc == 0 and term == SHOWN, term
    p = subprocess.run(
        [sys.executable, "-m", "kiln", "log", a],
        env=dict(os.environ, KILN_HOME=str(store.root)),
        capture_output=True,
    )
    assert p.returncode == 0 and p.stdout == RAW


def test_terminal_safe_holds_what_a_cut_splits():
    t = TerminalSafe()
    pieces = [b"a\r", b"\nb\xc3", b"\xa9\x1b", b"[1m\xff\r"]
    out = b"".join(t.feed(p) for p in pieces) + t.flush()
    assert out == "a\nb\u00e9\\x1b[1m\\xff\\r".encode()
    assert shown_output("x\u202ey\u009b\tz\r\n") == "x\\u202ey\\x9b\tz\n"
    assert shown_output(shown_output("\x1b\r")) == "\\x1b\\r"  # idempotent
    # the bidi marks too, as recipe errors show them (the list is one)
    from kiln.lang.errors import BIDI_CONTROLS

    assert shown_output("".join(map(chr, BIDI_CONTROLS))) == "".join(f"\\u{c:04x}" for c in BIDI_CONTROLS)
