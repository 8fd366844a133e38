"""Read-only answers that broke off, asked for again: the rest of a batch answer
(``until_whole``, for ``HttpClient``'s ``blob-batch``, ``httpbatch.BlobBatches``, and
``attestation-batch``, ``httpattest``), or any other body whole (``until_read``: a
``GET`` of a narinfo, an index file or an attestation, a ``narinfo-batch`` answer).
Never a write: the callers use these for read-only requests only
(``httpretry.read_only``).

A batch answer is a run of entries, each a line naming one object asked for and then
all its bytes. The reader hands each entry on as soon as it is whole (the caller checks
it against its digest, as for any answer) and only then takes it out of ``want``, the
entries still wanted. So when the body breaks off on the way (``httperrors.Broken``: a
reset, a close short of the body, a stall past the read timeout or, the answer still
small, for the pace's grace period: ``pace``, its framing broken), what came is kept
and ``want`` holds exactly what did not: the request is sent again for those alone,
``httpretry.Cuts`` deciding how often and after what wait (shared with downloads, so an
outage does not multiply waits). A re-ask that breaks off after some entries makes
progress too; one that brings nothing counts the same. Every entry any answer brings is
read and checked as the first answer's are.

A body that is not a run of entries (``until_read``) has nothing worth keeping when it
breaks off: the same request is sent again and its answer read from the start, on the
same ``Cuts``. A whole answer's bytes are read and checked as the first's would have
been; nothing read from a broken one is used.

Not asked again: an answer the server framed wrongly itself (an entry not asked for, a
size other than expected, a line too long: its own answer again would be no better), a
trickle (``pace``), a body over ``httpclient.MAX_BODY``, an error status. The
request's own retries (a connection dropped before an answer, "not now") are
``HttpClient._request``'s, on each re-ask as on the first request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from kiln.store.errors import KilnError

from .httperrors import Broken
from .httpretry import Cuts

T = TypeVar("T")


async def until_whole(cuts: Cuts, ask: Callable[[bool], Awaitable[bool | KilnError]]) -> bool | KilnError:
    """Run ``ask(first)`` until its answer arrives whole, or breaks off once more than
    ``cuts`` allows. ``ask`` sends the request for the entries still wanted and reads the
    answer, handing each entry on; it returns True once the answer was read whole, False
    if the server has no such endpoint (``first`` only: on a re-ask that is an error), or
    the error that ended it (a ``Broken`` is asked again). Returns ``ask``'s last result
    (a ``Broken`` after re-asks says how many requests it took, and has the last one's
    as its cause)."""
    n = 0
    while True:
        out = await ask(n == 0)
        if out is True:
            cuts.whole()
        if not isinstance(out, Broken):
            return out
        if not cuts.again(n):
            if not n:
                return out
            err = Broken(f"{out} (asked {n + 1} times)")
            err.__cause__ = out
            return err
        n += 1
        await asyncio.sleep(Cuts.wait(n))


async def until_read(cuts: Cuts, read: Callable[[], Awaitable[T]]) -> T:
    """``read()``'s result: it sends a read-only request and reads its answer whole
    (``HttpClient._read`` counts a whole body with ``cuts.whole``). Sent again while it
    raises ``Broken`` and ``cuts`` allows; then that ``Broken`` is raised, saying how
    many requests it took. Any other error is raised at once."""
    n = 0
    while True:
        try:
            return await read()
        except Broken as e:
            if not cuts.again(n):
                if not n:
                    raise
                raise Broken(f"{e} (asked {n + 1} times)") from e
        n += 1
        await asyncio.sleep(Cuts.wait(n))
