"""The HTTP(S) transport of ``fetch``'s downloads (``fetchdownload``): the pace rule, an
opener whose redirects are never read, size limits and the socket timeout (``fetch``'s
docstring states the rules; this module is how they are enforced on urllib and
http.client).

Theory of operation
-------------------
Each attempt of a download runs under a ``Pace``: a watchdog thread that shuts the
attempt's sockets down once it is past ``PACE_GRACE`` s plus 1 s per ``PACE_MIN_RATE``
body bytes, counted from the request, so a server trickling its status line, headers,
redirects or body cannot hold a build. The ``opener`` speaks http and https only, the two
schemes whose sockets the watchdog sees: urllib's default one also opens ``ftp:``,
``file:`` and ``data:`` URLs, and its redirect handler follows a ``Location`` to ``ftp:``,
where no pace rule held (a trickled FTP banner stalled a fetch for ever). Redirects go
through ``_RedirectWithoutBody`` (urllib's rules, the 3xx body closed unread), which
refuses any target but an http(s) URL without credentials, and says a loop in one line.
The most bytes one source may bring is its ``_Limit`` (``_TooBig`` past it).

Credentials: kiln sends none, so ``fetch`` refuses a URL carrying them before calling
here (``fetchtext.refuse_credentials``), and a redirect to one is refused here. A
``Location`` (text a server controls) reaches messages only through
``fetchtext.shown_url``, escaped.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from . import pacing
from .envnumber import whole_number
from .errors import KilnError, url_credentials
from .fetchtext import shown_url

if TYPE_CHECKING:
    import urllib.response


CHUNK = 1 << 16
USER_AGENT = "kiln-fetch/0.1"


class FetchError(KilnError):
    """No source could deliver the file."""


#: an attempt is too slow once it has run ``PACE_GRACE`` s plus 1 s per ``PACE_MIN_RATE``
#: bytes of body received: far below any real link, far above a trickle. The clock starts
#: when the request is sent, so the response head and any redirects count against it.
PACE_MIN_RATE = pacing.MIN_RATE
PACE_GRACE = pacing.GRACE
#: the most a download without a known size may bring (``KILN_FETCH_MAX_SIZE`` raises it)
MAX_DOWNLOAD = 16 << 30


class _TooSlow(TimeoutError):
    """An attempt that fell behind the pace: retried like a timeout, reported as itself."""


class _TooBig(FetchError):
    """A source offering more bytes than the expected size or the cap: not retried."""


@dataclass(frozen=True)
class _Limit:
    """The most bytes one source may deliver, and how to say it in an error."""

    size: int
    known: bool  # the expected size (a lock entry's) rather than the global cap

    def __str__(self) -> str:
        if self.known:
            return f"the expected size ({self.size} bytes)"
        return f"the download cap ({self.size} bytes; KILN_FETCH_MAX_SIZE raises it)"


#: the longest ``KILN_FETCH_TIMEOUT``: a week of silence is no download any more, and a
#: bound keeps the value within what its users take (``socket.settimeout`` overflows
#: near 1e10 s, libgit2 takes ``int`` milliseconds: at most 24.8 days)
MAX_FETCH_TIMEOUT = 7 * 24 * 3600


def fetch_timeout() -> float:
    """The socket timeout in seconds: ``KILN_FETCH_TIMEOUT``, default 30; more than 0 and
    at most ``MAX_FETCH_TIMEOUT`` (so never infinite or NaN), else ``FetchError``."""
    raw = os.environ.get("KILN_FETCH_TIMEOUT", "30")
    shown_raw = repr(raw) if len(raw) <= 40 else f"{raw[:40]!r}..."
    try:
        timeout = float(raw)
    except ValueError:
        raise FetchError(f"KILN_FETCH_TIMEOUT must be a number of seconds, found {shown_raw}") from None
    if not 0 < timeout <= MAX_FETCH_TIMEOUT:  # (NaN compares false: refused too)
        raise FetchError(
            f"KILN_FETCH_TIMEOUT must be a positive number of seconds, at most {MAX_FETCH_TIMEOUT} "
            f"(a week), found {shown_raw}"
        )
    return timeout


def _max_download() -> int:
    return whole_number("KILN_FETCH_MAX_SIZE", MAX_DOWNLOAD, FetchError, "a number of bytes")


class Pace:
    """The pace rule for one attempt, enforced even while http.client is blocked.

    The attempt may last ``PACE_GRACE`` s plus 1 s per ``PACE_MIN_RATE`` body bytes, from
    the moment the request is sent: connecting, the status line and headers (of every
    redirect too) and the body all count. The socket timeout alone only bounds silence,
    so a server sending one byte per (timeout - 1) s inside a header line would otherwise
    hold the build for ever. A watchdog thread shuts down the attempt's sockets once the
    deadline passes; the reader then sees an error or EOF and ``check`` turns it into
    ``_TooSlow``. Use as a context manager around the attempt."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.got = 0
        self.in_body = False
        self.fired: str | None = None
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="kiln-fetch-pace", daemon=True)

    def __enter__(self) -> Pace:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def deadline(self) -> float:
        # read the module's values each time: tests (and callers) may change them
        return self.start + PACE_GRACE + self.got / PACE_MIN_RATE

    def add(self, sock: socket.socket) -> socket.socket:
        """Watch ``sock`` (a connection of this attempt); returns it."""
        with self._lock:
            self._socks.append(sock)
            fired = self.fired
        if fired:
            _shutdown(sock)
        return sock

    def check(self) -> None:
        """Raise ``_TooSlow`` if the attempt is past its deadline."""
        if self.fired is None and time.monotonic() > self.deadline():
            self.fired = self._says()
        if self.fired is not None:
            raise _TooSlow(self.fired)

    def _says(self) -> str:
        took = time.monotonic() - self.start
        if not self.in_body:
            return f"too slow: no complete response head (status, headers, redirects) after {took:.1f} s"
        return (
            f"too slow: {self.got} bytes in {took:.0f} s (at least "
            f"{PACE_MIN_RATE} bytes/s is expected after {PACE_GRACE:g} s)"
        )

    def _watch(self) -> None:
        while not self._stop.wait(max(self.deadline() - time.monotonic(), 0.0) + 0.01):
            if time.monotonic() > self.deadline():
                with self._lock:
                    self.fired = self.fired or self._says()
                    socks = list(self._socks)
                for s in socks:
                    _shutdown(s)
                return


def _shutdown(sock: socket.socket) -> None:
    # socket.socket.shutdown on the fd, not SSLSocket.shutdown (which would also drop the
    # TLS object under a reader in another thread); a blocked recv then returns at once
    with contextlib.suppress(OSError):  # closed, or detached into an SSLSocket (watched too)
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _watched(cls: type[http.client.HTTPConnection], pace: Pace) -> type[http.client.HTTPConnection]:
    """An ``http.client`` connection class whose sockets ``pace`` can shut down: the raw
    socket as soon as it is connected (so a TLS handshake is covered), then the socket the
    connection reads from (the SSLSocket for https)."""

    class Watched(cls):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, **kw: Any) -> None:  # (``cls``'s, passed on)
            super().__init__(*a, **kw)
            self._create_connection = lambda *ca, **ckw: pace.add(socket.create_connection(*ca, **ckw))

        def connect(self) -> None:
            super().connect()
            pace.add(self.sock)

    return Watched


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, pace: Pace) -> None:
        super().__init__()
        self.pace = pace

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_watched(http.client.HTTPConnection, self.pace), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, pace: Pace) -> None:
        super().__init__()
        self.pace = pace

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        context = self._context  # type: ignore[attr-defined]  # set by HTTPSHandler, not in its stubs
        return self.do_open(_watched(http.client.HTTPSConnection, self.pace), req, context=context)


class _RedirectWithoutBody(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handling (scheme check, loop limit of 10) without reading the 3xx
    body: urllib's own handler reads it whole into memory before following ``Location``,
    and a hostile server can make that body any size, at any pace. Closing the response
    first makes urllib's ``fp.read()`` return ``b""``."""

    def http_error_302(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
    ) -> http.client.HTTPResponse | urllib.response.addinfourl | None:
        fp.close()
        location = headers.get("location") or headers.get("uri")
        target = None
        if location is not None:
            # judged before urllib follows it: urllib would go on to ftp: (which no pace
            # rule covers) and answer file: with an error quoting the Location raw
            target = urllib.parse.urljoin(req.full_url, location.strip())
            if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
                raise FetchError(
                    f"refusing a redirect to {shown_url(location)}: only http and https redirects are followed"
                )
            # (not its query: a pre-signed URL there is the server's choice, recorded nowhere)
            if url_credentials(target, query=False) is not None:
                raise FetchError(
                    f"refusing a redirect to {shown_url(location)}: credentials in a URL are not supported"
                )
        try:
            return super().http_error_302(req, fp, code, msg, headers)
        except urllib.error.HTTPError as e:  # urllib's loop check: a message of three lines
            if not str(e.reason).startswith(self.inf_msg) or target is None:
                raise
            seen = getattr(req, "redirect_dict", {})
            how = "a loop at" if seen.get(target) else f"more than {self.max_redirections}, the last to"
            raise FetchError(f"too many redirects ({how} {shown_url(target)})") from None

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def opener(pace: Pace) -> urllib.request.OpenerDirector:
    """An opener for http and https only, both watched by ``pace``: build_opener's
    defaults minus the ftp, file and data handlers (proxies from the environment still
    apply; a proxied request goes through the watched http handler)."""
    director = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        _HTTPHandler(pace),
        _HTTPSHandler(pace),
        urllib.request.HTTPDefaultErrorHandler(),
        _RedirectWithoutBody(),
        urllib.request.HTTPErrorProcessor(),
    ):
        director.add_handler(handler)
    return director
