"""``kiln verify URL#PATH``'s exit status tells a registry that could not be asked from an
artifact that is bad: 75 the registry unreachable or answering 5xx (before or in the
middle of the fetch: try again later), 3 a path or object it does not serve or a
directory that is no registry, 1 an object that does not verify (and its message names
the path and the object's URL); and the report shows a registry path's provenance. Real
``kiln serve``, a real HTTP server answering 500, a closed port.

``admission._verify_remote`` marks a failure to fetch ``unchecked`` (``admission._cause``)
and ``judge_closure`` keeps the target's provenance summary."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from attestkit import signed_provenance
from clikit import kiln, line_within

from kiln.store import attestations
from kiln.store.hashes import Hash
from kiln.store.keyfiles import write_secret_key
from kiln.store.signing import SecretKey


@pytest.fixture
def reg(built, tmp_path: Path) -> Path:
    """A registry directory holding hello's closure, signed."""
    key = tmp_path / "k.sec"
    write_secret_key(key, SecretKey.generate("cache-1"))
    d = tmp_path / "reg"
    r = kiln(
        "push", "--to", f"file://{d}", "--sign-key", str(key), built.hello, "--store", str(built.store.root)
    )
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture
def serve() -> Iterator:
    """``serve(dir)``: ``kiln serve --dir dir`` on a free local port; stopped by pid."""
    procs: list[subprocess.Popen] = []

    def start(d: Path) -> str:
        cmd = [sys.executable, "-m", "kiln", "serve", "--dir", str(d), "--listen", "127.0.0.1:0"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        line = line_within(proc.stdout, 30)
        assert "listening on http://127.0.0.1:" in line, line
        return line.split("listening on ", 1)[1].strip()

    yield start
    for proc in procs:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def failing(d: Path, fail: set[str]) -> Iterator[str]:
    """A plain file server of registry directory ``d`` that answers 500 for the keys in
    ``fail`` ("*": every key)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            key = self.path.lstrip("/")
            f = d / key
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

        def do_POST(self) -> None:  # noqa: N802 - no batch endpoints
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


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _narinfo(d: Path, path: str) -> Path:
    return d / f"{path.rsplit('/', 1)[1][:32]}.narinfo"


def _object_key(d: Path, path: str) -> str:
    return re.search(r"^URL: (.*)$", _narinfo(d, path).read_text(), re.M).group(1)


def _verify(url: str, path: str, *args: str):
    return kiln("verify", f"{url}#{path}", *args)


def _status(r) -> tuple[int, str]:  # noqa: ANN001
    return r.returncode, r.stdout.splitlines()[-1] if r.stdout else r.stderr


def test_a_served_path_passes(built, reg, serve) -> None:
    assert _status(_verify(serve(reg), built.hello)) == (
        0,
        "result: PASS (content only: no --policy, so no signature or attestation was required)",
    )


def test_an_unreachable_registry_is_75(built) -> None:
    r = _verify(f"http://127.0.0.1:{_closed_port()}", built.hello)
    assert _status(r) == (75, "result: UNCHECKED, try again later (1 check could not be run)"), r.stdout
    assert "  ERR  valid: cannot fetch" in r.stdout and "unreachable" in r.stdout
    doc = json.loads(_verify(f"http://127.0.0.1:{_closed_port()}", built.hello, "--json").stdout)
    assert (doc["verdict"], doc["exit_status"], doc["checks"][0]["unchecked"]) == (
        "tempfail",
        75,
        "transient",
    )


def test_a_registry_answering_5xx_is_75_at_first_or_midway(built, reg) -> None:
    with failing(reg, {"*"}) as url:
        r = _verify(url, built.hello)
        assert r.returncode == 75 and "HTTP 500" in r.stdout, r.stdout + r.stderr
    # narinfos are served, hello's object is not: the fetch fails in the middle
    with failing(reg, {_object_key(reg, built.hello)}) as url:
        r = _verify(url, built.hello)
        assert r.returncode == 75, r.stdout + r.stderr
        assert "  ERR  content: " in r.stdout and "HTTP 500" in r.stdout, r.stdout


def test_what_a_registry_does_not_serve_is_3(built, reg, serve, tmp_path: Path) -> None:
    url = serve(reg)
    r = _verify(url, "/kiln/store/" + "0" * 32 + "-nope")
    assert _status(r) == (3, "result: UNCHECKED (1 check could not be run)"), r.stdout
    assert "  ERR  valid: " in r.stdout and "serves no path" in r.stdout
    key = _object_key(reg, built.zlib)  # (a dependency's: the closure is fetched first)
    ino = (reg / key).stat().st_ino
    for f in [*(reg / "nar").iterdir(), *(reg / "blobs").iterdir()]:
        if f.stat().st_ino == ino:  # (blobs/ holds hard links of nar/)
            f.unlink()
    r = _verify(url, built.hello)
    assert r.returncode == 3 and f"{key} is missing" in r.stdout, r.stdout
    # a directory that is no registry
    (tmp_path / "plain").mkdir()
    r = _verify(f"file://{tmp_path / 'plain'}", built.hello)
    assert r.returncode == 3 and "is not a registry" in r.stdout, r.stdout + r.stderr


def test_a_corrupt_object_is_1_and_named(built, reg, serve) -> None:
    """The object of hello is corrupt (its zstd magic number flipped) and its narinfo's
    FileHash and URL are those of the corrupt file (a signer signed a bad upload: the
    signature does not cover them), so only decompressing it finds out."""
    ni = _narinfo(reg, built.hello)
    key = _object_key(reg, built.hello)
    data = bytearray((reg / key).read_bytes())
    data[0] ^= 0x55
    h = Hash("sha256", hashlib.sha256(data).digest())
    new = f"nar/{h.nix32}.nar.zst"
    (reg / new).write_bytes(data)
    text = re.sub(r"^URL: .*$", f"URL: {new}", ni.read_text(), flags=re.M)
    ni.write_text(re.sub(r"^FileHash: .*$", f"FileHash: sha256:{h.nix32}", text, flags=re.M))
    r = _verify(serve(reg), built.hello)
    assert _status(r) == (1, "result: FAIL (1 check failed)"), r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("  FAIL content: "))
    assert f"hash mismatch for compressed NAR of {built.hello} (object {new})" in line, line
    assert "a valid zstd stream" in line


def test_a_registry_paths_provenance_is_shown(built, serve, tmp_path: Path) -> None:
    """What a registry path's provenance records reaches the report (the closure's
    judgement keeps the target's summary)."""
    sk = SecretKey.generate("builder-1")
    attestations.write(
        built.store, built.hello, "provenance", signed_provenance(built.store, built.hello, sk)
    )
    key = tmp_path / "k.sec"
    write_secret_key(key, SecretKey.generate("cache-1"))
    d = tmp_path / "reg-prov"
    r = kiln(
        "push", "--to", f"file://{d}", "--sign-key", str(key), built.hello, "--store", str(built.store.root)
    )
    assert r.returncode == 0, r.stderr
    pol = tmp_path / "p.toml"
    pol.write_text(f'[keys]\nprovenance = ["{sk.public().to_text()}"]\n')
    r = _verify(serve(d), built.hello, "--policy", str(pol))
    assert r.returncode == 0, r.stdout + r.stderr
    info = [x for x in r.stdout.splitlines() if x.startswith("  info provenance: ")]
    assert info[0].endswith("; signed by builder-1") and "from x.recipe attribute x" in info[1], info
