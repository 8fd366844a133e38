"""fetch_url against hostile servers: redirect bodies, trickled heads, endless or oversized
bodies, malformed redirects, stalled mirrors. Each test bounds its time and, where the
danger is memory or disk, the bytes the server managed to send."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from kiln.store import fetchhttp
from kiln.store.errors import HashMismatch
from kiln.store.fetch import FetchError, fetch_url
from kiln.store.hashes import Hash

DATA = b"the real file\n" * 100


def h(data: bytes) -> Hash:
    return Hash("sha256", hashlib.sha256(data).digest())


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def test_a_redirect_body_is_never_read(server, tmp_path):
    """A 302 carrying 256 MiB: followed at once; the server gets no further than what the
    socket buffers hold (urllib's own handler would read it all into memory)."""
    server.add("f", DATA)
    t0 = time.monotonic()
    fetch_url([server.url("bigredirect/f")], h(DATA), tmp_path / "f", mirrors=[], progress=False, timeout=5)
    assert (tmp_path / "f").read_bytes() == DATA
    assert time.monotonic() - t0 < 5
    time.sleep(0.2)  # let the server notice the closed connection
    assert server.sent.get("/bigredirect/f", 0) < 32 << 20


def test_a_trickled_redirect_body_does_not_hold_the_fetch(server, tmp_path):
    server.add("f", DATA)
    t0 = time.monotonic()
    fetch_url([server.url("trickleredirect/f")], h(DATA), tmp_path / "f", mirrors=[], progress=False)
    assert time.monotonic() - t0 < 3  # the body would take 50 s
    assert (tmp_path / "f").read_bytes() == DATA


def test_trickled_headers_fall_under_the_pace_rule(server, tmp_path, monkeypatch):
    """Headers a byte per 50 ms: never silent for the 2 s socket timeout, so only the pace
    rule (here 1 s grace) can end each attempt; it does, and says so."""
    monkeypatch.setattr(fetchhttp, "PACE_GRACE", 1.0)
    server.add("f", DATA)
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="no complete response head") as e:
        fetch_url(
            [server.url("tricklehead/f")],
            h(DATA),
            tmp_path / "f",
            mirrors=[],
            progress=False,
            timeout=2,
            retries=1,
        )
    # two 1 s graces take ~2.2 s; the head never ends, so any bound shows the rule ended
    # them (a loaded machine had used 2.2 of the 4 s this said before)
    assert time.monotonic() - t0 < 10
    assert "gave up after 2 attempts" in str(e.value)
    assert leftovers(tmp_path) == []


def test_the_expected_size_stops_an_endless_body(server, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(FetchError, match=r"more than the expected size \(1400 bytes\)"):
        fetch_url(
            [server.url("endless/f")], h(DATA), tmp_path / "f", mirrors=[], progress=False, size=len(DATA)
        )
    assert time.monotonic() - t0 < 3
    time.sleep(0.2)
    assert server.sent.get("/endless/f", 0) < 32 << 20
    assert leftovers(tmp_path) == []


def test_the_global_cap_stops_an_endless_body(server, tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_FETCH_MAX_SIZE", str(1 << 20))
    with pytest.raises(FetchError, match="more than the download cap .*KILN_FETCH_MAX_SIZE"):
        fetch_url([server.url("endless/f")], None, tmp_path / "f", mirrors=[], progress=False)
    time.sleep(0.2)
    assert server.sent.get("/endless/f", 0) < 32 << 20
    assert leftovers(tmp_path) == []


def test_an_announced_size_over_the_limit_is_refused_before_reading(server, tmp_path):
    server.add("f", DATA)
    with pytest.raises(FetchError) as e:
        fetch_url([server.url("huge/f")], h(DATA), tmp_path / "f", mirrors=[], progress=False)
    assert "announces 1000000000000 bytes" in str(e.value)
    time.sleep(0.2)
    assert server.sent.get("/huge/f", 0) < 32 << 20
    # an oversized answer is that source's failure: the next URL is still used
    fetch_url(
        [server.url("huge/f"), server.url("file/f")],
        h(DATA),
        tmp_path / "g",
        mirrors=[],
        progress=False,
        size=len(DATA),
    )
    assert (tmp_path / "g").read_bytes() == DATA


def test_the_expected_size_applies_to_mirrors_and_local_files(server, tmp_path, capsys):
    mirror = tmp_path / "mirror"
    (mirror / "sha256").mkdir(parents=True)
    (mirror / "sha256" / h(DATA).hex).write_bytes(DATA + b"padding")
    server.add("f", DATA)
    fetch_url(
        [server.url("file/f")], h(DATA), tmp_path / "f", mirrors=[str(mirror)], progress=False, size=len(DATA)
    )
    assert "skipping mirror" in capsys.readouterr().err
    assert [p for _, p, _ in server.log] == ["/file/f"]


@pytest.mark.parametrize("kind", ["ipv6", "longhost", "port"])
def test_a_malformed_redirect_is_that_sources_failure(server, tmp_path, kind: str):
    """``Location: http://[::1`` (ValueError), a 70-character host label (UnicodeError),
    a bad port (InvalidURL): reported for that source; the next one is used."""
    server.add("f", DATA)
    bad = server.url(f"badlocation/{kind}")
    fetch_url([bad, server.url("file/f")], h(DATA), tmp_path / "f", mirrors=[], progress=False)
    assert (tmp_path / "f").read_bytes() == DATA
    assert server.count(f"/badlocation/{kind}") == 1  # not retried
    with pytest.raises(FetchError, match=rf"(?s){bad}: bad URL or redirect"):
        fetch_url([bad], h(DATA), tmp_path / "g", mirrors=[], progress=False)


def test_malformed_urls_and_mirrors_do_not_stop_the_fallback(server, tmp_path, capsys):
    server.add("f", DATA, mirror=True)
    good = server.url("file/f")
    fetch_url(
        ["http://[::1/x", f"http://{'a' * 70}.example/x", good],
        h(DATA),
        tmp_path / "f",
        mirrors=["http://[::1", "http://h:8x/m"],
        progress=False,
    )
    assert (tmp_path / "f").read_bytes() == DATA
    with pytest.raises(FetchError) as e:
        fetch_url(["http://[::1/x", "http://h:8x/y"], h(DATA), tmp_path / "g", mirrors=[], progress=False)
    assert "http://[::1/x: bad URL" in str(e.value) and "http://h:8x/y: bad URL" in str(e.value)
    assert "skipping mirror http://[::1" in capsys.readouterr().err


def test_a_stalled_mirror_is_tried_once_per_run(server, tmp_path, capsys):
    """The first file costs one attempt plus one retry at the mirror (not 4), and later
    files do not ask it again; every file still comes from its URL."""
    timeout = 1.0  # (a later file fetched within it did not wait on the mirror)
    for i in range(3):
        data = DATA + bytes([i])
        server.add(f"f{i}", data)
        t0 = time.monotonic()
        fetch_url(
            [server.url(f"file/f{i}")],
            h(data),
            tmp_path / f"f{i}",
            mirrors=[server.url("stallmirror")],
            progress=False,
            timeout=timeout,
        )
        took = time.monotonic() - t0
        assert took < (4 * timeout if i == 0 else timeout)
    stalled = [p for _, p, _ in server.log if p.startswith("/stallmirror/")]
    assert len(stalled) == 2
    assert capsys.readouterr().err.count("not using it again in this run") == 1


def test_a_url_with_a_space_is_sent_percent_encoded(server, tmp_path):
    server.add("my%20file", DATA)
    fetch_url([server.url("file/my file")], h(DATA), tmp_path / "f", mirrors=[], progress=False)
    assert (tmp_path / "f").read_bytes() == DATA


def test_wrong_bytes_still_win_over_transport_errors(server, tmp_path):
    server.add("bad", b"other")
    with pytest.raises(HashMismatch):
        fetch_url(
            [server.url("file/bad"), "http://[::1/x"], h(DATA), tmp_path / "m", mirrors=[], progress=False
        )


def test_mirror_sources_uses_a_size_the_derivation_carries(server, tmp_path):
    from kiln.cmd_fetch import _mirror_flat

    t0 = time.monotonic()
    with pytest.raises(FetchError, match=r"expected size \(1400 bytes\)"):
        _mirror_flat({"url": server.url("endless/f"), "size": str(len(DATA))}, h(DATA), tmp_path / "m")
    assert time.monotonic() - t0 < 3
