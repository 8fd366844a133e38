"""``GET /healthz`` (``registry/health.py``): 200 with a small JSON body while the server
can serve, 503 naming why when it cannot (its directory gone, or the index timestamp it
signs expired); a read like any other, so ``--private`` asks a read token for it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from regkit import kiln, request, start_kiln
from test_serve_workers import workers_of


def _health(url: str, **headers: str) -> tuple[int, dict, dict]:
    st, h, body = request(url + "/healthz", headers=headers)
    return st, h, (json.loads(body) if h.get("content-type", "").startswith("application/json") else {})


def test_a_healthy_signing_server(pushed) -> None:
    _store, _chain, _leaf, reg, _tok, srv = pushed
    st, h, doc = _health(srv.url)
    assert st == 200 and h["cache-control"] == "no-store" and h["content-type"].startswith("application/json")
    assert doc["status"] == "ok" and doc["problems"] == [] and doc["source"] == "dir"
    assert doc["workers"] == {"running": 1, "configured": 1}
    signed = json.loads((reg / "index/timestamp.json").read_text())["signed"]
    assert doc["index"] == {
        "expires": signed["expires"],
        "expired": False,
        "version": signed["version"],
        "signed_here": True,
    }
    assert doc["writable"] is True and doc["free_bytes"] > 0 and doc["warnings"] == []
    st, _h, body = request(srv.url + "/healthz", "HEAD")
    assert st == 200 and body == b""
    st, h, _b = request(srv.url + "/healthz", "PUT", b"{}")
    assert st == 405 and h["allow"] == "GET, HEAD"
    assert request(srv.url + "/healthz", "POST", b"{}")[0] == 404  # (as for every GET-only name)


def test_503_when_the_directory_is_gone_and_200_when_it_is_back(pushed) -> None:
    _store, _chain, _leaf, reg, _tok, srv = pushed
    moved = reg.with_name("reg-away")
    reg.rename(moved)  # (an unmounted disk, a deleted directory)
    try:
        st, _h, doc = _health(srv.url)
        assert st == 503 and doc["status"] == "unavailable"
        assert "no nix-cache-info" in doc["problems"][0], doc
    finally:
        moved.rename(reg)
    assert _health(srv.url)[0] == 200


def test_503_when_the_timestamp_it_signs_expired(tmp_path, keys, kiln_server) -> None:
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    assert kiln("registry", "publish-index", "--dir", str(reg), "--key", str(keys.sk_file)).returncode == 0
    ts = reg / "index/timestamp.json"
    doc = json.loads(ts.read_text())
    doc["signed"]["expires"] = "2001-01-01T00:00:00Z"  # (its re-signing failing for a day)
    ts.write_text(json.dumps(doc))
    # no refresh (0): nothing re-signs it behind the test's back
    signing = kiln_server("--dir", str(reg), "--index-key", str(keys.sk_file), "--index-refresh", "0")
    st, _h, body = _health(signing.url)
    assert st == 503 and body["index"]["expired"] is True
    assert "the index timestamp expired at 2001-01-01T00:00:00Z" in body["problems"][0]
    # a server without the key (a mirror's) serves on: the mirror's state, not the server's
    plain = kiln_server("--dir", str(reg))
    st, _h, body = _health(plain.url)
    assert st == 200 and body["index"]["expired"] is True and body["index"]["signed_here"] is False
    # and a registry without an index at all is healthy
    ts.unlink()
    st, _h, body = _health(signing.url)
    assert st == 200 and body["index"] is None


def test_private_servers_ask_a_read_token(tmp_path, kiln_server) -> None:
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "read", "--dir", str(reg)).stdout.strip()
    srv = kiln_server("--dir", str(reg), "--private")
    assert _health(srv.url)[0] == 401
    st, _h, doc = _health(srv.url, Authorization=f"Bearer {tok}")
    assert st == 200 and doc["status"] == "ok" and doc["index"] is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts a small tmpfs)")
def test_a_full_or_read_only_disk_is_a_warning_and_reads_go_on(tmp_path, kiln_server) -> None:
    """A registry that cannot take a push answers 200 (reads work) but says why uploads
    will fail, so a monitor need not know kiln's thresholds; it said "ok" with 0 free."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        reg = small / "reg"
        assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
        srv = kiln_server("--dir", str(reg))
        st, _h, doc = _health(srv.url)
        assert st == 200 and doc["status"] == "ok" and doc["writable"] is True, doc
        assert len(doc["warnings"]) == 1 and doc["warnings"][0].startswith("uploads will fail: "), doc
        assert f"{doc['free_bytes']} bytes free on the file system of {reg}" in doc["warnings"][0]
        subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
        st, _h, doc = _health(srv.url)
        assert st == 200 and doc["writable"] is False, doc
        assert doc["warnings"][0] == f"uploads fail: {reg} is not writable (a read-only mount?)", doc
        srv.stop()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_a_store_server(tmp_path, kiln_server) -> None:
    from regkit import make_store

    store = make_store(tmp_path / "store")
    srv = kiln_server("--store", str(store.root))
    st, _h, doc = _health(srv.url)
    assert st == 200 and doc["source"] == "store" and "index" not in doc and "writable" not in doc


def test_every_worker_counts_the_running_workers(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    srv = start_kiln(["--dir", str(reg), "--workers", "3"])
    try:
        first = workers_of(srv, 3)
        for _ in range(20):  # (each connection goes to whichever worker accepts it)
            st, _h, doc = _health(srv.url)
            assert st == 200 and doc["workers"] == {"running": 3, "configured": 3}, doc
        os.kill(first[1], signal.SIGKILL)  # reaped and forked again: 3 once more
        workers_of(srv, 3, not_in={first[1]})
        deadline = time.monotonic() + 10
        while _health(srv.url)[2]["workers"]["running"] != 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        srv.stop()


def test_the_count_is_the_parents_record_of_its_slots() -> None:
    """What the parent writes between a worker's death and its restart (too short a
    moment to catch over HTTP): the slot counts as not running."""
    import mmap

    from kiln.registry import workers

    assert workers.live_workers() is None  # (not run by ``serve``)
    workers._LIVE = mmap.mmap(-1, 3)
    try:
        for i in range(3):
            workers._mark(i, True)
        workers._mark(1, False)
        assert workers.live_workers() == (2, 3)
    finally:
        workers._LIVE.close()
        workers._LIVE = None
