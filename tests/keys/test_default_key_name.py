"""The name of a store's generated build key (``buildglue.default_key_name``) is one kiln
can read back whatever the user and host are called: a user name outside ASCII (or
holding a quote) made a key file kiln then refused as "non-ASCII content"."""

from __future__ import annotations

import pwd
from pathlib import Path
from types import SimpleNamespace

import pytest

from kiln.buildglue import default_key_name
from kiln.cmd_key import check_key_name
from kiln.store.keyfiles import load_secret_key, write_secret_key
from kiln.store.signing import SecretKey


@pytest.mark.parametrize("user", ["clé", 'a"b', "back\\slash", "tab\tuser", "colon:x", "plain"])
def test_the_default_name_is_one_kiln_can_read_back(monkeypatch, tmp_path: Path, user: str) -> None:
    # (the user database is the host's: a name of that kind is what a host may have)
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: SimpleNamespace(pw_name=user))
    name = default_key_name()
    assert name.startswith("kiln-") and name.endswith("-1")
    assert check_key_name(name, "key") == name
    write_secret_key(tmp_path / "k.sec", SecretKey.generate(name))
    assert load_secret_key(tmp_path / "k.sec").name == name
    if user == "plain":
        assert name.startswith("kiln-plain@")
