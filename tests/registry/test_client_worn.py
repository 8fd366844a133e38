"""A registry that answers "not now" (here 502) to everything: the first request waits
it out ``BUSY_RETRIES`` times, and once it is still refused the client's other requests
wait at most ``WORN_RETRIES`` times, until an answer is not an error again. Each of the
thousands of objects of a mirror sync or a substitution waited out the same outage in
full (8 waits of up to 10 s apiece), hours before the command gave up."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from httpkit import answer, serve

from kiln.registry.client import RegistryError
from kiln.registry.httpclient import HttpClient
from kiln.registry.httpretry import BUSY_RETRIES, WORN_RETRIES


class _Flaky:
    """Answers 502 (``Retry-After: 0``) while ``down``, else 200 "ok"; counts requests."""

    def __init__(self) -> None:
        self.down = True
        self.seen: Counter[str] = Counter()
        self.url = ""  # (set once it serves: ``flaky``)

    def get(self, h: BaseHTTPRequestHandler) -> None:
        self.seen[h.path] += 1
        status, body = (502, b"down\n") if self.down else (200, b"ok\n")
        answer(h, status, {"Retry-After": "0"}, body)


@pytest.fixture
def flaky() -> Iterator[_Flaky]:
    f = _Flaky()
    with serve(f.get) as f.url:
        yield f


def test_after_one_request_waited_in_vain_the_others_wait_less(flaky: _Flaky) -> None:
    async def run() -> None:
        async with HttpClient(flaky.url) as c:
            for key in ("a", "b", "c"):
                with pytest.raises(RegistryError, match="502"):
                    await c.get(key)
            flaky.down = False
            assert await c.get("d") == b"ok\n"  # (an answer that is not an error: not worn any more)
            flaky.down = True
            with pytest.raises(RegistryError, match="502"):
                await c.get("e")

    asyncio.run(run())
    assert [flaky.seen[f"/{k}"] for k in "abcde"] == [
        1 + BUSY_RETRIES,
        1 + WORN_RETRIES,
        1 + WORN_RETRIES,
        1,
        1 + BUSY_RETRIES,
    ]
