"""Who may replace a registry's stored attestation (``registry/attest_rules.py``), over
HTTP against a real ``kiln serve`` that trusts the builder's key (``--trusted-key``) and
a rebuilder's (``--attester-key``):

- no signed time more than the clock skew in the future is admitted, and one already
  stored pins nothing;
- a provenance or SBOM is replaced only by its own signer or a trusted (builder) key,
  never by an attester-only key over the builder's; a builder's replaces an attester's
  whatever its claimed time;
- rebuilders' VSAs, what ``--attester-key`` is for, are admitted as before."""

from __future__ import annotations

import time

from regkit import request
from test_attestations import Setup, provenance, vsa

from kiln.registry import layout
from kiln.registry.attest_transfer import admit, rebuild_listing
from kiln.registry.storage import FileStorage
from kiln.store import attestations, intoto
from kiln.store.dsse import Ed25519Signer, Envelope
from kiln.store.paths import StorePath


def _cosigned(data: bytes, sk) -> bytes:  # noqa: ANN001 - a SecretKey
    """Envelope ``data`` with ``sk``'s signature over its payload added (what anyone who
    holds a published statement and a key can do)."""
    import dataclasses

    from kiln.store.dsse import sign as dsse_sign

    env = Envelope.loads(data)
    extra = dsse_sign(env.payload, [Ed25519Signer(sk.key)], payload_type=env.payload_type)
    return dataclasses.replace(env, signatures=env.signatures + extra.signatures).dumps().encode()


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _prov(s: Setup, sk, finished: str) -> bytes:  # noqa: ANN001
    """A provenance of ``s.bare``'s real content signed by ``sk``, dated ``finished``."""
    st = intoto.parse_statement(provenance(s.store, s.bare, sk).payload)
    st.predicate["runDetails"]["metadata"]["finishedOn"] = finished
    return _signed(s, sk, st.predicate_type, st.predicate)


def _sbom(s: Setup, sk, note: str) -> bytes:  # noqa: ANN001
    doc = {"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1, "metadata": {"note": note}}
    return _signed(s, sk, intoto.CYCLONEDX_TYPE, doc)


def _signed(s: Setup, sk, ptype: str, predicate: dict) -> bytes:  # noqa: ANN001
    subject = [intoto.subject(StorePath.parse(s.bare).base, s.store.query(s.bare).nar_hash.hex)]
    env = attestations.sign(intoto.statement(subject, ptype, predicate), [Ed25519Signer(sk.key)])
    return env.dumps().encode()


def _served(s: Setup, kind: str) -> bytes | None:
    st, _, body = request(f"{s.url}/{s.hp(s.bare)}.att/{kind}.dsse.json")
    return body if st == 200 else None


def test_a_future_signed_time_is_refused(tmp_path, keys, other_keys, kiln_server) -> None:
    s = Setup(tmp_path, keys, kiln_server, "--attester-key", str(other_keys.pk_file))
    s.push(s.bare)
    for sk in (other_keys.sk, keys.sk):  # a rebuilder's, and even the builder's own
        code, body = s.put(s.bare, "provenance", _prov(s, sk, "2099-01-01T00:00:00Z"))
        assert code == 400 and b"2099-01-01T00:00:00Z is more than 5 minutes ahead" in body, body
    kind = attestations.vsa_kind(other_keys.pk.key)
    st = intoto.parse_statement(Envelope.loads(vsa(s.store, s.bare, other_keys.sk)).payload)
    st.predicate["timeVerified"] = "2099-01-01T00:00:00Z"
    code, body = s.put(s.bare, kind, _signed(s, other_keys.sk, st.predicate_type, st.predicate))
    assert code == 400 and b"ahead of this registry's clock" in body, body
    assert _served(s, "provenance") is None and _served(s, kind) is None
    # within the skew (another machine's clock a minute ahead) is fine, and the genuine
    # fresh one from the builder is admitted
    assert s.put(s.bare, "provenance", _prov(s, keys.sk, _stamp(time.time() + 60)))[0] == 201


def test_a_stored_future_dated_provenance_pins_nothing(tmp_path, keys, other_keys, kiln_server) -> None:
    """One admitted before the rule (planted on disk here) does not keep the builder's
    genuine one out; it still cannot be displaced by an attester-only key."""
    s = Setup(tmp_path, keys, kiln_server, "--attester-key", str(other_keys.pk_file))
    s.push(s.bare)
    storage = FileStorage(s.reg)
    storage.put_bytes(layout.att_key(s.hp(s.bare), "provenance"), _prov(s, keys.sk, "2099-01-01T00:00:00Z"))
    rebuild_listing(storage, s.hp(s.bare))
    code, body = s.put(s.bare, "provenance", _prov(s, other_keys.sk, _stamp(time.time())))
    assert code == 403, body
    fresh = _prov(s, keys.sk, _stamp(time.time()))
    code, body = s.put(s.bare, "provenance", fresh)
    assert code == 201, body
    assert _served(s, "provenance") == fresh


def test_an_attester_cannot_replace_the_builder_s_provenance_or_sbom(
    tmp_path, keys, other_keys, kiln_server
) -> None:
    s = Setup(tmp_path, keys, kiln_server, "--attester-key", str(other_keys.pk_file))
    s.push(s.bare)
    now = time.time()
    builders = _prov(s, keys.sk, _stamp(now - 60))
    assert s.put(s.bare, "provenance", builders)[0] == 201
    # a rebuilder's provenance, newer: refused, naming both signers
    code, body = s.put(s.bare, "provenance", _prov(s, other_keys.sk, _stamp(now)))
    assert code == 403 and b"signed by 'kiln-test-1'" in body and b"signed only by 'intruder-1'" in body, body
    assert _served(s, "provenance") == builders
    # SBOMs carry no time: before, any signer's replaced the current one
    sbom = _sbom(s, keys.sk, "builder")
    assert s.put(s.bare, "sbom", sbom)[0] == 201
    code, body = s.put(s.bare, "sbom", _sbom(s, other_keys.sk, "rebuilder"))
    assert code == 403 and b"--attester-key is for rebuilders' VSAs" in body, body
    assert _served(s, "sbom") == sbom
    # the builder itself may replace both (the provenance by a newer one only)
    newer = _prov(s, keys.sk, _stamp(now))
    assert s.put(s.bare, "provenance", newer)[0] == 201
    assert s.put(s.bare, "provenance", builders)[0] == 409  # (older: the age rule stands)
    assert s.put(s.bare, "sbom", _sbom(s, keys.sk, "builder, again"))[0] == 201
    # the rebuilder's VSA, what attester keys are for, is admitted
    assert (
        s.put(s.bare, attestations.vsa_kind(other_keys.pk.key), vsa(s.store, s.bare, other_keys.sk))[0] == 201
    )


def test_the_builder_s_provenance_replaces_an_attester_s(tmp_path, keys, other_keys, kiln_server) -> None:
    """An attester may still file a provenance where there is none (and replace its own),
    but it cannot pin it ahead of the builder's by dating it a few minutes on: a
    trusted key's replaces it whatever the times, and the attester cannot take it back."""
    s = Setup(tmp_path, keys, kiln_server, "--attester-key", str(other_keys.pk_file))
    s.push(s.bare)
    now = time.time()
    assert s.put(s.bare, "provenance", _prov(s, other_keys.sk, _stamp(now + 120)))[0] == 201
    own = _prov(s, other_keys.sk, _stamp(now + 180))
    assert s.put(s.bare, "provenance", own)[0] == 201  # its own: replaced by the age rule
    genuine = _prov(s, keys.sk, _stamp(now))
    code, body = s.put(s.bare, "provenance", genuine)
    assert code == 201, body
    assert s.put(s.bare, "provenance", own)[0] == 403
    assert _served(s, "provenance") == genuine


def test_a_directory_writer_gets_the_time_rule(tmp_path, keys, kiln_server) -> None:
    """``file://`` clients (``admit`` without keys: the caller owns the directory) are
    held to the clock too."""
    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.bare)
    storage = FileStorage(s.reg)
    code, msg = admit(
        storage, "/kiln/store", s.hp(s.bare), "provenance", _prov(s, keys.sk, "2099-01-01T00:00:00Z"), None
    )
    assert code == 400 and "ahead of this registry's clock" in msg, msg
    assert (
        admit(
            storage, "/kiln/store", s.hp(s.bare), "provenance", _prov(s, keys.sk, _stamp(time.time())), None
        )[0]
        == 201
    )


def test_an_attester_that_co_signed_the_builder_s_provenance_still_cannot_replace_it(
    tmp_path, keys, other_keys, kiln_server
) -> None:
    """A stored provenance is public: an attester could add its own signature over the
    same payload (accepted: the builder's is still on it) and so count as one of its
    signers, then replace it with one signed by itself alone."""
    s = Setup(tmp_path, keys, kiln_server, "--attester-key", str(other_keys.pk_file))
    s.push(s.bare)
    now = time.time()
    builders = _prov(s, keys.sk, _stamp(now - 600))
    assert s.put(s.bare, "provenance", builders)[0] == 201
    cosigned = _cosigned(builders, other_keys.sk)
    assert s.put(s.bare, "provenance", cosigned)[0] == 201  # (the builder's signature is on it)
    code, body = s.put(s.bare, "provenance", _prov(s, other_keys.sk, _stamp(now)))
    assert code == 403, body
    assert _served(s, "provenance") == cosigned
