"""The rest of a batch answer that broke off, asked for again: ``until_whole``, for
``HttpClient``'s ``blob-batch`` (``httpbatch.BlobBatches``) and ``attestation-batch``
(``httpattest``) requests, both read-only.

A batch answer is a run of entries, each a line naming one object asked for and then
all its bytes. The reader hands each entry on as soon as it is whole (the caller checks
it against its digest, as for any answer) and only then takes it out of ``want``, the
entries still wanted. So when the body breaks off on the way (``httperrors.Broken``: a
reset, a close short of the body, a stall past the read timeout, its framing broken),
what came is kept and ``want`` holds exactly what did not: the request is sent again
for those alone, ``httpretry.Cuts`` deciding how often and after what wait (shared with
downloads, so an outage does not multiply waits). A re-ask that breaks off after some
entries makes progress too; one that brings nothing counts the same. Every entry any
answer brings is read and checked as the first answer's are.

Not asked again: an answer the server framed wrongly itself (an entry not asked for, a
size other than expected, a line too long: its own answer again would be no better), a
trickle (``pace``), an error status. The request's own retries (a connection dropped
before an answer, "not now") are ``HttpClient._request``'s, on each re-ask as on the
first request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from kiln.store.errors import KilnError

from .httperrors import Broken
from .httpretry import Cuts


async def until_whole(cuts: Cuts, ask: Callable[[bool], Awaitable[bool | KilnError]]) -> bool | KilnError:
    """Run ``ask(first)`` until its answer arrives whole, or breaks off once more than
    ``cuts`` allows. ``ask`` sends the request for the entries still wanted and reads the
    answer, handing each entry on; it returns True once the answer was read whole, False
    if the server has no such endpoint (``first`` only: on a re-ask that is an error), or
    the error that ended it (a ``Broken`` is asked again). Returns ``ask``'s last result
    (a ``Broken`` after re-asks says how many requests it took, and has the last one's
    as its cause, whose context is the transport's error: ``retryable``)."""
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
