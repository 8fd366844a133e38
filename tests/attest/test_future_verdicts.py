"""``reproduced`` fails closed on verdicts dated in the future (``policyeval._reproduced``).

A future signed time is not believed. Ignoring a future-dated *FAILED* let the same key's
older PASSED count: a rebuilder whose clock ran ten minutes fast signed FAILED, and verify
went on counting its earlier PASSED (kept under another name, as a replay or a stale copy
keeps one). Now a future FAILED counts as the key's newest verdict (as of now, at the
newest time a believed verdict can carry: nothing of that key is newer), while a future
PASSED is still ignored. Real verdicts: in-toto VSAs signed by the rebuilder keys."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_verify import NOW, _attest_all, _policy, _signer, _vsa

from kiln.store import attestations, policy
from kiln.store.intoto import rfc3339
from kiln.store.signing import SecretKey


@pytest.fixture
def keys() -> dict[str, SecretKey]:
    """The keys ``test_verify``'s helpers expect."""
    return {n: SecretKey.generate(n) for n in ("cache", "cache2", "builder", "rb-a", "rb-b", "evil")}


def _file(built, key, kind: str, passed: bool, when) -> None:  # noqa: ANN001
    st = _vsa(built, built.hello, passed=passed)
    st["predicate"]["timeVerified"] = rfc3339(when)
    attestations.write(built.store, built.hello, kind, attestations.sign(st, [_signer(key)]))


def _reproduced(built, keys) -> policy.Check:  # noqa: ANN001
    r = policy.verify_path(built.store, built.hello, _policy(keys), now=NOW)
    (c,) = [c for c in r.checks if c.name == "reproduced"]
    return c


def test_a_future_failed_verdict_counts_over_the_keys_older_passed(built, keys) -> None:
    _attest_all(built, keys)
    k = keys["rb-a"]
    assert _reproduced(built, keys).ok  # rb-a and rb-b both passed
    _file(built, k, "vsa-0ld", True, NOW - timedelta(days=1))  # rb-a's older PASSED, kept
    _file(built, k, attestations.vsa_kind(k.public().key), False, NOW + timedelta(minutes=10))
    c = _reproduced(built, keys)
    assert not c.ok, c.detail
    assert "rb-a reports the rebuild did NOT reproduce" in c.detail, c.detail
    assert "FAILED verified in the future" in c.detail and "counted as of now" in c.detail, c.detail
    # dated years ahead, the same
    _file(built, k, attestations.vsa_kind(k.public().key), False, NOW + timedelta(days=3650))
    assert not _reproduced(built, keys).ok


def test_a_future_failed_beats_a_passed_just_within_the_skew(built, keys) -> None:
    _attest_all(built, keys)
    k = keys["rb-a"]
    _file(built, k, "vsa-0ld", True, NOW + timedelta(minutes=4))  # believed (within 5 minutes)
    _file(built, k, attestations.vsa_kind(k.public().key), False, NOW + timedelta(minutes=10))
    c = _reproduced(built, keys)
    assert not c.ok and "rb-a reports the rebuild did NOT reproduce" in c.detail, c.detail


def test_a_future_passed_verdict_is_still_ignored(built, keys) -> None:
    _attest_all(built, keys)
    k = keys["rb-a"]
    _file(built, k, attestations.vsa_kind(k.public().key), True, NOW + timedelta(minutes=10))
    c = _reproduced(built, keys)
    assert not c.ok and "verified in the future" in c.detail and "ignored" in c.detail, c.detail
    assert "(rb-b)" in c.detail, c.detail  # only rb-b counts
