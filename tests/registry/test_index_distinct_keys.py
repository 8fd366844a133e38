"""Index metadata thresholds count distinct keys (``index._check_sigs``): a key id hashes
``name:base64``, so one raw key listed under two names has two ids; counting ids let a
single key holder meet a threshold of 2. And a root's key entry must be the key its id
names."""

from __future__ import annotations

import datetime as dt

import pytest

from kiln.registry import index as ix
from kiln.registry.indexbuild import make_root
from kiln.store.signing import SecretKey

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _root(keys: list[SecretKey], threshold: int) -> bytes:
    signed = make_root(1, {r: [k.public() for k in keys] for r in ix.ROLES}, NOW, threshold)
    return ix.sign_envelope(signed, keys)


def test_one_key_under_two_names_is_one_signer() -> None:
    key = SecretKey.generate("idx-1")
    alias = SecretKey("idx-alias-1", key.key)  # the same raw key, another name
    root = _root([key, alias], 2)
    assert len(ix._load(root, "root")[0]["roles"]["root"]["keyids"]) == 2  # two ids...
    with pytest.raises(ix.SignatureError, match="1 valid signature.*by distinct keys.*2 required"):
        ix.TrustState.pin(root)  # ...one signer
    # two distinct keys meet the same threshold
    state = ix.TrustState.pin(_root([key, SecretKey.generate("idx-2")], 2))
    assert state.root["roles"]["timestamp"]["threshold"] == 2


def test_a_root_key_entry_must_be_the_key_its_id_names() -> None:
    a, b = SecretKey.generate("idx-a-1"), SecretKey.generate("idx-b-1")
    signed = make_root(1, {r: [a.public()] for r in ix.ROLES}, NOW)
    # the entry under a's id holds b's key, and b signs under a's id
    signed["keys"][ix.key_id(a.public())]["public"] = b.public().to_text()
    body = ix.sign_envelope(signed, [b]).replace(
        ix.key_id(b.public()).encode(), ix.key_id(a.public()).encode()
    )
    with pytest.raises(ix.IndexError_, match="lists key id .* for key 'idx-b-1', whose key id is"):
        ix.TrustState.pin(body)
