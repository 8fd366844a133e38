"""What ``HttpClient`` says when a request fails on the way: before its answer
(``request_error``) or while the answer's body is read (``answer_errors``).

Every message names the request (``METHOD URL/key``) and says what happened in words:
"no answer within 120 s", "connection reset before an answer came", "answer broken
off: connection reset after 100000 of 3000388 bytes", "malformed answer (...)" (a
framing error of aiohttp's parser is not the server's "400"). Only a connection that
could not be made (refused, DNS, connect timeout) is "unreachable". An answer whose
body broke off on the way (cut, silent past the read timeout or, a small one, for the
pace's grace period, framing broken) is a ``Broken``: what asking again may not meet
(``httpretry``), and a temporary failure by its class (``retryable``). A failed write
(an upload, a batch upload, ``publish-index``), before its answer or while reading it,
adds that its outcome is unknown and that running the push again is safe
(``WRITE_NOTE``): a push sends only what the registry still lacks.

Each error is raised inside the handler of the transport's error, so that error stays
its ``__context__`` (``retryable`` tells a temporary failure by it, a ``Broken`` by its
class even without one). Text quoted from the server has the client's credentials
hidden (``tokentext.scrub``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Collection, Iterator

import aiohttp
import aiohttp.http_exceptions

from . import httpsession
from .client import RegistryError, Unreachable
from .tokentext import scrub

WRITE_NOTE = (
    "; whether the registry took this write is unknown: running the push again is safe"
    " (it resumes, sending only what the registry lacks)"
)
#: aiohttp's error for a connection that could not be made in time (3.10 on)
_CONNECT_TIMEOUT = getattr(aiohttp, "ConnectionTimeoutError", ())
_RESET = frozenset({errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE})


class Broken(RegistryError):
    """The body of an answer broke off on the way: the connection reset or closed short
    of it, silent past the read timeout (``stalled``) or, a small answer, silent for the
    pace's grace period (``pace.Link.silent``), or its framing broken. The entries or
    bytes read before it are sound; a read-only request may be asked again for the rest
    (``httpretry``). Always temporary (``retryable``), whatever its chain."""


class NoAnswer(Unreachable):
    """A connection was made but no answer came within the read timeout. Still
    ``Unreachable`` to the callers (a miss for substitution, temporary for a mirror
    sync), but worded as what happened."""


def _connect_failed(e: BaseException) -> bool:
    if isinstance(e, aiohttp.ClientConnectorError) or (_CONNECT_TIMEOUT and isinstance(e, _CONNECT_TIMEOUT)):
        return True
    # (aiohttp before 3.10: one ServerTimeoutError for both, told by its text)
    return isinstance(e, aiohttp.ServerTimeoutError) and str(e).startswith("Connection timeout")


def _reset(e: BaseException) -> bool:
    return any(
        isinstance(x, ConnectionResetError) or (isinstance(x, OSError) and x.errno in _RESET)
        for x in (e, e.__cause__)
    )


def malformed(
    e: aiohttp.ClientResponseError | aiohttp.http_exceptions.HttpProcessingError, quote: bool = False
) -> str:
    """aiohttp's parser error, on one line: its reason, and with ``quote`` the bytes it
    quotes (without the caret line under them; the caller hides credentials in them)."""
    lines = [ln.strip() for ln in str(e.message).splitlines() if ln.strip() and ln.strip() != "^"]
    return (" ".join(lines) if quote else "".join(lines[:1]).rstrip(":"))[:300] or type(e).__name__


def request_error(
    e: BaseException, what: str, url: str, read_timeout: float | None, write: bool, secrets: Collection[str]
) -> RegistryError:
    """The error for ``e``, met by the request ``what`` (``METHOD URL/key``) to registry
    ``url`` before its answer came: ``Unreachable`` only if no connection was made,
    ``NoAnswer`` if none came within ``read_timeout`` s."""
    note = WRITE_NOTE if write else ""
    if _connect_failed(e):
        return Unreachable(f"registry {url} is unreachable: {e}")
    if isinstance(e, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        within = f" within {read_timeout:g} s" if read_timeout else ""
        return NoAnswer(f"{what}: no answer{within}{note}")
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return RegistryError(f"{what}: the server closed the connection without answering{note}")
    if isinstance(e, aiohttp.ClientResponseError):  # (not a status: aiohttp's parser refused the answer)
        return RegistryError(scrub(f"{what}: malformed answer ({malformed(e, quote=True)}){note}", secrets))
    if _reset(e):
        while_ = "while sending the request" if "write request body" in str(e) else "before an answer came"
        return RegistryError(f"{what}: connection reset {while_}{note}")
    if isinstance(e, OSError):
        return RegistryError(f"{what}: connection lost before an answer came ({e}){note}")
    return RegistryError(scrub(f"{what}: {e}{note}", secrets))


def cut(e: BaseException) -> bool:
    """Whether ``e``, met while reading a body, is the connection ending before the body
    did (reset, or closed short of the promised length): what a new request may not meet
    (``httpdownload`` asks again). Not a timeout, nor a malformed answer."""
    if isinstance(e, (asyncio.IncompleteReadError, aiohttp.ServerDisconnectedError)):
        return True
    if isinstance(e, aiohttp.ClientPayloadError):
        return "Not enough data" in str(e) or _reset(e)
    return isinstance(e, (aiohttp.ClientOSError, ConnectionError)) and _reset(e)


def stalled(e: BaseException) -> bool:
    """Whether ``e``, met while reading a body, is the read timeout: no byte came for
    ``httpsession.READ_TIMEOUT`` s (the connection still open). Not a trickle (``pace``)."""
    return isinstance(e, aiohttp.ServerTimeoutError)


def cut_how(e: BaseException) -> str:
    """How a ``cut`` or ``stalled`` body ended: "connection reset", "connection closed"
    or "no data for N s"."""
    if stalled(e):
        return f"no data for {httpsession.READ_TIMEOUT:g} s"
    return "connection reset" if _reset(e) or "ConnectionResetError" in str(e) else "connection closed"


def _received(e: BaseException) -> str:
    """ " after N of M bytes" from aiohttp's "received N of M bytes", if it says so."""
    text = str(e)
    at = text.find("(received ")
    return " after " + text[at + 10 : text.index(")", at)] if at >= 0 and ")" in text[at:] else ""


def framing_broken(e: BaseException) -> bool:
    """Whether ``e``, met reading a body, is aiohttp's parser refusing its framing (a
    chunk header broken), raised as is or as a ``ClientPayloadError`` over it."""
    if isinstance(e, aiohttp.http_exceptions.HttpProcessingError):
        return True
    return (
        isinstance(e, aiohttp.ClientPayloadError)
        and not cut(e)
        and isinstance(e.__cause__, aiohttp.http_exceptions.HttpProcessingError)
    )


def body_error(e: BaseException, what: str, write: bool = False) -> Broken | None:
    """The error for ``e``, met while reading the body of the answer to ``what``; None if
    ``e`` is not a transport or parser error (the caller's own, raised as is)."""
    note = WRITE_NOTE if write else ""
    if isinstance(e, asyncio.IncompleteReadError):
        return Broken(f"{what}: answer cut short{note}")
    if isinstance(e, aiohttp.http_exceptions.HttpProcessingError):  # e.g. a chunk header broken
        return Broken(f"{what}: malformed answer ({malformed(e)}){note}")
    if stalled(e):
        return Broken(f"{what}: answer broken off: {cut_how(e)}{note}")
    if isinstance(e, aiohttp.ClientPayloadError) and not cut(e):
        under = e.__cause__
        if isinstance(under, aiohttp.http_exceptions.HttpProcessingError):
            return Broken(f"{what}: malformed answer ({malformed(under)}){note}")
    if cut(e):
        return Broken(f"{what}: answer broken off: {cut_how(e)}{_received(e)}{note}")
    if isinstance(e, (TimeoutError, aiohttp.ClientError)):
        return Broken(f"{what}: answer broken off ({e}){note}")
    return None


@contextlib.contextmanager
def answer_errors(what: str, write: bool = False) -> Iterator[None]:
    """Reading the body of the answer to ``what``: a cut, broken or malformed one is a
    ``Broken`` (``body_error``); ``write``: the request was a write (``WRITE_NOTE``)."""
    try:
        yield
    except (
        asyncio.IncompleteReadError,
        TimeoutError,
        aiohttp.ClientError,
        aiohttp.http_exceptions.HttpProcessingError,
    ) as e:
        err = body_error(e, what, write)
        if err is None:
            raise
        raise err from None
