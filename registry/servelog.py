"""What ``kiln serve`` writes to its logs: one line per event, never request bytes.

Invariants
----------
- **One line per event.** Every line goes through ``one_line``: control characters
  (a CR or LF in a path or a reason could forge log lines) and non-ASCII are escaped.
- **No request bytes, no tracebacks from protocol errors.** aiohttp logs a request it
  cannot parse with ``logger.exception`` (traceback included), and the exception's
  message quotes the offending bytes: a header line ``Authorization: Bearer
  kiln_...\\r`` (a token file with a CRLF) or a whole overlong header would reach the
  log. ``quiet_library_logs`` puts ``OneLineHandler`` on aiohttp's and asyncio's
  loggers instead of Python's last-resort handler: it writes the log message (aiohttp's
  ``"Error handling request from %s"``, with the peer address) and the exception's type
  name, never its message or traceback.
- **Bursts are one line.** A flood of the same event (``accept()`` failing with EMFILE
  every second while the descriptor table is full; a scan of malformed requests) is
  written once per ``BURST`` seconds per message (by its first 40 characters), the
  next line saying how many were left out. kiln serve's own per-request events (``events``:
  a client that went away mid-request, a full disk) follow the same rule: any client
  can cause them at will.
- **The access log** (``kiln serve --access-log FILE|-``) has one line per answered
  request: ``<UTC time> <peer> <method> "<path>" <status> <bytes> <token id or ->``,
  where ``<bytes>`` is what was sent for the answer, header and body (a file's body
  sent with ``sendfile`` included, as far as it went).
  The path is escaped (``one_line``; ``"`` and ``\\`` too); the token id is that of the
  token that authenticated the request (``TOKEN_ID``), never the token; on a 401 or 403
  answer without one, the id of the token the client presented, if it is well formed
  (``auth.presented_token_id``: the id alone, never the secret), so an operator sees
  which revoked or wrong token is still in use.
- **Log rotation.** ``reopen_access_logs`` (``kiln serve``'s SIGHUP, in every worker:
  ``workers``) opens each access-log file again by its name, so after logrotate's ``mv
  access.log access.log.1`` new lines go to a new ``access.log``; until it succeeds (a
  file that cannot be created) lines keep going to the old file.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import weakref
from typing import IO, Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .auth import presented_token_id

#: seconds during which repeats of one message are counted, not written
BURST = 10.0
#: request key under which ``server.Registry`` records the id of the token it accepted (a
#: typed key where aiohttp has them: a plain string key warns there)
TOKEN_ID: Any = web.RequestKey("kiln_token_id", str) if hasattr(web, "RequestKey") else "kiln_token_id"


def one_line(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters with everything but printable ASCII escaped."""
    text = text[:limit]
    if text.isascii() and text.isprintable():
        return text
    return "".join(
        c if c.isascii() and c.isprintable() else c.encode("unicode_escape").decode() for c in text
    )


class OneLineHandler(logging.Handler):
    """Writes ``kiln serve: <message>[: <exception type>]`` to ``stream`` (stderr), one
    line per record, rate-limited per message (see the module docstring)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__(logging.WARNING)
        self.stream = stream
        self._last: dict[str, tuple[float, int]] = {}  # message -> (written at, left out since)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
            # (the start of the message: asyncio's embed a handle's repr, different each time)
            key = f"{record.name}:{msg[:40]}"
            now = time.monotonic()
            at, left_out = self._last.get(key, (-BURST, 0))
            if now - at < BURST:
                self._last[key] = (at, left_out + 1)
                return
            if len(self._last) > 1000:  # distinct messages are few; bound it anyway
                self._last.clear()
            self._last[key] = (now, 0)
            try:
                text = record.getMessage()
            except (TypeError, ValueError):
                text = msg
            exc = record.exc_info[1] if record.exc_info else None
            line = one_line(text) + (f": {type(exc).__name__}" if exc is not None else "")
            if left_out:
                line += f" (and {left_out} more like it in the last {now - at:.0f} s)"
            stream = self.stream or sys.stderr
            stream.write(f"kiln serve: {line}\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never take the server down
            pass


_LIBRARY_LOGGERS = ("aiohttp.server", "aiohttp.access", "aiohttp.web", "aiohttp.internal", "asyncio")
#: kiln serve's own per-request events (a client gone mid-request, a full disk): anyone
#: can cause them, as often as they like, so they go through the same burst rule
EVENTS = "kiln.serve"
events = logging.getLogger(EVENTS)


def quiet_library_logs(stream: IO[str] | None = None) -> None:
    """Route aiohttp's and asyncio's log records through one ``OneLineHandler`` (and not
    to Python's last-resort handler, which prints tracebacks and request bytes)."""
    handler = OneLineHandler(stream)
    for name in (*_LIBRARY_LOGGERS, EVENTS):
        log = logging.getLogger(name)
        for h in list(log.handlers):
            if isinstance(h, OneLineHandler):
                log.removeHandler(h)
        log.addHandler(handler)
        log.propagate = False


def access_line(peer: str, method: str, path: str, status: int, size: int, token_id: str | None) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # a backslash first: an escape must be told from a path's own "\x0a" (four characters)
    # (cut first: a cut after doubling could split a pair and escape the closing quote)
    shown = one_line(path[:1000].replace("\\", "\\\\"), 2000).replace('"', '\\"')
    return f'{stamp} {one_line(peer, 64) or "-"} {one_line(method, 16)} "{shown}" {status} {size} {token_id or "-"}\n'


#: the access logs of this process, for ``reopen_access_logs``
_OPEN: weakref.WeakSet[AccessLog] = weakref.WeakSet()


def reopen_access_logs() -> None:
    """Open every access log of this process again by its name (``AccessLog.reopen``)."""
    for log in list(_OPEN):
        log.reopen()


class AccessLog:
    """The access-log file (``-``: stdout), shared by aiohttp's requests (``Logger``)
    and the fast path's answers (``fast``)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.out: IO[str] = sys.stdout if target == "-" else open(target, "a", encoding="ascii")  # noqa: SIM115
        _OPEN.add(self)

    def reopen(self) -> None:
        """Write to the file named ``target`` from now on (a rotated log's new file); if
        it cannot be opened, say so on stderr and go on with the old one."""
        if self.target == "-":
            return
        try:
            new = open(self.target, "a", encoding="ascii")  # noqa: SIM115 - kept open until the next reopen
        except OSError as e:
            print(
                f"kiln serve: cannot reopen the access log {one_line(self.target)}: {e.strerror or e}; "
                "still writing to the old file",
                file=sys.stderr,
                flush=True,
            )
            return
        old, self.out = self.out, new
        with contextlib.suppress(OSError):  # (a full disk failing the last flush: lost either way)
            old.close()

    def write(self, line: str) -> None:
        try:
            self.out.write(line)
            self.out.flush()
        except (OSError, ValueError):  # a full disk must not fail the requests
            pass

    def fast(self, conn: Any, path: str, status: int, size: int) -> None:
        peer = conn.transport.get_extra_info("peername") if conn.transport is not None else None
        self.write(access_line(peer[0] if peer else "", "GET", path, status, size, None))

    def logger_class(self) -> type[AbstractAccessLogger]:
        log = self

        class Logger(AbstractAccessLogger):
            def log(self, request: Any, response: Any, time: float) -> None:
                token_id = request.get(TOKEN_ID) if hasattr(request, "get") else None
                if token_id is None and response.status in (401, 403):
                    # (refused: the id it presented, which names a revoked or wrong token)
                    token_id = presented_token_id(
                        (getattr(request, "headers", None) or {}).get("Authorization")
                    )
                # what aiohttp wrote (the header, and a body it wrote itself) plus the
                # body a file answer sent with sendfile(2), which aiohttp does not count
                sent = getattr(response, "sendfile_sent", 0) or 0
                size = (getattr(response, "body_length", 0) or 0) + sent
                log.write(
                    access_line(
                        request.remote or "",
                        request.method,
                        request.raw_path,
                        response.status,
                        size,
                        token_id,
                    )
                )

            @property
            def enabled(self) -> bool:
                return True

        return Logger
