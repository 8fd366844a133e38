"""``kiln push`` fails (exit 1) when the registry refuses an attestation for its signed time:
provenance signed by a builder whose clock is ten minutes ahead (``attest_rules.future_problem``:
400, "more than 5 minutes ahead of this registry's clock"). The path and the index are still
published, the refused provenance is named, and the hint points at the clock. It exited 0,
printing "0 attestations" and a warning, and the path was published without provenance."""

from __future__ import annotations

import time

from attestkit import signed_provenance
from regkit import add_built, request
from test_attestations import Setup, provenance

from kiln.store import attestations


def test_push_of_provenance_signed_ahead_of_the_registry_clock_exits_1(tmp_path, keys, kiln_server) -> None:
    s = Setup(tmp_path, keys, kiln_server)
    ahead = add_built(s.store, tmp_path, "ahead", "built on a machine whose clock is fast")
    attestations.write(
        s.store, ahead, "provenance", signed_provenance(s.store, ahead, keys.sk, finished=time.time() + 600)
    )
    r = s.push(s.app, ahead, expect=1)
    assert f"error: the registry refused the attestation {ahead} provenance" in r.stderr, r.stderr
    assert "more than 5 minutes ahead of this registry's clock" in r.stderr, r.stderr
    assert "check this machine's clock (NTP)" in r.stderr, r.stderr
    assert "error: the registry refused 1 attestation(s)" in r.stderr, r.stderr
    # everything else was done: both paths, app's provenance and the index are published
    assert "pushed 3 of 3 paths" in r.stdout and "index" in r.stdout, r.stdout
    assert request(f"{s.url}/{s.hp(ahead)}.narinfo")[0] == 200
    assert request(f"{s.url}/{s.hp(s.app)}.att/provenance.dsse.json")[0] == 200
    assert request(f"{s.url}/{s.hp(ahead)}.att/provenance.dsse.json")[0] == 404

    # once re-signed with a right clock, the push goes through and exits 0
    attestations.write(s.store, ahead, "provenance", provenance(s.store, ahead, keys.sk))
    r = s.push(ahead)
    assert "error" not in r.stderr, r.stderr
    assert request(f"{s.url}/{s.hp(ahead)}.att/provenance.dsse.json")[0] == 200
