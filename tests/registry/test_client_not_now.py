"""Answers that say "not now" are waited out for requests that only read
(``registry/httpretry.py``): a reverse proxy's 502 or 504, a rate limit's 429 (after its
``Retry-After``), a few 500s, as a busy ``kiln serve``'s 503 always was. One 502 from a
proxy used to fail ``kiln copy``, give 75 from ``kiln mirror sync`` and make a build
rebuild what it could have substituted. Writes are not sent again: a push's
``upload-batch`` answered 502 fails as before (the server may have stored it).

A real ``kiln serve`` behind the test's fault proxy (``faultkit``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import Fault, FaultProxy, Served, copy_to_store, mirror_sync, serve_registry
from regkit import kiln, make_store, push_cli


@pytest.fixture
def served(tmp_path: Path, keys, kiln_server) -> Served:
    return serve_registry(tmp_path, keys, kiln_server)


@pytest.mark.parametrize("status", [502, 504, 429, 500])
def test_one_not_now_answer_to_a_download_is_waited_out(served: Served, tmp_path: Path, status: int) -> None:
    with FaultProxy(served.url) as p:
        p.set(Fault("GET /nar/", "status", status=status))
        r = copy_to_store(p.url, tmp_path / "dest", served)
        assert r.returncode == 0, r.stderr
        assert [s.mode for s in p.requests("GET /nar/")] == ["status", "pass"]
    assert make_store(tmp_path / "dest").is_valid(served.big)


@pytest.mark.parametrize("endpoint", ["narinfo-batch", "blob-batch"])
def test_a_502_to_a_read_only_post_is_waited_out(served: Served, tmp_path: Path, endpoint: str) -> None:
    with FaultProxy(served.url) as p:
        p.set(Fault(f"POST /{endpoint}", "status", status=502))
        r = copy_to_store(p.url, tmp_path / "dest", served)
        assert r.returncode == 0, r.stderr
        assert [s.mode for s in p.requests(f"POST /{endpoint}")][:2] == ["status", "pass"]


def test_retry_after_of_a_429_is_honoured(served: Served, tmp_path: Path) -> None:
    """The second request comes no sooner than the 429's ``Retry-After`` asked (a lower
    bound: a loaded machine only makes the gap longer)."""
    with FaultProxy(served.url) as p:
        p.set(Fault("GET /nar/", "status", status=429, retry_after="2"))
        r = copy_to_store(p.url, tmp_path / "dest", served, served.big)
        assert r.returncode == 0, r.stderr
        first, second = p.requests("GET /nar/")
    assert second.at - first.at >= 1.9


def test_a_500_is_asked_again_only_twice(served: Served, tmp_path: Path) -> None:
    """A server failing for good is given up on: the 500 is named, after 3 requests."""
    with FaultProxy(served.url) as p:
        p.set(Fault("GET /nar/", "status", status=500, count=None))
        r = copy_to_store(p.url, tmp_path / "dest", served, served.big)
        assert r.returncode == 1 and "HTTP 500" in r.stderr, r.stderr
        assert len(p.requests("GET /nar/")) == 3


def test_mirror_sync_rides_out_a_502(served: Served, tmp_path: Path) -> None:
    with FaultProxy(served.url) as p:
        p.set(
            Fault("GET /nar/", "status", status=502), Fault("GET /index/timestamp.json", "status", status=504)
        )
        r = mirror_sync(p.url, tmp_path / "m", served)
        assert r.returncode == 0, r.stderr
        assert [s.mode for s in p.requests("GET /nar/")] == ["status", "pass"]


def test_an_upload_answered_502_is_not_sent_again(served: Served, tmp_path: Path) -> None:
    """The server may have stored what a 502 answered (the proxy gave up waiting): the
    push fails naming it, and running it again is what finishes it."""
    store = served.store
    src = tmp_path / "more"
    src.mkdir()
    (src / "f").write_text("more\n")
    path = store.add_path(src, "more").path  # type: ignore[attr-defined]
    with FaultProxy(served.url) as p:
        p.set(Fault("POST /upload-batch", "status", status=502))
        r = push_cli(store, [path], p.url, served.token, served.sk_file)  # type: ignore[arg-type]
        assert r.returncode != 0 and "upload-batch: HTTP 502" in r.stderr, r.stderr
        assert len(p.requests("POST /upload-batch")) == 1
        r = push_cli(store, [path], p.url, served.token, served.sk_file)  # type: ignore[arg-type]
        assert r.returncode == 0, r.stderr
    assert kiln("registry", "verify", "--dir", str(served.reg)).returncode == 0
