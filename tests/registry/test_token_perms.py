"""A registry's tokens are refused when another local user could change them: the
registry directory, ``.kiln/`` or ``tokens.json`` writable by group or others (such a
user could add a ``write`` token of their own and push). ``kiln registry token``,
``kiln serve --dir`` and a running server's reload of changed tokens all refuse, naming
the ``chmod`` that fixes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from regkit import request, start_kiln


def _kiln(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, timeout=60)


def _registry(tmp_path: Path) -> Path:
    reg = tmp_path / "reg"
    r = _kiln("registry", "init", "--dir", str(reg))
    assert r.returncode == 0, r.stderr
    r = _kiln("registry", "token", "create", "--dir", str(reg), "--scope", "write")
    assert r.returncode == 0, r.stderr
    return reg


@pytest.mark.parametrize("where", ["root", ".kiln", "tokens.json"])
@pytest.mark.parametrize("bits", [0o002, 0o020])
def test_token_commands_refuse_tokens_others_could_change(tmp_path: Path, where: str, bits: int) -> None:
    reg = _registry(tmp_path)
    target = {"root": reg, ".kiln": reg / ".kiln", "tokens.json": reg / ".kiln" / "tokens.json"}[where]
    target.chmod(target.stat().st_mode & 0o7777 | bits)
    for args in (("create", "--dir", str(reg), "--scope", "write"), ("list", "--dir", str(reg))):
        r = _kiln("registry", "token", *args)
        assert r.returncode == 1, r.stdout
        assert "refusing to use the tokens of the registry" in r.stderr
        assert "who may push there" in r.stderr and f"{target}: writable by" in r.stderr
        assert "chmod go-w" in r.stderr and "Traceback" not in r.stderr
    target.chmod(target.stat().st_mode & ~bits)
    assert _kiln("registry", "token", "list", "--dir", str(reg)).returncode == 0


def test_serve_refuses_to_start_on_tokens_others_could_change(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    (reg / ".kiln").chmod(0o777)
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "serve", "--dir", str(reg), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "refusing to use the tokens" in r.stderr, r.stderr


def test_a_running_server_refuses_tokens_made_writable_after_it_started(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    token = _kiln("registry", "token", "create", "--dir", str(reg), "--scope", "write").stdout.strip()
    srv = start_kiln(["--dir", str(reg)])
    try:
        auth = {"Authorization": f"Bearer {token}"}
        status, _, _ = request(f"{srv.url}/publish-index", "POST", b"", auth)
        assert status != 401 and status != 403
        # another user's token lands in a now world-writable .kiln (the file changes)
        (reg / ".kiln").chmod(0o777)
        tokens = reg / ".kiln" / "tokens.json"
        os.utime(tokens, ns=(1, 1))
        status, _, body = request(f"{srv.url}/publish-index", "POST", b"", auth)
        assert status == 401 and b"refuses its own tokens" in body, (status, body)
        assert str(reg).encode() not in body  # (the detail is the operator's, not the client's)
    finally:
        srv.stop()
    assert "refusing to use the tokens of the registry" in srv.proc.stderr.read()
