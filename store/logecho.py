"""``kiln build -L``: a build's output echoed to stderr as it runs, line by line.

Invariants: every line written is whole and starts with ``<derivation name>> ``; each
write holds whole lines only, so builds running at once (``-j``) never mix within a
line; on a terminal the bytes are escaped (``buildlogs.TerminalSafe``), elsewhere they
are the build's own (the stored log is always exact: ``buildlogs``). The echo never
stops a build: when stderr's reader has gone, it falls silent.
"""

from __future__ import annotations

import sys

from .buildlogs import TerminalSafe


class LogEcho:
    """``-L``'s log echo, one per build: each line of the build's output, prefixed with
    ``<name>> `` (the derivation's name, as ``nix build -L``), raw to a pipe or file,
    escaped on a terminal (``buildlogs.TerminalSafe``: the build's escape sequences are
    not the terminal's to act on). Only whole lines are written, each set of them in one
    write: with ``-j`` several builds echo at once, and their lines must not mix. A line
    longer than ``HOLD_MAX`` is written in pieces, each on a line of its own. ``close`` writes
    what was held back and ends an unfinished last line, so kiln's next message starts a
    line of its own. It stops (the build goes on, its log is kept) once stderr's reader
    has gone (``kiln build -L 2>&1 | head``)."""

    HOLD_MAX = 64 << 10

    def __init__(self, name: str) -> None:
        self.gone = False
        self.safe = TerminalSafe() if _isatty(sys.stderr) else None
        self.prefix = f"{name}> ".encode("utf-8", "surrogateescape")
        self.held = b""

    def __call__(self, data: bytes) -> None:
        data = self.held + (data if self.safe is None else self.safe.feed(data))
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) > self.HOLD_MAX:
            self.held = b""
            self._write(data + b"\n")
            return
        self.held = data[cut:]
        self._write(data[:cut])

    def close(self) -> None:
        rest = self.held + (self.safe.flush() if self.safe is not None else b"")
        self.held = b""
        if rest:
            self._write(rest if rest.endswith(b"\n") else rest + b"\n")

    def _write(self, data: bytes) -> None:
        if self.gone or not data:
            return
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
            end = b"\n"
        else:
            end = b""
        out = b"\n".join(self.prefix + line for line in lines) + end
        try:
            sys.stderr.buffer.write(out)
            sys.stderr.flush()
        except BrokenPipeError:
            self.gone = True


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # no such method, or a closed stream
        return False
