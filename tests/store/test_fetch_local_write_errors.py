"""A download that cannot be written here fails at once, naming the file
(``fetchsink.LocalWriteError``).

Before, a full disk under a download was taken for a network error: ``kiln prefetch``
of a file bigger than the free space in ``$TMPDIR`` downloaded it four times ("No space
left on device (gave up after 4 attempts)"), and a copy from a local mirror that hit it
marked the mirror down for the run and went on to the URLs, which failed the same way.

The file systems are real: a tmpfs of 1 MiB (needs root to mount), the file served by a
real HTTP server on 127.0.0.1, bigger than that."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from httpkit import serve

from kiln.store.fetch import fetch_url, forget_down_mirrors
from kiln.store.fetchsink import LocalWriteError
from kiln.store.hashes import Hash

BIG = os.urandom(64 << 10) * 48  # 3 MiB


class _Server:
    """Serves ``BIG`` at ``/big``, counting the requests."""

    def __init__(self) -> None:
        self.gets = 0
        self.url = ""  # (set once it serves: ``server``)

    def get(self, h: BaseHTTPRequestHandler) -> None:
        self.gets += 1
        h.send_response(200)
        h.send_header("Content-Length", str(len(BIG)))
        h.end_headers()
        with contextlib.suppress(OSError):  # the client gave up, as it should
            h.wfile.write(BIG)


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    with serve(s.get) as base:
        s.url = f"{base}/big"
        yield s


@contextlib.contextmanager
def _tmpfs(where: Path, options: str = "size=1m") -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.fixture(autouse=True)
def _no_env_mirrors(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("KILN_SOURCE_MIRRORS", "KILN_FETCH_TIMEOUT", "KILN_FETCH_MAX_SIZE"):
        monkeypatch.delenv(var, raising=False)
    forget_down_mirrors()
    yield
    forget_down_mirrors()


def test_prefetch_into_a_full_tmpdir_fails_at_once(server: _Server, tmp_path: Path):
    with _tmpfs(tmp_path / "fs") as fs:
        r = subprocess.run(
            [sys.executable, "-m", "kiln", "prefetch", server.url],
            env={**os.environ, "TMPDIR": str(fs)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert os.listdir(fs) == []  # (its temp dir is gone)
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert r.stderr.startswith(f"error: cannot write the download to {fs}/kiln-owned-prefetch-"), r.stderr
    assert "No space left on device" in r.stderr and "bytes free" in r.stderr, r.stderr
    assert "attempts" not in r.stderr and "retrying" not in r.stderr, r.stderr
    assert server.gets == 1


def test_a_full_disk_is_not_the_mirror_s_failure(server: _Server, tmp_path: Path, capsys):
    """A local mirror's copy that fills the disk ends the fetch: the mirror is not marked
    down, and the URL is not tried."""
    expected = Hash("sha256", hashlib.sha256(BIG).digest())
    mirror = tmp_path / "mirror"
    (mirror / "sha256").mkdir(parents=True)
    (mirror / "sha256" / expected.hex).write_bytes(BIG)
    with _tmpfs(tmp_path / "fs") as fs:
        dest = fs / "src" / "big.tar"
        with pytest.raises(LocalWriteError, match=f"cannot write the download to {dest.parent}/.big.tar."):
            fetch_url([server.url], expected, dest, mirrors=[str(mirror)], progress=False)
        assert os.listdir(fs / "src") == []  # (nothing left behind)
    assert server.gets == 0
    assert "not using it again" not in capsys.readouterr().err


def test_a_read_only_destination_is_said_before_any_download(server: _Server, tmp_path: Path):
    read_only = "Read-only file system; the file system holding .* is read-only"
    with _tmpfs(tmp_path / "fs", "size=1m,ro") as fs, pytest.raises(LocalWriteError, match=read_only):
        fetch_url([server.url], None, fs / "big", mirrors=[], progress=False)
    assert server.gets == 0
