"""``HttpClient.download`` (mixed into it): a content-addressed object streamed to the
caller's ``write``, asked again when the answer is cut mid-body.

The objects downloaded are named by their digest, which the caller checks over the
whole file, so a ``GET`` whose body broke off (a reset, or a close short of the promised
``Content-Length``: ``httperrors.cut``; or silence past the read timeout, the connection
left open: ``httperrors.stalled``) is asked again as ``httpretry.Cuts`` allows
(``CUT_RETRIES`` times, after ``CUT_WAIT`` s doubling; fewer once the client is worn):

- resumed where the first answer had a strong ``ETag`` and a ``Content-Length`` L: with
  ``Range: bytes=N-`` and ``If-Range: <that ETag>``, N the bytes handed to ``write`` so
  far. The answer continues the body only if it is a 206 with the same ETag and
  ``Content-Range: bytes N-(L-1)/L``; then every byte reaches ``write`` exactly once and
  in order, and the caller's digest covers the whole file.
- started over on any other answer (a 200: a server without ranges, or whose object
  changed; a 206 that does not match): only where ``write`` is a ``downloadsink.Sink``,
  whose ``restart()`` discards what it took; with a plain ``write`` the download fails,
  naming the cut, as it did before it was ever asked again.

An answer whose framing broke mid-body (a malformed chunk header: a byte flipped on the
way) is asked again *whole*, where ``write`` is a ``Sink``, as often as a cut one: the
bytes before the break may be wrong too, so they are never resumed from.

Not asked again: an error raised by ``write`` (too many bytes, a bad NAR: the caller's
verdict), a trickle (``pace``: a server that sends, but too slowly, would be as slow
again), a malformed answer to a plain ``write``, and any answer but 200/206 to a retry
(``_request`` has already waited out those worth it; a 404 then is an error, not a
miss).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from .client import CHUNK, RegistryError
from .downloadsink import Sink
from .httperrors import Broken, body_error, cut, cut_how, framing_broken, stalled
from .httpretry import CUT_RETRIES, Cuts
from .pace import Link, Pace


@dataclass(frozen=True)
class _Validator:
    """What an answer must show to continue the body of the first one."""

    etag: str
    length: int

    @staticmethod
    def of(resp: aiohttp.ClientResponse) -> _Validator | None:
        """The validator of a whole (200) answer, if it can be resumed at all: a strong
        ETag and a known length."""
        etag = resp.headers.get("ETag", "")
        if not etag.startswith('"') or resp.content_length is None:
            return None
        return _Validator(etag, resp.content_length)

    def continues(self, resp: aiohttp.ClientResponse, offset: int) -> bool:
        """Whether ``resp`` (a 206) holds this object's bytes from ``offset`` to its end."""
        want = f"bytes {offset}-{self.length - 1}/{self.length}"
        return resp.headers.get("ETag") == self.etag and resp.headers.get("Content-Range", "").strip() == want


class ObjectDownloads:
    """``download``; ``HttpClient`` provides ``url``, ``_link``, ``_cuts``, ``_request``
    and ``_fail``."""

    if TYPE_CHECKING:
        url: str
        _link: Link
        _cuts: Cuts

        async def _request(self, method: str, key: str, **kw: Any) -> aiohttp.ClientResponse: ...

        async def _fail(self, resp: aiohttp.ClientResponse, what: str) -> RegistryError: ...

    async def download(self, key: str, write: Callable[[bytes], Any]) -> bool:
        """Stream ``GET /key``'s body to ``write``; False on a 404 to the first request.
        A cut body is resumed or started over (module docstring)."""
        what = f"GET {self.url}/{key}"
        restart = write.restart if isinstance(write, Sink) else None
        done = 0  # bytes handed to write
        tag: _Validator | None = None  # (of the answer whose body is being continued)
        cuts = 0
        while True:
            headers = {"Range": f"bytes={done}-", "If-Range": tag.etag} if done and tag else {}
            async with await self._request("GET", key, headers=headers) as resp:
                if resp.status == 404 and cuts == 0:
                    return False
                if resp.status == 206 and done and tag is not None and tag.continues(resp, done):
                    pass  # the rest of the same object
                elif resp.status == 200:
                    if done:
                        if restart is None:  # (asked for the rest; the whole object came)
                            raise RegistryError(
                                f"{what}: answer broken off after {done} bytes, and the server "
                                "would not send the rest (it sent the whole object again)"
                            )
                        restart()
                        done = 0
                    tag = _Validator.of(resp)
                elif resp.status == 206 and done:
                    # not the continuation asked for: start over, without a range (a 206
                    # to that is an error below, so this cannot repeat)
                    if restart is None or cuts >= CUT_RETRIES:
                        raise RegistryError(f"{what}: the server resumed a cut answer with other bytes")
                    restart()
                    done, tag = 0, None
                    cuts += 1
                    continue
                else:
                    raise await self._fail(resp, what)
                pace = Pace(what, RegistryError, self._link)
                try:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        pace.got(len(chunk))
                        write(chunk)
                        done += len(chunk)
                    self._cuts.whole()
                    return True
                except (
                    asyncio.IncompleteReadError,
                    TimeoutError,
                    aiohttp.ClientError,
                    HttpProcessingError,
                ) as e:
                    err = body_error(e, what)
                    if err is None:
                        raise
                    if framing_broken(e) and restart is not None and self._cuts.again(cuts):
                        # framing broken mid-body: the bytes before the break may be wrong
                        # too (a flipped chunk size passes data off as framing and back),
                        # so they are dropped and the object asked for whole, never resumed
                        restart()
                        done, tag = 0, None
                    else:
                        resumable = done == 0 or tag is not None or restart is not None
                        broke = cut(e) or stalled(e)
                        if not (broke and resumable and self._cuts.again(cuts)):
                            if broke and cuts:  # (the bytes of all the answers, not the last's)
                                of = f" of {tag.length}" if tag is not None else ""
                                err = Broken(
                                    f"{what}: answer broken off: {cut_how(e)} after {done}{of} bytes "
                                    f"(asked {cuts + 1} times)"
                                )
                            raise err from None
            cuts += 1
            await asyncio.sleep(Cuts.wait(cuts))
