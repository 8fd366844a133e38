"""A kiln token as the password of HTTP Basic auth (any user name), what Nix sends from a
``netrc-file``:

- real Nix 2.8 pushes into ``kiln serve`` with ``nix copy --to http://…`` and a netrc
  holding a ``write`` token (a ``read`` token gets 403, no netrc 401), and reads a
  ``--private`` registry with a netrc holding a ``read`` token (without one it fails);
- at the HTTP level, Basic auth meets the same checks as Bearer (wrong password 401, a
  ``read`` token's upload 403), a malformed Basic value (not base64, not UTF-8, no ``:``,
  empty password) is a 401 naming why, and a token with non-ASCII bytes is a 401, never a
  500; a refused Basic request's access-log line names the presented token's id.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
from nixkit import nix_store_path
from regkit import add_built, kiln, make_store, request

from kiln.registry.client import open_client
from kiln.registry.copy import to_store
from kiln.registry.push import push

HAVE_NIX = shutil.which("nix") is not None
NIX = [  # (no substituters: no retries against an unreachable cache.nixos.org)
    "nix", "--extra-experimental-features", "nix-command",
    "--option", "narinfo-cache-negative-ttl", "0", "--option", "substituters", "",
]  # fmt: skip


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def token(reg: Path, scope: str) -> str:
    r = kiln("registry", "token", "create", "--scope", scope, "--dir", str(reg))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def netrc(path: Path, password: str) -> Path:
    path.write_text(f"machine 127.0.0.1\nlogin nix\npassword {password}\n")
    return path


def nix_path(tmp_path: Path) -> tuple[Path, str]:
    """A path in a throwaway Nix store (root, store path)."""
    root = tmp_path / "nixroot"
    return root, nix_store_path(root, tmp_path / "payload.txt", f"pushed by nix {tmp_path}\n")


def nix_push(
    root: Path, path: str, url: str, sk: Path, netrc_file: Path | None
) -> subprocess.CompletedProcess:
    auth = ["--option", "netrc-file", str(netrc_file)] if netrc_file else []
    to = f"{url}?compression=zstd&secret-key={sk}"
    cmd = [*NIX, "copy", *auth, "--from", f"local?root={root}", "--to", to, path]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.nix
@pytest.mark.skipif(not HAVE_NIX, reason="needs Debian nix-bin")
def test_nix_pushes_into_kiln_serve_with_a_netrc(tmp_path: Path, keys, kiln_server) -> None:
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg), "--store-dir", "/nix/store").returncode == 0
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file))
    root, path = nix_path(tmp_path)
    refused = {
        "no netrc": (None, "401"),
        "read token": (netrc(tmp_path / "netrc-r", token(reg, "read")), "403"),
        "wrong password": (netrc(tmp_path / "netrc-bad", "kiln_deadbeef_nope"), "401"),
    }
    for case, (nf, status) in refused.items():
        r = nix_push(root, path, srv.url, keys.sk_file, nf)
        assert r.returncode != 0 and status in r.stderr, (case, r.stderr)
    r = nix_push(root, path, srv.url, keys.sk_file, netrc(tmp_path / "netrc-w", token(reg, "write")))
    assert r.returncode == 0, r.stderr
    dest = make_store(tmp_path / "dest", "/nix/store")  # what Nix pushed is whole and signed
    assert to_store(srv.url, dest, [path], [keys.pk]) == 1
    assert dest.is_valid(path)
    assert (dest.real_path(path)).read_text() == f"pushed by nix {tmp_path}\n"


@pytest.mark.nix
@pytest.mark.skipif(not HAVE_NIX, reason="needs Debian nix-bin")
def test_nix_reads_a_private_kiln_serve_with_a_netrc(tmp_path: Path, keys, kiln_server) -> None:
    store = make_store(tmp_path / "kstore", "/nix/store")
    top = add_built(store, tmp_path, "kiln-basic-top", f"top {tmp_path}")
    reg = tmp_path / "reg"
    push(store, [top], lambda: open_client(f"file://{reg}", store_dir="/nix/store"), sign_key=keys.sk)
    srv = kiln_server("--dir", str(reg), "--private")

    def nix_copy(nf: Path | None, dest: str) -> subprocess.CompletedProcess:
        auth = ["--option", "netrc-file", str(nf)] if nf else []
        trust = ["--option", "trusted-public-keys", keys.pk.to_text()]
        cmd = [*NIX, "copy", *auth, *trust, "--from", srv.url, "--to", f"local?root={tmp_path / dest}", top]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    assert nix_copy(None, "without").returncode != 0
    assert nix_copy(netrc(tmp_path / "netrc-bad", "kiln_deadbeef_nope"), "wrong").returncode != 0
    assert not (tmp_path / "without" / top.lstrip("/")).exists()
    r = nix_copy(netrc(tmp_path / "netrc-r", token(reg, "read")), "with")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "with" / top.lstrip("/") / "data").read_text().startswith("top ")


def raw_put(url: str, authorization: bytes) -> tuple[int, bytes, bytes]:
    """A PUT whose Authorization value is sent as these bytes (http.client would refuse
    non-ASCII ones): (status, WWW-Authenticate, body)."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(
            b"PUT /" + b"a" * 32 + b".narinfo HTTP/1.1\r\nHost: x\r\nAuthorization: " + authorization
            + b"\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
        )  # fmt: skip
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    challenge = next(
        (h.split(b":", 1)[1].strip() for h in lines if h.lower().startswith(b"www-authenticate:")), b""
    )
    return int(lines[0].split()[1]), challenge, body


def test_basic_auth_meets_the_bearer_checks(tmp_path: Path, kiln_server) -> None:
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    write, read = token(reg, "write"), token(reg, "read")
    log = tmp_path / "access.log"
    srv = kiln_server("--dir", str(reg), "--access-log", str(log))
    key = f"{srv.url}/{'a' * 32}.narinfo"
    # accepted under any user name (400: past auth, the body "x" is no narinfo)
    for user in ("nix", "", "any one"):  # (RFC 7617: a user name holds no ":")
        st, _, body = request(key, "PUT", b"x", {"Authorization": basic(user, write)})
        assert st == 400 and b"narinfo" in body, (user, body)
    st, _, body = request(key, "PUT", b"x", {"Authorization": basic("nix", read)})
    assert st == 403 and b"lacks the 'write' scope" in body, body
    wrong = write[:-4] + ("AAAA" if not write.endswith("AAAA") else "BBBB")
    st, h, body = request(key, "PUT", b"x", {"Authorization": basic("nix", wrong)})
    assert (st, body) == (401, b"error: unknown or revoked token\n") and h["www-authenticate"] == "Bearer"
    b64 = base64.b64encode
    malformed = {
        b"Basic !!!notbase64": b"not base64",
        b"Basic \xff\xfe": b"not base64",
        b"Basic " + b64(b"nix:\xff" + write.encode()): b"not UTF-8",
        b"Basic " + b64(write.encode()): b"no ':' between user name and password",
        b"Basic " + b64(b"nix:"): b"empty password",
        b"Basic": b"expected 'Authorization: Bearer <token>', or the token as the Basic-auth password",
        b"Basic " + b64(b"nix:" + write.encode()[:-1] + b"\xc3\xa9"): b"malformed token",
        b"Bearer " + write.encode()[:-1] + b"\xff": b"malformed token",
    }
    for auth, reason in malformed.items():
        st, challenge, body = raw_put(srv.url, auth)
        assert st == 401 and reason in body and challenge == b"Bearer", (auth, st, body)
    # a refused Basic request is logged by the id of the token it presented
    revoked = token(reg, "write")
    rid = revoked.split("_")[1]
    assert kiln("registry", "token", "revoke", "--dir", str(reg), rid).returncode == 0
    logged = f"{srv.url}/{'b' * 32}.narinfo"
    assert request(logged, "PUT", b"x", {"Authorization": basic("nix", revoked)})[0] == 401
    srv.stop()
    line = next(ln for ln in log.read_text().splitlines() if "b" * 32 in ln)
    assert line.split()[-3] == "401" and line.split()[-1] == rid, line
    assert revoked.split("_", 2)[2] not in log.read_text()
