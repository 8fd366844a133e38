"""A download of an object cut mid-body is asked again (``registry/httpdownload.py``):
resumed with ``Range`` where the server continues the same object (a 206 with the first
answer's ETag and the matching ``Content-Range``), started over where it does not
(the bytes already taken discarded: ``downloadsink.Sink``), and never taken unless its
digest was computed over every byte. One reset used to fail ``kiln copy`` and make a
build rebuild a substitute from source.

A real ``kiln serve`` (which serves ranges) behind the test's fault proxy (``faultkit``);
the object is 3 MB, so it travels alone (``GET /nar/``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import Fault, FaultProxy, Served, copy_to_store, mirror_sync, serve_registry
from regkit import kiln, make_store

K = 100_000  # bytes of the body the proxy lets through before the cut


@pytest.fixture
def served(tmp_path: Path, keys, kiln_server) -> Served:
    return serve_registry(tmp_path, keys, kiln_server)


@pytest.mark.parametrize("mode", ["reset_mid", "close_early"])
def test_a_cut_download_is_resumed(served: Served, tmp_path: Path, mode: str) -> None:
    with FaultProxy(served.url) as p:
        p.set(Fault("GET /nar/", mode, k=K))
        r = copy_to_store(p.url, tmp_path / "dest", served, served.big)
        assert r.returncode == 0, r.stderr
        first, second = p.requests("GET /nar/")
    assert (first.range, first.status) == (None, 200)
    # the rest, from where the client's bytes ended (a reset may lose the last ones)
    assert second.status == 206 and second.range is not None, second
    start = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= K and (mode == "reset_mid" or start == K)
    assert make_store(tmp_path / "dest").is_valid(served.big)


def test_a_server_without_ranges_gets_the_download_started_over(served: Served, tmp_path: Path) -> None:
    """The retry's answer is the whole object again (200): what came before is discarded,
    not continued (the copy would fail on its size or digest)."""
    with FaultProxy(served.url) as p:
        p.set(Fault("GET /nar/", "reset_mid", k=K), Fault("GET /nar/", "strip_range", count=None))
        r = copy_to_store(p.url, tmp_path / "dest", served, served.big)
        assert r.returncode == 0, r.stderr
        assert [(s.mode, s.status) for s in p.requests("GET /nar/")] == [
            ("reset_mid", 200),
            ("strip_range", 200),
        ]
    assert make_store(tmp_path / "dest").is_valid(served.big)


def test_a_resumed_answer_of_another_object_is_not_continued(served: Served, tmp_path: Path) -> None:
    """A 206 whose ETag is not the first answer's does not continue it: the client asks
    for the whole object instead."""
    with FaultProxy(served.url) as p:
        p.set(Fault("GET /nar/", "reset_mid", k=K), Fault("GET /nar/", "etag"))
        r = copy_to_store(p.url, tmp_path / "dest", served, served.big)
        assert r.returncode == 0, r.stderr
        seen = p.requests("GET /nar/")
    assert [(s.mode, s.status, s.range is not None) for s in seen] == [
        ("reset_mid", 200, False),
        ("etag", 206, True),
        ("pass", 200, False),
    ]
    assert make_store(tmp_path / "dest").is_valid(served.big)


def test_a_server_that_answers_206_to_everything_does_not_loop(served: Served, tmp_path: Path) -> None:
    """A 206 of another object, to the resume and then to the whole object asked for
    again without a range (a broken CDN, a hostile registry): the download starts over
    once and then fails. It asked again at once, for ever."""
    with FaultProxy(served.url) as p:
        p.set(Fault("GET /nar/", "reset_mid", k=K), Fault("GET /nar/", "bogus_206", count=None))
        r = copy_to_store(p.url, tmp_path / "dest", served, served.big)
        assert r.returncode == 1, r.stderr
        assert [(s.mode, s.range is not None) for s in p.requests("GET /nar/")] == [
            ("reset_mid", False),
            ("bogus_206", True),
            ("bogus_206", False),
        ]
    assert not make_store(tmp_path / "dest").is_valid(served.big)


def test_the_digest_covers_the_resumed_bytes(served: Served, tmp_path: Path) -> None:
    """A byte flipped in the resumed part fails the copy as a hash mismatch: the digest
    is of the whole file, the first answer's bytes and the 206's."""
    with FaultProxy(served.url) as p:
        p.set(Fault("GET /nar/", "reset_mid", k=K), Fault("GET /nar/", "corrupt", k=500_000))
        r = copy_to_store(p.url, tmp_path / "dest", served, served.big)
        assert r.returncode == 1 and "hash mismatch" in r.stderr, r.stderr
        assert [s.status for s in p.requests("GET /nar/")] == [200, 206]
    assert not make_store(tmp_path / "dest").is_valid(served.big)


def test_a_download_cut_every_time_fails_naming_the_request(served: Served, tmp_path: Path) -> None:
    with FaultProxy(served.url) as p:
        p.set(Fault("GET /nar/", "close_early", k=K, count=None))
        r = copy_to_store(p.url, tmp_path / "dest", served, served.big)
        assert r.returncode == 1, r.stderr
        assert "GET " + p.url + "/nar/" in r.stderr and "answer broken off: connection closed" in r.stderr
        assert "(asked 4 times)" in r.stderr, r.stderr
        assert len(p.requests("GET /nar/")) == 4


def test_mirror_sync_resumes_a_cut_download(served: Served, tmp_path: Path) -> None:
    with FaultProxy(served.url) as p:
        p.set(Fault("GET /nar/", "reset_mid", k=K), Fault("GET /nar/", "strip_range"))
        r = mirror_sync(p.url, tmp_path / "m", served)
        assert r.returncode == 0, r.stderr
        assert [s.status for s in p.requests("GET /nar/")] == [200, 200]  # (started over)
    assert kiln("registry", "verify", "--dir", str(tmp_path / "m")).returncode == 0


def test_a_copy_between_registries_resumes_a_cut_download(
    served: Served, tmp_path: Path, kiln_server, keys
) -> None:
    dst = tmp_path / "dst"
    assert kiln("registry", "init", "--dir", str(dst)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(dst)).stdout.strip()
    srv = kiln_server("--dir", str(dst), "--trusted-key", str(keys.pk_file))
    with FaultProxy(served.url) as p:
        p.set(Fault("GET /nar/", "close_early", k=K))
        r = kiln("copy", "--from", p.url, "--to", srv.url, "--token", tok, "--trusted-key", str(keys.pk_file), served.big)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert [s.status for s in p.requests("GET /nar/")] == [200, 206]
    assert kiln("registry", "verify", "--dir", str(dst)).returncode == 0


def test_a_cut_download_from_nginx_is_resumed(served: Served, tmp_path: Path, nginx_server) -> None:
    """nginx serves the registry directory: its ETag and ranges resume the download too."""
    ng = nginx_server(Path(str(served.reg)))
    with FaultProxy(ng.url) as p:
        p.set(Fault("GET /nar/", "close_early", k=K))
        r = copy_to_store(p.url, tmp_path / "dest", served, served.big)
        assert r.returncode == 0, r.stderr
        assert [(s.status, s.range) for s in p.requests("GET /nar/")] == [(200, None), (206, f"bytes={K}-")]
    assert make_store(tmp_path / "dest").is_valid(served.big)
