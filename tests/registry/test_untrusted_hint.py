"""A narinfo refused because no key is trusted at all says how to trust one (a push to
a server started without ``--trusted-key`` said only "trusted: none")."""

from __future__ import annotations

from pathlib import Path

import pytest
from regkit import add_tree, make_store

from kiln.registry import layout
from kiln.registry.verify import UntrustedError, check_narinfo
from kiln.store import narinfo as ni
from kiln.store.pathinfo import PathInfo
from kiln.store.signing import SecretKey, sign_info


def _signed(tmp_path: Path) -> tuple[str, PathInfo, SecretKey, str]:
    """A path of a new store, its info, the key ``me-1`` and its narinfo signed by it."""
    store = make_store(tmp_path / "store")
    path = add_tree(store, tmp_path, "hello", "hello\n")
    info = store.query(path)
    sk = SecretKey.generate("me-1")
    signed = PathInfo(
        **{**{f: getattr(info, f) for f in PathInfo.__slots__ if f != "sigs"}, "sigs": (sign_info(info, sk),)}
    )
    text = ni.NarInfo.from_pathinfo(signed, layout.nar_key(info.file_hash), "zstd").render()
    return path, info, sk, text


def test_no_trusted_key_names_the_flag(tmp_path: Path) -> None:
    path, info, sk, text = _signed(tmp_path)
    with pytest.raises(UntrustedError, match=r"trusted: none; a key is trusted with --trusted-key PUB\)"):
        check_narinfo(text, "/kiln/store", [], 1)
    with pytest.raises(UntrustedError) as e:  # (a key trusted, just not this one: no hint)
        check_narinfo(text, "/kiln/store", [SecretKey.generate("other-1").public()], 1)
    assert "--trusted-key" not in str(e.value)
    assert check_narinfo(text, "/kiln/store", [sk.public()], 1).path == path


def test_a_trusted_keys_signature_that_does_not_verify_is_named(tmp_path: Path) -> None:
    """A narinfo changed after signing (its NarSize here) said only "0 valid signature(s)
    ... (signatures by: me-1; trusted: me-1)", as if a signature were missing."""
    path, info, sk, text = _signed(tmp_path)
    edited = text.replace(f"NarSize: {info.nar_size}\n", f"NarSize: {info.nar_size + 8}\n")
    assert edited != text
    with pytest.raises(UntrustedError, match=r"me-1's signature does not verify: the narinfo was changed"):
        check_narinfo(edited, "/kiln/store", [sk.public()], 1)
    with pytest.raises(UntrustedError) as e:  # (a key of another name: nothing forged to name)
        check_narinfo(edited, "/kiln/store", [SecretKey.generate("other-1").public()], 1)
    assert "does not verify" not in str(e.value)
