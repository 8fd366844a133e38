"""The compromised-key alarm catches every valid signature by a compromised key
(docs/security.md: "a valid signature by a compromised key fails everything it is on"):
under another key's name on a path, and on attestations of a role the policy trusts no
key for. And ``[require] reproduced_max_age`` bounds the age of the VSAs counted for
``reproduced``, so a stale source replaying an older genuine PASSED verdict fails."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_verify import FINISHED, NOW, _attest_all, _fails, _policy, _revoke, _signer, _vsa

from kiln.store import attestations, policy
from kiln.store.signing import SecretKey, sign_info


@pytest.fixture
def keys() -> dict[str, SecretKey]:
    """As test_verify's: the names its ``_policy`` and ``_attest_all`` use."""
    return {n: SecretKey.generate(n) for n in ("cache", "cache2", "builder", "rb-a", "rb-b", "evil")}


def _stolen(keys, name: str) -> str:
    return _revoke(keys, name, FINISHED + timedelta(days=300), True)


@pytest.mark.parametrize("alias", ["cache", "innocent-1"])
def test_a_stolen_key_signing_a_path_under_another_name_fails(built, keys, alias: str) -> None:
    """The name in a ``Sig:`` line is not signed: the thief signs as ``cache`` (whose real
    signature is there too) or as anyone; the signature is still the stolen key's."""
    _attest_all(built, keys)
    pol = _policy(keys, _stolen(keys, "evil"))
    assert policy.verify_path(built.store, built.hello, pol, now=NOW).ok
    info = built.store.query(built.hello)
    forged = sign_info(info, SecretKey(alias, keys["evil"].key))
    assert forged.startswith(f"{alias}:")
    built.store.add_signatures(built.hello, [forged])
    fails = _fails(policy.verify_path(built.store, built.hello, pol, now=NOW))
    assert set(fails) == {"signatures"}, fails
    assert "'evil' revoked (compromised)" in fails["signatures"]
    assert f"its signature names {alias!r}" in fails["signatures"]


def test_a_compromised_key_fails_attestations_of_a_role_the_policy_trusts_no_key_for(built, keys) -> None:
    """A policy listing no provenance keys skips provenance and SBOM, but a provenance or
    SBOM that a compromised key signed still fails them."""
    _attest_all(built, keys)  # provenance and SBOM signed by "builder"
    text = f'[keys]\nsigning = ["{keys["cache"].public()}"]\n[require]\nsignatures = 1\n'
    quiet = policy.parse(text)
    r = policy.verify_path(built.store, built.hello, quiet, now=NOW)
    assert r.ok and {c.name for c in r.checks if c.skipped} >= {"provenance", "sbom"}
    alarmed = policy.parse(text + _stolen(keys, "builder"))
    fails = _fails(policy.verify_path(built.store, built.hello, alarmed, now=NOW))
    assert set(fails) == {"provenance", "sbom"}, fails
    assert all("'builder' revoked (compromised)" in d for d in fails.values())
    # a retired (not compromised) key's attestation is no alarm: still only skipped
    retired = policy.parse(text + _revoke(keys, "builder", FINISHED + timedelta(days=1), False))
    assert policy.verify_path(built.store, built.hello, retired, now=NOW).ok


def _vsa_at(built, keys, name: str, when, passed: bool = True) -> None:
    k = keys[name]
    st = _vsa(built, built.hello, passed=passed)
    if when is None:
        del st["predicate"]["timeVerified"]
    else:
        st["predicate"]["timeVerified"] = f"{when:%Y-%m-%dT%H:%M:%SZ}"
    attestations.write(
        built.store, built.hello, attestations.vsa_kind(k.public().key), attestations.sign(st, [_signer(k)])
    )


def test_reproduced_max_age_refuses_a_replayed_old_verdict(built, keys) -> None:
    _attest_all(built, keys)
    later = FINISHED + timedelta(days=10)
    # what a stale mirror serves: rb-a's genuine PASSED verdict from ten days ago (rb-a
    # has since re-verified, perhaps FAILED, but this source never got that)
    _vsa_at(built, keys, "rb-b", later - timedelta(hours=1))
    unbounded = _policy(keys, max_age='"30d"')
    assert policy.verify_path(built.store, built.hello, unbounded, now=later).ok
    bounded = _policy(keys, max_age='"30d"', reproduced_max_age='"7d"')
    assert bounded.reproduced_max_age == timedelta(days=7)
    fails = _fails(policy.verify_path(built.store, built.hello, bounded, now=later))
    assert set(fails) == {"reproduced"}, fails
    assert "rb-a's latest verdict was verified" in fails["reproduced"]
    assert "older than reproduced_max_age 7 days" in fails["reproduced"]
    assert "reproduced by 1 independent rebuilder(s) (rb-b), need 2" in fails["reproduced"]
    # re-attested within the window: counts again
    _vsa_at(built, keys, "rb-a", later - timedelta(days=2))
    assert policy.verify_path(built.store, built.hello, bounded, now=later).ok
    # an undated PASSED verdict has no age to check: it does not count
    _vsa_at(built, keys, "rb-a", None)
    fails = _fails(policy.verify_path(built.store, built.hello, bounded, now=later))
    assert "rb-a's latest verdict is undated" in fails["reproduced"]


@pytest.mark.parametrize(
    ("req", "match"),
    [
        ("reproduced = 1\nreproduced_max_age = 'forever'", "reproduced_max_age must be a positive duration"),
        ("reproduced = 1\nreproduced_max_age = 0", "reproduced_max_age must be a positive duration"),
        ("reproduced = 1\nreproduced_max_age = true", "reproduced_max_age must be a positive duration"),
        ("reproduced_max_age = '30d'", r"requires no reproduction \(reproduced = 0\)"),
    ],
)
def test_reproduced_max_age_is_parsed_strictly(keys, req: str, match: str) -> None:
    text = f'[keys]\nrebuilders = ["{keys["rb-a"].public()}"]\n[require]\n{req}\n'
    with pytest.raises(policy.PolicyError, match=match):
        policy.parse(text)
    ok = policy.parse(
        f'[keys]\nrebuilders = ["{keys["rb-a"].public()}"]\n[require]\nreproduced = 1\n'
        "reproduced_max_age = 3600\n"
    )
    assert ok.reproduced_max_age == timedelta(hours=1)
