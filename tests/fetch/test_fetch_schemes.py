"""What the HTTP fetcher will not do: speak FTP (a trickled banner escaped the pace rule
and held a fetch for ever), follow a redirect anywhere but http(s), send or echo
credentials, or print a server's escape sequences."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from pathlib import Path

import pytest
from clikit import outcome_within

from kiln.main import main
from kiln.store.fetch import FetchError, fetch_url
from kiln.store.hashes import Hash

DATA = b"the file\n" * 100


def h(data: bytes) -> Hash:
    return Hash("sha256", hashlib.sha256(data).digest())


class Trickler:
    """A TCP server that answers every connection as a hostile FTP server would: a
    banner line a byte per 50 ms, never ending, so it is never silent for a timeout."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(b"220-")
                while not self.stop.wait(0.05):
                    conn.sendall(b"x")
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def trickler():
    t = Trickler()
    yield t
    t.close()


def fetch_in_thread(urls: list[str], dest: Path, limit: float = 15.0) -> BaseException | None:
    """Run a fetch that must end by itself within ``limit`` s (a stalled one would hang
    the test run: it is left behind in a daemon thread and the test fails)."""
    got = outcome_within(
        limit,
        lambda: fetch_url(urls, h(DATA), dest, mirrors=[], progress=False, timeout=2, retries=0),
        f"the fetch of {urls}",
    )
    return got if isinstance(got, BaseException) else None


def test_a_redirect_to_ftp_is_refused_and_the_next_source_used(server, trickler, tmp_path):
    """urllib followed an http redirect to ftp://, whose sockets no pace rule watched: a
    banner trickled a byte at a time held the fetch for ever (200 s until killed)."""
    server.add("f", DATA)
    server.locations["ftp"] = f"ftp://127.0.0.1:{trickler.port}/f"
    t0 = time.monotonic()
    err = fetch_in_thread([server.url("goto/ftp"), server.url("file/f")], tmp_path / "f")
    assert err is None and (tmp_path / "f").read_bytes() == DATA
    assert time.monotonic() - t0 < 5
    assert trickler.connections == 0


def test_a_redirect_to_ftp_alone_is_a_clear_error(server, trickler, tmp_path):
    server.locations["ftp"] = f"ftp://127.0.0.1:{trickler.port}/f"
    err = fetch_in_thread([server.url("goto/ftp")], tmp_path / "f")
    assert isinstance(err, FetchError)
    assert f"refusing a redirect to ftp://127.0.0.1:{trickler.port}/f: only http and https" in str(err)
    assert trickler.connections == 0


def test_ftp_urls_are_not_fetched(trickler, tmp_path):
    err = fetch_in_thread([f"ftp://127.0.0.1:{trickler.port}/f"], tmp_path / "f")
    assert isinstance(err, FetchError) and "ftp is not supported" in str(err), err
    assert "use the http or https URL" in str(err)
    assert trickler.connections == 0


@pytest.mark.parametrize("where", ["file:///etc/hostname", "data:,hello"])
def test_a_redirect_to_a_local_scheme_is_refused(server, tmp_path, where):
    server.locations["x"] = where
    err = fetch_in_thread([server.url("goto/x")], tmp_path / "f")
    assert isinstance(err, FetchError) and "only http and https redirects are followed" in str(err), err


def test_a_url_with_credentials_is_refused_without_echoing_them(server, tmp_path, capsys):
    """urllib took ``user:pw@host`` for the host and quoted the password in its error
    ("nonnumeric port: 's3cr3t-pw@localhost'"), which URL redaction does not catch."""
    server.add("f", DATA)
    port = server.httpd.server_port
    for url in (f"http://user:s3cr3t-pw@127.0.0.1:{port}/file/f", "http://user:s3cr3t-pw@localhost/f"):
        err = fetch_in_thread([url], tmp_path / "f")
        assert isinstance(err, FetchError), err
        assert "s3cr3t" not in str(err) and "credentials in a URL are not supported" in str(err), err
        assert "http://***@" in str(err)
    assert server.log == []  # nothing was sent
    assert main(["prefetch", "https://ghp_T0KEN@127.0.0.1:9/x.tar"]) == 1
    err_text = capsys.readouterr().err
    assert "T0KEN" not in err_text and "credentials" in err_text


def test_a_redirect_to_a_url_with_credentials_is_refused(server, tmp_path):
    server.add("f", DATA)
    server.locations["cred"] = f"http://u:s3cr3t-pw@127.0.0.1:{server.httpd.server_port}/file/f"
    err = fetch_in_thread([server.url("goto/cred")], tmp_path / "f")
    assert isinstance(err, FetchError) and "s3cr3t" not in str(err) and "credentials" in str(err), err
    assert [p for _, p, _ in server.log] == ["/goto/cred"]


def test_a_mirror_with_credentials_is_skipped_without_echoing_them(server, tmp_path, monkeypatch, capsys):
    server.add("f", DATA)
    monkeypatch.setenv("KILN_SOURCE_MIRRORS", "https://user:s3cr3t-pw@127.0.0.1:9/m")
    fetch_url([server.url("file/f")], h(DATA), tmp_path / "f", mirrors=[], progress=False)
    err = capsys.readouterr().err
    assert "skipping mirror https://***@127.0.0.1:9/m" in err and "s3cr3t" not in err, err


@pytest.mark.parametrize(
    "line",
    [
        b"HTTP/1.1 404 \x1b]0;OWNED\x07\x1b[2K\rall good, nothing to see",  # a reason phrase
        b"HTTP/1.1 503 \x9b31m\xe2\x80\xaeevil",  # a C1 CSI and a bidi override (UTF-8)
        b"\x1b]0;OWNED\x07 not a status line",  # http.client quotes it in BadStatusLine
    ],
)
def test_server_text_in_errors_is_escaped(server, tmp_path, line):
    """A server's reason phrase (or a malformed status line) was printed raw: its escape
    sequences set the terminal's title, erased the line, moved the cursor."""
    server.status_lines["x"] = line
    err = fetch_in_thread([server.url("status/x")], tmp_path / "f")
    assert isinstance(err, FetchError), err
    text = str(err)
    assert not any(ord(c) < 32 and c != "\n" or 0x7F <= ord(c) < 0xA0 for c in text), repr(text)
    assert "\u202e" not in text
    assert "\\x1b" in text or "\\x9b" in text, text
