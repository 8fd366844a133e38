"""How the source fetcher waits, and what it says, when a server is busy or misbehaves
(``store/fetchretry``, ``fetchdownload.http_get``, ``fetch._try_source``):

- a 429 or 503 with ``Retry-After`` (seconds or an HTTP date) is asked again after what
  it asked for, not 0.2, 0.4, 0.8 s later (which gave up 1.4 s after a "come back in 5 s"),
  capped (60 s for a URL, 5 s for a mirror) and said on stderr when it is 2 s or more;
- a URL given up on for a transient status says "(gave up after N attempts)";
- a redirect loop is "too many redirects (a loop at URL)", one line, not urllib's three
  lines with literal ``\\n`` escapes;
- a hashed source mirror answering 500 is a warning, as a reset or a corrupt entry is;
- "cannot fetch NAME" names the file as its URL does, not ``dest`` (a build's ``out``).

Real servers: an ``http.server`` on 127.0.0.1 that stamps each request (monotonic time),
so the waits are measured where they matter, at the server. No test waits more than 2 s."""

from __future__ import annotations

import email.utils
import hashlib
import itertools
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from httpkit import answer, serve

from kiln.store.fetch import FetchError, fetch_url
from kiln.store.fetchretry import RETRY_AFTER_CAP, Wait, retry_after, wait_before
from kiln.store.hashes import Hash

DATA = b"the source tarball\n" * 1000
SHA = hashlib.sha256(DATA).hexdigest()


class _Busy:
    """Routes: ``/ra/<status>/<retry-after>/<n>/<name>`` answers ``status`` (with that
    ``Retry-After``; ``date+K``: an HTTP date K s ahead; ``-``: none) to its first ``n``
    requests, then ``DATA``; ``/loop/<name>`` redirects to itself; ``/pingpong/a`` and
    ``/pingpong/b`` to each other; ``/chain/<k>`` to ``/chain/<k+1>``; ``/e500/...``
    always 500. ``stamps[path]``: when each request came (``time.monotonic``)."""

    def __init__(self) -> None:
        self.stamps: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self.base = ""  # (set once it serves: ``busy``)

    def get(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            seen = self.stamps.setdefault(h.path, [])
            seen.append(time.monotonic())
            n = len(seen)
        parts = h.path.strip("/").split("/")
        if parts[0] == "ra" and n <= int(parts[3]):
            value = parts[2]
            if value.startswith("date+"):
                value = email.utils.formatdate(time.time() + int(value[5:]), usegmt=True)
            return answer(h, int(parts[1]), {"Retry-After": value} if value != "-" else {})
        if parts[0] == "ra":
            return answer(h, 200, {}, DATA)
        if parts[0] == "loop":
            return answer(h, 302, {"Location": h.path})
        if parts[0] == "pingpong":
            return answer(h, 302, {"Location": "b" if parts[1] == "a" else "a"})
        if parts[0] == "chain":
            return answer(h, 302, {"Location": str(int(parts[1]) + 1)})
        return answer(h, 500 if parts[0] == "e500" else 404, {})

    def url(self, route: str) -> str:
        return f"{self.base}/{route}"

    def gaps(self, route: str) -> list[float]:
        t = self.stamps.get(f"/{route}", [])
        return [b - a for a, b in itertools.pairwise(t)]


@pytest.fixture
def busy() -> Iterator[_Busy]:
    b = _Busy()
    with serve(b.get) as b.base:
        yield b


def _fetch(urls: list[str], tmp_path: Path, **kw) -> Path:
    dest = tmp_path / "out"  # as a build's builtin fetchurl names it
    fetch_url(urls, Hash("sha256", bytes.fromhex(SHA)), dest, progress=False, **kw)
    return dest


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_waited_out(busy: _Busy, tmp_path: Path, status: int) -> None:
    """Before: asked again 0.2 s later. Now: 1 s later, as asked, and the fetch succeeds."""
    route = f"ra/{status}/1/1/pkg.tar"
    assert _fetch([busy.url(route)], tmp_path, mirrors=[]).read_bytes() == DATA
    (gap,) = busy.gaps(route)
    assert gap >= 0.95, gap


def test_retry_after_as_an_http_date(busy: _Busy, tmp_path: Path) -> None:
    """An HTTP date 2 s ahead (whole seconds: 1 to 2 s from the answer) is waited out."""
    route = "ra/503/date+2/1/pkg.tar"
    _fetch([busy.url(route)], tmp_path, mirrors=[])
    (gap,) = busy.gaps(route)
    assert gap >= 0.95, gap


def test_a_long_wait_is_said_and_a_give_up_says_how_many_attempts(
    busy: _Busy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retry-After: 2 on every answer, one retry: the wait is said on stderr (no progress
    display needed), the URL is asked twice 2 s apart, and the error says it gave up
    after 2 attempts. Before: no line, 0.2 s apart, "HTTP 429 Too Many Requests" alone."""
    route = "ra/429/2/9/pkg.tar"
    with pytest.raises(FetchError) as e:
        _fetch([busy.url(route)], tmp_path, mirrors=[], retries=1)
    assert busy.gaps(route)[0] >= 1.95, busy.gaps(route)
    err = capsys.readouterr().err
    assert f"{busy.url(route)}: HTTP 429 Too Many Requests; retrying in 2 s, as the server asked" in err, err
    assert "HTTP 429 Too Many Requests (gave up after 2 attempts)" in str(e.value), e.value
    assert str(e.value).startswith("cannot fetch pkg.tar ("), e.value  # not "out", the dest's name


def test_retry_after_is_capped_and_only_heeded_for_429_and_503() -> None:
    """The rule itself (``fetchretry.wait_before``): a server asking for an hour gets the
    cap; a 500's Retry-After, a bad one, or one shorter than the backoff is the backoff."""
    assert wait_before(1, 429, "3600", RETRY_AFTER_CAP) == Wait(RETRY_AFTER_CAP, 3600.0)
    assert wait_before(1, 503, "3600", 5.0) == Wait(5.0, 3600.0)  # (a mirror's cap)
    assert "come back in 3600 s (Retry-After), longer than kiln waits (60 s)" in Wait(60.0, 3600.0).too_long()
    assert Wait(2.0, 2.0).too_long() == "" and Wait(0.2).too_long() == ""
    assert wait_before(1, 500, "5", RETRY_AFTER_CAP) == Wait(0.2)
    assert wait_before(2, 429, "soon", RETRY_AFTER_CAP) == Wait(0.4)
    assert wait_before(3, 429, "0", RETRY_AFTER_CAP) == Wait(0.8)
    assert wait_before(1, None, None, RETRY_AFTER_CAP) == Wait(0.2)
    now = 1_800_000_000.0
    assert retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert retry_after(" 7 ") == 7.0 and retry_after("-3") is None and retry_after("1.5") is None
    assert retry_after("9" * 40) == 1e9  # (no overflow)


@pytest.mark.parametrize(
    ("route", "said"),
    [
        ("loop/pkg.tar", "too many redirects (a loop at {url}loop/pkg.tar)"),
        ("pingpong/a", "too many redirects (a loop at {url}pingpong/"),
        ("chain/0", "too many redirects (more than 10, the last to {url}chain/"),
    ],
)
def test_a_redirect_loop_is_one_line(busy: _Busy, tmp_path: Path, route: str, said: str) -> None:
    """Before: "HTTP 302 The HTTP server returned a redirect error that would lead to an
    infinite loop.\\nThe last 30x error message was:\\nFound", escapes and all."""
    with pytest.raises(FetchError) as e:
        _fetch([busy.url(route)], tmp_path, mirrors=[])
    msg = str(e.value)
    assert said.format(url=busy.url("")) in msg, msg
    assert "\\n" not in msg and "infinite loop" not in msg, msg
    assert len(msg.splitlines()) == 2, msg  # "cannot fetch ...:" and the URL's line


def test_a_mirror_answering_500_is_a_warning(busy: _Busy, tmp_path: Path, capsys) -> None:
    """Before: skipped in silence (a reset or a corrupt entry got a warning). Now a
    warning naming the status and the attempts; the URL after it still delivers."""
    dest = _fetch([busy.url("ra/404/-/0/pkg.tar")], tmp_path, mirrors=[busy.url("e500/m")])
    assert dest.read_bytes() == DATA
    err = capsys.readouterr().err
    assert f"warning: skipping mirror {busy.url('e500/m')}/sha256/{SHA}: HTTP 500" in err, err
    assert "(gave up after 2 attempts)" in err, err


def test_the_error_names_the_file_and_the_attempts(busy: _Busy, tmp_path: Path) -> None:
    """Before: "cannot fetch out (sha256:...)" (the dest's name: a build's output) and a
    bare "HTTP 500 Internal Server Error". Now the URL's file name, and the attempts."""
    with pytest.raises(FetchError) as e:
        _fetch([busy.url("e500/pkg-1.0.tar.gz?x=1")], tmp_path, mirrors=[], retries=1)
    msg = str(e.value)
    assert msg.startswith(f"cannot fetch pkg-1.0.tar.gz (sha256:{SHA}):"), msg
    assert msg.endswith("HTTP 500 Internal Server Error (gave up after 2 attempts)"), msg


def test_a_server_asking_for_longer_than_kiln_waits_is_given_up_on_at_once(
    busy: _Busy, tmp_path: Path
) -> None:
    """A 429 asking to come back in an hour: the URL is given up on at its first answer,
    saying what it asked, and the next URL serves the file (it slept the 60 s cap, three
    times per URL, before)."""
    route = "ra/429/3600/9/pkg.tar"
    started = time.monotonic()
    dest = _fetch([busy.url(route), busy.url("ra/429/-/0/pkg.tar")], tmp_path, mirrors=[], retries=3)
    assert dest.read_bytes() == DATA and time.monotonic() - started < 10
    assert len(busy.stamps[f"/{route}"]) == 1  # asked once
    (tmp_path / "out").unlink()
    started = time.monotonic()
    with pytest.raises(FetchError) as e:
        _fetch([busy.url(route)], tmp_path, mirrors=[], retries=3)
    assert time.monotonic() - started < 10
    assert "come back in 3600 s (Retry-After), longer than kiln waits (60 s)" in str(e.value), e.value
