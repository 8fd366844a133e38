"""A kiln registry token never reaches a message, and never reaches a signer command.

- kiln's stderr filter (``cli/common._Quiet``) shows a kiln token pasted where a store
  path or another value belongs as ``kiln_<id>_***`` (before, ``kiln push $TOKEN``
  printed "'kiln_6645cb44_RHx6...' is not a path in the store");
- ``kiln $TOKEN`` ("unknown command") is printed before that filter is in place
  (``cli/main.py``), so it needs ``hide_tokens`` there too;
- ``--signer-cmd`` runs without the ``KILN_*TOKEN*`` variables (``store/signcmd.py``):
  a signing service or wrapper is never handed a push token.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from clikit import kiln_at

from kiln.store.keyfiles import write_secret_key
from kiln.store.signing import SecretKey

TOKEN = "kiln_6645cb44_RHx6" + "Qz9-_a" * 7
SECRET = TOKEN[14:]


@pytest.mark.parametrize(
    "args",
    [
        ["push", TOKEN, "--to", "reg"],
        ["store", "info", TOKEN],
        ["verify", TOKEN],
        ["build", "x.recipe", "--cores", TOKEN],  # argparse's "invalid value" quotes it
        ["store", "add", TOKEN],
    ],
)
def test_a_token_in_the_wrong_place_is_not_echoed(tmp_path: Path, args: list[str]) -> None:
    assert kiln_at(tmp_path, "store", "init").returncode == 0
    r = kiln_at(tmp_path, *args, cwd=tmp_path)
    assert r.returncode != 0
    assert SECRET[:16] not in r.stdout + r.stderr, r.stderr
    assert "kiln_6645cb44_***" in r.stderr, r.stderr  # the id stays: it says which token
    assert "internal error" not in r.stderr


def test_a_token_given_as_the_command_is_not_echoed(tmp_path: Path) -> None:
    r = kiln_at(tmp_path, TOKEN)
    assert r.returncode == 2
    assert SECRET[:16] not in r.stderr and "kiln_6645cb44_***" in r.stderr, r.stderr


def test_the_signer_command_gets_no_registry_token(tmp_path: Path) -> None:
    key = SecretKey.generate("hsm")
    secret = tmp_path / "hsm" / "k.sec"
    secret.parent.mkdir()
    write_secret_key(secret, key)
    seen = tmp_path / "env.json"
    script = tmp_path / "signer.py"
    script.write_text(
        "import json, os, sys\n"
        "from kiln.store.keyfiles import load_secret_key\n"
        f"json.dump(dict(os.environ), open({str(seen)!r}, 'w'))\n"
        f"k = load_secret_key({str(secret)!r})\n"
        "sys.stdout.write(k.sign(sys.stdin.buffer.read()).split(':', 1)[1])\n"
    )
    (tmp_path / "f.txt").write_text("hi\n")
    r = kiln_at(tmp_path, "store", "add", str(tmp_path / "f.txt"))
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip()
    env = {
        "KILN_REGISTRY_TOKEN": TOKEN,
        "KILN_REGISTRY_FROM_TOKEN": TOKEN,
        "KILN_SUBSTITUTER_TOKENS": f"http://x={TOKEN}",
        "KILN_UNRELATED": "kept",
    }
    r = kiln_at(
        tmp_path, "sbom", path, "--attest", "--signer-cmd", f"{sys.executable} {script}",
        "--signer-key", key.public().to_text(), env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = json.loads(seen.read_text())
    assert not [k for k in got if "TOKEN" in k], sorted(got)
    assert got["KILN_UNRELATED"] == "kept" and got["KILN_HOME"] == os.fspath(tmp_path / "home")
