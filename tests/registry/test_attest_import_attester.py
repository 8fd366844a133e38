"""``kiln copy --attester-key PUB``: with one key for path signatures and another for
provenance (as docs/security.md advises), ``--trusted-key BUILD.pub`` alone skipped the
provenance and SBOM the other key signed, and ``kiln verify`` then found them missing.
An attester key is trusted for attestations only, never for paths, with ``kiln serve
--attester-key``'s rule: a provenance or SBOM only attesters signed replaces no local one
a trusted key (or the store's own) signed, nor one another attester signed
(``registry.attest_fetch``). Real ``file://`` registries and stores, the real CLI."""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import pytest
from attestkit import signed_provenance
from regkit import Keys, kiln
from test_attest_import_tamper import TAMPERING, Media

from kiln.registry.attest_fetch import fetch_attestations_sync
from kiln.registry.attest_transfer import AttestationError, rebuild_listing
from kiln.registry.storage import FileStorage
from kiln.store import attestations
from kiln.store.dsse import keyid
from kiln.store.localstore import LocalStore


@pytest.fixture(autouse=True)
def _to_store_takes_attesters() -> None:
    from kiln.registry.copy import to_store

    assert "attesters" in inspect.signature(to_store).parameters, (
        "registry/copy.py: to_store(..., attesters=...) must pass them to fetch_attestations "
        "(the change the attest-fix report describes)"
    )


def _policy(tmp: Path, build: Keys, prov: Keys) -> Path:
    p = tmp / "policy.toml"
    p.write_text(
        f'[keys]\nsigning = ["{build.pk_file}"]\nprovenance = ["{prov.pk_file}"]\n'
        "[require]\nsignatures = 1\nprovenance = true\nsbom = true\n"
    )
    return p


def _verify(dest: Path, path: str, policy: Path):  # noqa: ANN202 - CompletedProcess
    return kiln("verify", path, "--closure", "--policy", str(policy), env={"KILN_HOME": str(dest)})


def test_attester_keys_admit_attestations_not_paths(tmp_path: Path) -> None:
    build, prov = Keys(tmp_path, "build-1"), Keys(tmp_path, "prov-1")
    m = Media(tmp_path, build, prov)
    policy = _policy(tmp_path, build, prov)
    # before: the PROV-signed provenance and SBOM skipped, and the policy then fails
    r = m.copy(tmp_path / "a", "--trusted-key", str(build.pk_file))
    assert r.returncode == 0 and "provenance: not signed by a trusted key" in r.stderr, r.stderr
    assert _verify(tmp_path / "a", m.app, policy).returncode == 1
    # --attester-key: both stored, no warning, the policy passes
    r = m.copy(tmp_path / "b", "--trusted-key", str(build.pk_file), "--attester-key", str(prov.pk_file))
    assert r.returncode == 0 and "skipped" not in r.stderr, r.stderr
    with LocalStore.open(tmp_path / "b") as st:
        assert attestations.list(st, m.app) == ["provenance", "sbom"]
        assert attestations.read(st, m.app, "sbom") == attestations.read(m.store, m.app, "sbom")
    v = _verify(tmp_path / "b", m.app, policy)
    assert v.returncode == 0, v.stdout + v.stderr
    # an attester key is no path signer: the paths BUILD signed are refused under it
    r = m.copy(tmp_path / "c", "--trusted-key", str(prov.pk_file), "--attester-key", str(build.pk_file))
    assert r.returncode == 1, r.stderr
    with LocalStore.open(tmp_path / "c") as st:
        assert not st.is_valid(m.app)
    # between registries the destination judges attestations by its own keys
    r = kiln(
        "copy",
        "--from",
        m.url,
        "--to",
        f"file://{tmp_path / 'r2'}",
        m.app,
        "--attester-key",
        str(prov.pk_file),
    )
    assert r.returncode == 2 and "--attester-key needs --to store" in r.stderr, r.stderr


@pytest.mark.parametrize("how", ["signature", "forged"])
def test_a_signature_in_an_attester_s_name_that_does_not_verify_is_tampering(
    tmp_path: Path, how: str
) -> None:
    build, prov = Keys(tmp_path, "build-1"), Keys(tmp_path, "prov-1")
    m = Media(tmp_path, build, prov)
    m.edit("provenance", lambda env: TAMPERING[how](env) if how == "signature" else _forge_provenance(env))
    r = m.copy(tmp_path / "d", "--trusted-key", str(build.pk_file), "--attester-key", str(prov.pk_file))
    assert r.returncode == 1, r.stderr
    kid = keyid(prov.pk.key)[:16]
    assert (
        f"{m.app} provenance: tampered with: its signature in the name of attester key 'prov-1' (keyid {kid}"
        in (r.stderr)
    ), r.stderr
    with LocalStore.open(tmp_path / "d") as st:
        assert st.is_valid(m.app) and attestations.list(st, m.app) == ["sbom"]


def _forge_provenance(env: dict) -> None:
    """``TAMPERING["forged"]`` for a provenance (whose predicate has no ``metadata``)."""
    import base64
    import json

    from kiln.store.dsse import Ed25519Signer
    from kiln.store.signing import SecretKey

    claimed = env["signatures"][0]["keyid"]
    st = json.loads(base64.b64decode(env["payload"]))
    st["predicate"]["buildDefinition"]["externalParameters"]["forged"] = True
    forged = attestations.sign(st, [Ed25519Signer(SecretKey.generate("prov-1").key)]).to_dict()
    forged["signatures"][0]["keyid"] = claimed
    env.clear()
    env.update(forged)


def test_an_attester_s_provenance_replaces_only_its_own_as_kiln_serve(tmp_path: Path) -> None:
    """As ``kiln serve --attester-key`` (``attest_rules``): over a local provenance a
    trusted key signed, or another attester alone, an attester's (even newer) is
    skipped; over its own older one it is stored; and a trusted key's replaces an
    attester's whatever their times."""
    build, prov, other = Keys(tmp_path, "build-1"), Keys(tmp_path, "prov-1"), Keys(tmp_path, "other-1")
    m = Media(tmp_path, build, prov)  # the media's provenance: PROV's, made now
    dest = tmp_path / "e"
    assert m.copy(dest, "--trusted-key", str(build.pk_file)).returncode == 0  # the paths, no attestations
    old = time.time() - 3600

    def fetch(local_by: Keys, when: float) -> bytes:
        with LocalStore.open(dest) as st:
            attestations.write(
                st, m.app, "provenance", signed_provenance(st, m.app, local_by.sk, finished=when)
            )
            fetch_attestations_sync(m.url, st, [m.app], trusted=[build.pk], attesters=[prov.pk, other.pk])
            return attestations.read(st, m.app, "provenance").dumps().encode()

    media = m.att("provenance").read_bytes()
    for local_by in (build, other):  # older than the media's, and still kept
        got = fetch(local_by, old)
        assert got != media and keyid(local_by.pk.key) in got.decode()
    assert fetch(prov, old) == media  # its own older one: the age rule lets it through
    # the media's provenance signed by BUILD, older than a local one PROV alone signed: stored
    with LocalStore.open(dest) as st:
        builder_s = signed_provenance(st, m.app, build.sk, finished=old - 60).dumps().encode()
    m.att("provenance").write_bytes(builder_s)
    rebuild_listing(FileStorage(m.reg), m.hp())
    assert fetch(prov, time.time()) == builder_s


def test_the_library_call_reports_tampering_in_an_attester_s_name(tmp_path: Path) -> None:
    """``fetch_attestations_sync(attesters=...)``: the untampered SBOM is stored, then
    ``AttestationError`` says "tampering found" (as the copy does)."""
    build, prov = Keys(tmp_path, "build-1"), Keys(tmp_path, "prov-1")
    m = Media(tmp_path, build, prov)
    dest = tmp_path / "f"
    assert m.copy(dest, "--trusted-key", str(build.pk_file)).returncode == 0
    m.edit("provenance", TAMPERING["signature"])
    with LocalStore.open(dest) as st, pytest.raises(AttestationError, match="tampering found") as e:
        fetch_attestations_sync(m.url, st, [m.app], trusted=[build.pk], attesters=[prov.pk])
    assert "attester key 'prov-1'" in str(e.value)
    with LocalStore.open(dest) as st:
        assert attestations.list(st, m.app) == ["sbom"]
