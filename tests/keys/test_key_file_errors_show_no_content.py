"""A key file that does not parse is not quoted in the error: given the wrong file
(``--key .env``), the text before its first ``:`` is that file's tokens and passwords,
and error output ends up in CI logs. Before, every command printed it as the "key
name". A plausible key name is still shown (it says which key is broken)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from clikit import kiln_at

from kiln.store.errors import FormatError
from kiln.store.signing import PublicKey, SecretKey

SECRETS = ("SEKRIT", "wJal", "ghp_", "postgres", "AWS_SECRET", "DATABASE_URL", "u:p@h")
DOTENV = "AWS_SECRET_ACCESS_KEY=wJalSEKRIT\nGITHUB_TOKEN=ghp_SEKRIT\nDATABASE_URL=postgres://u:p@h/db"
PATH = "/kiln/store/" + "0" * 32 + "-x"


@pytest.mark.parametrize("content", [DOTENV, "DATABASE_URL=postgres://u:p@h/db\n"])
@pytest.mark.parametrize(
    "args",
    [
        ["store", "sign", "--key", ".env", PATH],
        ["key", "public", ".env"],
        ["rebuild", PATH, "--key", ".env"],
        ["rebuild", PATH, "--signer-cmd", "cat", "--signer-key", ".env"],
        ["store", "verify", "--trusted-key", ".env"],
    ],
)
def test_the_wrong_file_as_a_key_is_not_quoted(tmp_path: Path, args: list[str], content: str) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(content)
    env_file.chmod(0o600)
    assert kiln_at(tmp_path, "store", "init", cwd=tmp_path).returncode == 0
    r = kiln_at(tmp_path, *args, cwd=tmp_path)
    assert r.returncode != 0 and "not shown" in r.stderr, r.stderr
    assert not [s for s in SECRETS if s in r.stdout + r.stderr], r.stderr
    assert "Traceback" not in r.stderr


def _message(text: str, cls: type = SecretKey) -> str:
    with pytest.raises(FormatError) as e:
        cls.parse(text)
    return str(e.value)


def test_only_a_plausible_key_name_is_shown() -> None:
    token = "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY2z4A"  # (40 characters: not base64-long)
    seed = base64.b64encode(os.urandom(32)).decode()
    hidden = {
        "two words:AAAA": "9 characters, 1 line; not shown",
        "a\nb:AAAA": "3 characters, 2 lines; not shown",
        "TOKEN=abc:AAAA": "(its name: 9 characters, 1 line; not shown)",  # a .env line
        f"{token}:xyz": "(its name: 40 characters",
        f"{seed}:AAAA": "(its name: 44 characters",  # a seed where the name goes
        "x" * 65 + ":AAAA": "(its name: 65 characters",
    }
    for text, says in hidden.items():
        for cls in (SecretKey, PublicKey):
            m = _message(text, cls)
            assert says in m, m
            assert text.partition(":")[0] not in m, m
    # a real key's name is shown, in every parse error about it
    assert "secret key 'cache.example.org-1': invalid base64" in _message("cache.example.org-1:!!")
    assert "public key 'kiln-root@host-1': expected 32 bytes" in _message("kiln-root@host-1:AAAA", PublicKey)
