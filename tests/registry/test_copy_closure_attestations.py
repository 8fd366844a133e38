"""``kiln copy --to store`` brings the attestations of the whole closures asked for, of
paths the store held already too (``registry/copy.py``).

Before, only the copied and the named paths' attestations were fetched: after a
publisher re-signed a dependency's SBOM or provenance (a key rotation), a store that had
copied the closure before kept the old envelope of every dependency, and a policy
trusting only the new key failed on them, although the registry served the new ones."""

from __future__ import annotations

import time

from regkit import kiln
from test_attest_trust import _copy
from test_attestations import Setup

from kiln.store import attestations, intoto
from kiln.store.dsse import Ed25519Signer
from kiln.store.localstore import LocalStore
from kiln.store.paths import StorePath


def test_a_dependency_s_re_signed_attestation_reaches_a_store_that_held_it(tmp_path, keys, kiln_server):
    s = Setup(tmp_path, keys, kiln_server)
    s.attest_dep()
    s.push(s.app)
    d = tmp_path / "d"
    code, err = _copy(s, d, keys)
    assert code == 0, err
    with LocalStore.open(d) as other:
        assert attestations.read(other, s.dep, "provenance") == attestations.read(
            s.store, s.dep, "provenance"
        )
    # the publisher re-signs dep's provenance (a later statement) and pushes again
    st = intoto.parse_statement(attestations.read(s.store, s.dep, "provenance").payload)
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))  # (registries allow 5 min)
    st.predicate["runDetails"]["metadata"]["finishedOn"] = later
    subject = [intoto.subject(StorePath.parse(s.dep).base, s.store.query(s.dep).nar_hash.hex)]
    newer = attestations.sign(
        intoto.statement(subject, st.predicate_type, st.predicate), [Ed25519Signer(keys.sk.key)]
    )
    attestations.write(s.store, s.dep, "provenance", newer)
    s.push(s.app)
    # copying app again (both valid here already): dep's new provenance arrives
    code, err = _copy(s, d, keys)
    assert code == 0, err
    with LocalStore.open(d) as other:
        assert attestations.read(other, s.dep, "provenance") == newer
    r = kiln("store", "verify", "--store", str(d))
    assert r.returncode == 0, r.stdout + r.stderr
