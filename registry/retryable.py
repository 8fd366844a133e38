"""Which failures of talking to a registry are temporary: the same request later may
well succeed (``retryable``). ``kiln mirror sync`` exits 75 (``EX_TEMPFAIL``) for
those, so a cron job or a service manager retries instead of paging someone.

Temporary: no connection (``client.Unreachable``: refused, DNS, connect timeout); an
answer of 5xx (a server's own trouble, a proxy whose upstream is down, a ``kiln
serve`` still busy after its 503 retries), 408 or 429; an answer whose body broke off
(``httperrors.Broken``, told by its class: it may carry no transport error, e.g. a
small answer silent for the pace's grace period, or one asked again until given up);
an answer cut short, or that came too slowly (``pace``) or not at all (the clients
raise those as ``RegistryError`` *from None* inside the handler of the transport's
error, so that error is still the exception's ``__context__``; the pace's own refusals
carry no context and are told by their wording, which ``pace.Pace`` fixes).

Not temporary: every other answer (404 of a file the signed index lists, 401/403 of a
missing token, a malformed answer) and every content problem (a digest that does not
match, a refused signature or CA): retrying cannot fix those, someone must look.
"""

from __future__ import annotations

import asyncio
import re

from .client import RegistryError, Unreachable

#: statuses a later attempt may well not get
TEMPORARY_STATUS = frozenset({408, 429})
#: how ``pace.Pace`` words a transfer it gave up on (too slow, silent, over its deadline)
_PACE = re.compile(r": (?:too slow \(|no data for \d|not complete within \d)")


def retryable(e: BaseException) -> bool:
    """Whether ``e`` is a temporary failure of the registry or the way to it (module
    docstring)."""
    if isinstance(e, Unreachable):
        return True
    if isinstance(e, RegistryError):
        if _broken(e):
            return True
        if e.status >= 500 or e.status in TEMPORARY_STATUS:
            return True
        if e.status == 0 and _PACE.search(str(e)):
            return True
    seen: set[int] = set()
    c: BaseException | None = e
    while c is not None and id(c) not in seen:
        seen.add(id(c))
        if _transport_error(c):
            return True
        c = c.__cause__ or c.__context__
    return False


def _broken(e: RegistryError) -> bool:
    """Whether ``e`` is an answer broken off on the way (``httperrors.Broken``)."""
    try:
        from .httperrors import Broken
    except ImportError:  # (no aiohttp: a file:// source only, which raises none)
        return False
    return isinstance(e, Broken)


def _transport_error(e: BaseException) -> bool:
    """A timeout, a dropped connection or a cut answer (not an HTTP status)."""
    if isinstance(e, (TimeoutError, ConnectionError, asyncio.IncompleteReadError)):
        return True
    try:
        import aiohttp
    except ImportError:  # (a file:// source only)
        return False
    return isinstance(e, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError))
