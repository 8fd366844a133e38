"""Registry URLs and tokens a user can get wrong are errors that say so (exit 1), not
internal errors (exit 70, aiohttp's ValueError) and not an empty directory registry made
in the current directory for ``HOST:PORT`` without a scheme."""

from __future__ import annotations

import contextlib
import http.server
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from clikit import kiln_at


def kiln(tmp: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return kiln_at(tmp, *args, env=env, cwd=tmp)


#: (status, headers, body) for a GET request
Answer = tuple[int, dict[str, str], bytes]


@contextlib.contextmanager
def serving(answer: Callable[[http.server.BaseHTTPRequestHandler], Answer]) -> Iterator[int]:
    """A local HTTP server answering every GET with ``answer(request)``; yields its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status, headers, body = answer(self)
            self.send_response(status)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()


@pytest.fixture
def path(tmp_path: Path) -> str:
    assert kiln(tmp_path, "store", "init").returncode == 0
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x\n")
    return kiln(tmp_path, "store", "add", str(tmp_path / "src")).stdout.strip()


@pytest.mark.parametrize(
    ("url", "token", "says"),
    [
        ("http://[::1", "T", "not a registry URL"),
        ("http://u:p@127.0.0.1:9", "T", "give a token or credentials in the URL, not both"),
        ("127.0.0.1:18702", "T", "looks like HOST:PORT: write http://127.0.0.1:18702"),
        ("http://127.0.0.1:9", "a\nb", "contains a control character"),
        ("http://127.0.0.1:99999", "T", "not a registry URL"),
    ],
)
def test_push_to_a_bad_url_or_with_a_bad_token(
    tmp_path: Path, path: str, url: str, token: str, says: str
) -> None:
    r = kiln(tmp_path, "push", path, "--to", url, "--token", token)
    assert r.returncode == 1 and says in r.stderr, r.stderr
    assert not (tmp_path / "127.0.0.1:18702").exists()  # no directory registry made here


@pytest.mark.parametrize(
    "args",
    [
        ["copy", "--from", "http://[::1", "--to", "store", "PATH"],
        ["copy", "--from", "http://[::1", "--to", "file:///nonexistent", "PATH"],
        ["verify", "http://[::1#PATH"],
        ["mirror", "sync", "http://[::1", "mirror"],
    ],
)
def test_other_commands_say_the_url_is_bad(tmp_path: Path, path: str, args: list[str]) -> None:
    r = kiln(tmp_path, *[a.replace("PATH", path) for a in args])
    # (kiln verify: a usage error, as 1 says the artifact was rejected)
    assert r.returncode == (2 if args[0] == "verify" else 1) and "not a registry URL" in r.stderr, r.stderr


def test_a_substituter_that_cannot_be_used_is_said_once(tmp_path: Path, path: str) -> None:
    """A build goes on without it (an unreachable registry is a miss), but says why
    instead of quietly building what the registry may have."""
    (tmp_path / "x.recipe").write_text('package x { build = "true" }\n')
    r = kiln(
        tmp_path, "build", "x.recipe", "--substituter", "http://[::1", "--substituter", "/nonexistent/reg"
    )
    assert r.stderr.count("warning: substituter http://[::1 not used: not a registry URL") == 1, r.stderr
    assert "warning: substituter /nonexistent/reg not used:" in r.stderr, r.stderr


def test_a_web_server_that_is_not_a_binary_cache_is_said_so(tmp_path: Path, path: str) -> None:
    """A server answering every URL with a page (no StoreDir) was "registry store dir ''
    differs"; it is not a binary cache."""
    with serving(lambda rq: (200, {}, b"<html>hello</html>")) as port:
        url = f"http://127.0.0.1:{port}"
        other = "/kiln/store/" + "1" * 32 + "-other"  # (path is valid here already: nothing to ask)
        r = kiln(tmp_path, "copy", "--from", url, "--to", "store", other)
        assert (
            r.returncode == 1 and "is not a binary cache (its nix-cache-info names no StoreDir)" in r.stderr
        ), r.stderr


def test_credentials_in_a_url_go_as_basic_auth_and_are_never_shown(tmp_path: Path, path: str) -> None:
    """A cache behind basic auth (``https://user:pw@host``) is read with those
    credentials; messages show the URL with ``***`` for the password."""
    import base64

    want = "Basic " + base64.b64encode(b"alice:s3cret-pw").decode()

    def guarded(rq: http.server.BaseHTTPRequestHandler) -> Answer:
        if rq.headers.get("Authorization") != want:
            return 401, {}, b""
        body = b"StoreDir: /kiln/store\n" if rq.path == "/nix-cache-info" else b""
        return (200 if body else 404), {}, body

    other = "/kiln/store/" + "1" * 32 + "-other"
    with serving(guarded) as port:
        r = kiln(
            tmp_path, "copy", "--from", f"http://alice:s3cret-pw@127.0.0.1:{port}", "--to", "store", other
        )
        # past nix-cache-info with the credentials: the path is what is missing
        assert r.returncode == 1 and "cannot provide 1 path(s)" in r.stderr, r.stderr
        assert "s3cret-pw" not in r.stderr and "alice:***@" in r.stderr
        r = kiln(
            tmp_path, "copy", "--from", f"http://alice:wrong-pw@127.0.0.1:{port}", "--to", "store", other
        )
        assert r.returncode == 1 and "wrong-pw" not in r.stderr, r.stderr
        (tmp_path / "x.recipe").write_text('package x { build = "true" }\n')
        r = kiln(tmp_path, "build", "x.recipe", "--substituter", f"http://alice:wrong-pw@127.0.0.1:{port}")
        assert "wrong-pw" not in r.stderr, r.stderr


def test_basic_auth_is_not_sent_to_another_origin_on_a_redirect(tmp_path: Path) -> None:
    """A registry that redirects to a CDN must not hand it the user's password."""
    import asyncio

    from kiln.registry.httpclient import HttpClient

    seen: list[str | None] = []

    def cdn(rq: http.server.BaseHTTPRequestHandler) -> Answer:
        seen.append(rq.headers.get("Authorization"))
        return 200, {}, b"ok"

    def origin(rq: http.server.BaseHTTPRequestHandler) -> Answer:
        seen.append(rq.headers.get("Authorization"))
        return 302, {"Location": f"http://127.0.0.1:{cdn_port}/blob"}, b""

    async def get(port: int) -> bytes | None:
        c = HttpClient(f"http://alice:s3cret@127.0.0.1:{port}")
        try:
            return await c.get("nar/x")
        finally:
            await c.close()

    with serving(cdn) as cdn_port, serving(origin) as port:
        assert asyncio.run(get(port)) == b"ok"
    assert seen[0] is not None and seen[0].startswith("Basic ") and seen[1] is None, seen


def test_no_message_shows_a_url_s_password(tmp_path: Path, path: str) -> None:
    """Whatever path a message takes (an error, a warning, challenge's own output), a
    registry URL in it has its password hidden: everything the CLI writes to stderr goes
    through ``errors.redact_urls``."""
    from kiln.store.errors import redact_urls

    assert redact_urls("from http://alice:s3cret@h:1/x and https://ghp_tok@github.com") == (
        "from http://alice:***@h:1/x and https://***@github.com"
    )
    assert redact_urls("http://alice:p@ssw0rd@h/x") == "http://alice:***@h/x"  # the last @
    for pw in ("s3cr/etpw", "s3?c", "s3cr#etpw", "ab+c/d="):  # what a password may hold
        assert redact_urls(f"see http://user:{pw}@h/p") == "see http://user:***@h/p", pw
    assert (
        redact_urls("https://proxy.golang.org:443/m/@v/v1.zip") == "https://proxy.golang.org:443/m/@v/v1.zip"
    )
    assert (
        redact_urls("https://proxy.golang.org/m/@v/v0.9.1.zip") == "https://proxy.golang.org/m/@v/v0.9.1.zip"
    )
    runs = [
        kiln(tmp_path, "copy", "--from", "http://alice:s3cret-pw@[::1", "--to", "store", path),
        kiln(
            tmp_path,
            "copy",
            "--from",
            "http://alice:s3cret-pw@127.0.0.1:1",
            "--to",
            "store",
            "/kiln/store/" + "1" * 32 + "-x",
        ),
        kiln(tmp_path, "challenge", path, "--registry", "http://alice:s3cret-pw@127.0.0.1:1"),
        kiln(tmp_path, "challenge", path, "--registry", "http://alice:s3cret-pw@127.0.0.1:1", "--json"),
        kiln(tmp_path, "verify", f"http://alice:s3cret-pw@127.0.0.1:1#{path}"),  # its report is stdout
        kiln(tmp_path, "verify", f"http://alice:s3cret-pw@127.0.0.1:1#{path}", "--json"),
    ]
    for r in runs:
        assert "s3cret-pw" not in r.stdout + r.stderr and "alice:***@" in r.stdout + r.stderr, (
            r.stdout,
            r.stderr,
        )
