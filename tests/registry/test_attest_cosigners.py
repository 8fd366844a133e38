"""A co-signature does not make an attester the filer of a provenance or SBOM
(``registry/attest_rules.py``, over HTTP against a real ``kiln serve``): anyone holding a
statement's payload can sign it too, so without a builder's (``--trusted-key``'s)
signature an upload must carry exactly one key the registry knows, and a stored one is
replaced only by that key's or a builder's. Builders' co-signatures are unaffected."""

from __future__ import annotations

import time
from pathlib import Path

from regkit import Keys
from test_attest_replace import _cosigned, _prov, _sbom, _served, _stamp
from test_attestations import Setup

from kiln.registry import layout
from kiln.registry.attest_transfer import rebuild_listing
from kiln.registry.storage import FileStorage
from kiln.store.keyfiles import write_public_key
from kiln.store.signing import SecretKey


def _two_attesters(tmp_path: Path, keys: Keys, other_keys: Keys, kiln_server) -> tuple[Setup, SecretKey]:  # noqa: ANN001
    """A registry trusting ``keys`` (the builder) and two attesters: ``other_keys``
    ('intruder-1', A) and a fresh 'attester-2' (B, returned)."""
    b = SecretKey.generate("attester-2")
    write_public_key(tmp_path / "b.pub", b.public())
    s = Setup(
        tmp_path,
        keys,
        kiln_server,
        "--attester-key",
        str(other_keys.pk_file),
        "--attester-key",
        str(tmp_path / "b.pub"),
    )
    s.push(s.bare)
    return s, b


def test_an_attester_cannot_claim_a_statement_by_co_signing_it_first(
    tmp_path, keys, other_keys, kiln_server
) -> None:
    """B obtains A's provenance before it reaches this registry (another registry, a
    mirror), co-signs it and files it first: it was admitted, B then counted as one of its
    signers and replaced it with B's alone."""
    s, b = _two_attesters(tmp_path, keys, other_keys, kiln_server)
    now = time.time()
    a_first = _prov(s, other_keys.sk, _stamp(now - 60))
    code, body = s.put(s.bare, "provenance", _cosigned(a_first, b))
    assert code == 403 and b"must be signed by exactly one key this registry knows" in body, body
    assert b"'attester-2', 'intruder-1'" in body and b"it adds" not in body, body  # (nothing was stored)
    assert _served(s, "provenance") is None
    assert s.put(s.bare, "provenance", a_first)[0] == 201  # A's own, alone
    code, body = s.put(s.bare, "provenance", _prov(s, b, _stamp(now)))
    assert code == 403 and b"by the one key that alone signed it" in body, body
    a_newer = _prov(s, other_keys.sk, _stamp(now))
    assert s.put(s.bare, "provenance", a_newer)[0] == 201  # A's newer: the time rule decides
    assert _served(s, "provenance") == a_newer


def test_a_statement_several_attesters_signed_gives_way_only_to_a_builder(
    tmp_path, keys, other_keys, kiln_server
) -> None:
    """One stored before the rule (planted on disk here) names no single filer: neither
    co-signer may replace it alone (either could be the one that co-signed the other's)."""
    s, b = _two_attesters(tmp_path, keys, other_keys, kiln_server)
    now = time.time()
    storage = FileStorage(s.reg)
    both = _cosigned(_prov(s, other_keys.sk, _stamp(now - 600)), b)
    storage.put_bytes(layout.att_key(s.hp(s.bare), "provenance"), both)
    rebuild_listing(storage, s.hp(s.bare))
    for sk in (b, other_keys.sk):
        code, body = s.put(s.bare, "provenance", _prov(s, sk, _stamp(now)))
        assert code == 403 and b"signed by 'attester-2', 'intruder-1'" in body, body
    assert _served(s, "provenance") == both
    builders = _prov(s, keys.sk, _stamp(now - 1200))  # (older: a builder's wins whatever the times)
    assert s.put(s.bare, "provenance", builders)[0] == 201
    assert _served(s, "provenance") == builders


def test_the_original_signer_adding_a_co_signer_is_told_what_is_wrong(
    tmp_path, keys, other_keys, kiln_server
) -> None:
    """A's newer statement co-signed by B, over A's: refused, and the message says it adds
    a signer, not that the uploader did not sign it."""
    s, b = _two_attesters(tmp_path, keys, other_keys, kiln_server)
    now = time.time()
    first = _prov(s, other_keys.sk, _stamp(now - 60))
    assert s.put(s.bare, "provenance", first)[0] == 201
    code, body = s.put(s.bare, "provenance", _cosigned(_prov(s, other_keys.sk, _stamp(now)), b))
    assert code == 403, body
    assert b"(it adds 'attester-2' to the stored one's signers)" in body, body
    assert b"signed only by" not in body and b"replaced only by" not in body, body
    assert _served(s, "provenance") == first


def test_builders_co_signatures_and_an_attester_s_own_statements_still_pass(
    tmp_path, keys, other_keys, kiln_server
) -> None:
    """The flows the rule must not break: a builder's provenance co-signed by a second
    builder key (even first, and with an attester's signature on it too), either builder
    replacing it alone, and an attester filing and re-filing its own SBOM."""
    k2 = Keys(tmp_path, "builder-2")
    s = Setup(
        tmp_path,
        keys,
        kiln_server,
        "--trusted-key",
        str(k2.pk_file),
        "--attester-key",
        str(other_keys.pk_file),
    )
    s.push(s.bare)
    now = time.time()
    two = _cosigned(_cosigned(_prov(s, keys.sk, _stamp(now - 120)), k2.sk), other_keys.sk)
    assert s.put(s.bare, "provenance", two)[0] == 201
    code, body = s.put(s.bare, "provenance", _prov(s, other_keys.sk, _stamp(now)))
    assert code == 403, body  # (the attester's co-signature gives it no claim)
    assert s.put(s.bare, "provenance", _prov(s, k2.sk, _stamp(now - 60)))[0] == 201
    assert s.put(s.bare, "provenance", _prov(s, keys.sk, _stamp(now)))[0] == 201
    assert s.put(s.bare, "sbom", _sbom(s, other_keys.sk, "first"))[0] == 201
    again = _sbom(s, other_keys.sk, "again")
    assert s.put(s.bare, "sbom", again)[0] == 201
    assert _served(s, "sbom") == again


def test_an_attester_may_add_no_signer_to_another_attester_s_statement(
    tmp_path, keys, other_keys, kiln_server
) -> None:
    """Without a builder, an upload may add no signer: a second attester co-signing the
    first one's provenance counted as its signer and could then replace it alone."""
    s, a2 = _two_attesters(tmp_path, keys, other_keys, kiln_server)
    now = time.time()
    first = _prov(s, other_keys.sk, _stamp(now - 60))
    assert s.put(s.bare, "provenance", first)[0] == 201  # (none there: an attester may file one)
    cosigned = _cosigned(first, a2)
    code, body = s.put(s.bare, "provenance", cosigned)
    assert code == 403 and b"attester-2" in body, body
    assert s.put(s.bare, "provenance", _prov(s, a2, _stamp(now)))[0] == 403
    own = _prov(s, other_keys.sk, _stamp(now))
    assert s.put(s.bare, "provenance", own)[0] == 201  # its own, newer: the time rule decides
    assert _served(s, "provenance") == own
