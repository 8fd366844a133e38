"""``kiln mirror sync``'s exit status tells a data problem from a temporary one: 0 synced,
1 some paths bad or refused (someone must look), 75 (EX_TEMPFAIL) the source
unreachable or answering 5xx or too slowly (retry later), 2 usage (``retryable``)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from regkit import add_chain, add_tree, free_port, make_store

from kiln.registry import layout
from kiln.registry.client import RegistryError, Unreachable, open_client
from kiln.registry.publish import publish_index
from kiln.registry.push import push
from kiln.registry.retryable import retryable
from kiln.registry.storage import open_storage
from kiln.store.errors import KilnError


@pytest.fixture
def source(tmp_path: Path, keys):
    """A registry directory with 3 paths and a published index (served by ``_static``)."""
    store = make_store(tmp_path / "store")
    paths = add_chain(store, tmp_path, 2) + [add_tree(store, tmp_path, "big", "data\n" * 50000)]
    reg = tmp_path / "src"
    push(store, paths, lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    publish_index(open_storage(reg), keys.sk)
    return store, paths, reg


@contextmanager
def _static(reg: Path, fail: set[str] | None = None) -> Iterator[str]:
    """A plain file server of ``reg`` (no batch endpoints) that answers 500 for the keys
    in ``fail`` ("*": every key)."""
    fail = fail or set()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            key = self.path.lstrip("/")
            f = reg / key
            if "*" in fail or key in fail:
                self.send_error(500, "upstream trouble")
            elif ".." in key.split("/") or not f.is_file():
                self.send_error(404)
            else:
                body = f.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802
            self.send_error(404)

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def _sync(url: str, dst: Path, reg: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "kiln",
        "mirror",
        "sync",
        url,
        str(dst),
        "--root",
        str(reg / "index/root.json"),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _object_key(reg: Path, path: str) -> str:
    text = (reg / layout.narinfo_key(path.rsplit("/", 1)[1][:32])).read_text()
    return next(line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("URL: "))


def test_synced_is_0_and_usage_is_2(source, tmp_path) -> None:
    _store, _paths, reg = source
    with _static(reg) as url:
        r = subprocess.run(
            [sys.executable, "-m", "kiln", "mirror", "sync", url, str(tmp_path / "m")],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2 and "--root" in r.stderr, r.stderr
        r = _sync(url, tmp_path / "m", reg)
        assert r.returncode == 0 and "3 paths, 3 narinfos and 3 blobs" in r.stdout, r.stderr


def test_an_unreachable_or_failing_source_is_75(source, tmp_path) -> None:
    _store, _paths, reg = source
    r = _sync(f"http://127.0.0.1:{free_port()}", tmp_path / "m", reg)  # (nobody listens there)
    assert r.returncode == 75 and "unreachable" in r.stderr and "retry later" in r.stderr, r.stderr
    with _static(reg, {"*"}) as url:
        r = _sync(url, tmp_path / "m", reg)
        assert r.returncode == 75 and "HTTP 500" in r.stderr, r.stderr
    assert not (tmp_path / "m/index/timestamp.json").exists()


def test_objects_the_source_fails_to_send_are_75_and_bad_ones_are_1(source, tmp_path) -> None:
    """Paths that failed only because the source answered 5xx for them: 75. Once one
    path is bad in content (a tampered blob), the sync is a data problem: 1."""
    _store, paths, reg = source
    flaky = _object_key(reg, paths[-1])
    with _static(reg, {flaky}) as url:
        r = _sync(url, tmp_path / "m", reg)
        assert r.returncode == 75, r.stderr
        assert "failed for 1 path(s)" in r.stderr and paths[-1] in r.stderr and "HTTP 500" in r.stderr
    bad = reg / _object_key(reg, paths[0])
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x55
    bad.write_bytes(bytes(data))
    with _static(reg, {flaky}) as url:
        r = _sync(url, tmp_path / "m2", reg)  # (a new mirror: the first one holds that object)
        assert r.returncode == 1 and "failed for 2 path(s)" in r.stderr, r.stderr
        assert "retry later" not in r.stderr


def test_what_is_retryable() -> None:
    assert retryable(Unreachable("registry http://x is unreachable: refused"))
    assert retryable(RegistryError("GET http://x/a: HTTP 502: bad gateway", 502))
    assert retryable(RegistryError("GET http://x/a: HTTP 429: slow down", 429))
    slow = "GET http://x/nar/a: too slow (10 bytes in 70 s; at least 4096 bytes/s is expected after 60 s)"
    assert retryable(RegistryError(slow))
    assert retryable(RegistryError("GET http://x/nar/a: no data for 120 s (10 bytes received)"))
    try:
        try:
            raise ConnectionResetError(104, "reset")
        except ConnectionResetError:
            raise RegistryError("GET http://x/nar/a: answer broken off") from None
    except RegistryError as e:
        assert retryable(e)
    assert not retryable(RegistryError("GET http://x/a: HTTP 404: not found", 404))
    assert not retryable(RegistryError("GET http://x/a: HTTP 401: token needed", 401))
    assert not retryable(KilnError("/kiln/store/x: FileHash mismatch"))
