"""verify_path against a real store: every failure mode named in issue 6 fails with the
right reason, and a fully attested path passes."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kiln.store import attestations, dsse, intoto, policy, sbom
from kiln.store.paths import StorePath
from kiln.store.signing import SecretKey, sign_info

FINISHED = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
NOW = FINISHED + timedelta(hours=1)


@pytest.fixture
def keys() -> dict[str, SecretKey]:
    return {n: SecretKey.generate(n) for n in ("cache", "cache2", "builder", "rb-a", "rb-b", "evil")}


def _signer(k: SecretKey) -> dsse.Ed25519Signer:
    return dsse.Ed25519Signer(k.key)


def _provenance(built, path: str, nar_hex: str | None = None, finished=FINISHED, **kw) -> dict:
    info = built.store.query(path)
    args = dict(
        recipe_file="recipes/hello.recipe",
        attribute="hello",
        parameters={},
        git_commit=None,
        git_dirty=False,
        sandbox_settings={"network": False},
        toolchain_path=None,
        resolved_dependencies=[{"name": StorePath.parse(built.zlib).base, "digest": {"sha256": "0" * 64}}],
        builder_version="0.1.0",
        invocation_id="test",
        started_on=finished - timedelta(minutes=5),
        finished_on=finished,
    )
    args.update(kw)
    return intoto.provenance(StorePath.parse(path).base, nar_hex or info.nar_hash.hex, **args)


def _vsa(built, path: str, passed: bool = True) -> dict:
    info = built.store.query(path)
    return intoto.vsa(
        StorePath.parse(path).base,
        info.nar_hash.hex,
        verifier_version="0.1.0",
        time_verified=FINISHED + timedelta(minutes=30),
        passed=passed,
        resource_uri=path,
    )


def _attest_all(built, keys) -> None:
    st, p = built.store, built.hello
    st.add_signatures(p, [sign_info(st.query(p), keys["cache"])])
    attestations.write(
        st, p, "provenance", attestations.sign(_provenance(built, p), [_signer(keys["builder"])])
    )
    bom = sbom.cyclonedx(sbom.collect(st, p))
    sb = intoto.statement(
        [intoto.subject(StorePath.parse(p).base, st.query(p).nar_hash.hex)], intoto.CYCLONEDX_TYPE, bom
    )
    attestations.write(st, p, "sbom", attestations.sign(sb, [_signer(keys["builder"])]))
    for rb in ("rb-a", "rb-b"):
        k = keys[rb]
        attestations.write(
            st, p, attestations.vsa_kind(k.public().key), attestations.sign(_vsa(built, p), [_signer(k)])
        )


def _policy(keys, extra: str = "", prov: str | None = None, **req) -> policy.Policy:
    r = {"signatures": 1, "provenance": "true", "sbom": "true", "reproduced": 2, "max_age": '"1d"'}
    r["builder_ids"] = f'["{intoto.BUILDER_LOCAL}"]'
    r.update(req)
    prov = prov or f'"{keys["builder"].public()}"'
    text = f"""
[keys]
signing = ["{keys["cache"].public()}", "{keys["cache2"].public()}"]
provenance = [{prov}]
rebuilders = ["{keys["rb-a"].public()}", "{keys["rb-b"].public()}"]
[require]
{chr(10).join(f"{k} = {v}" for k, v in r.items())}
{extra}
"""
    return policy.parse(text, source="test.toml")


def _fails(report: policy.Report) -> dict[str, str]:
    return {c.name: c.detail for c in report.failures()}


def test_everything_passes(built, keys) -> None:
    _attest_all(built, keys)
    r = policy.verify_path(built.store, built.hello, _policy(keys), now=NOW)
    assert r.ok, r.lines()
    assert [c.name for c in r.checks] == [
        "valid",
        "content",
        "tree",
        "signatures",
        "provenance",
        "build-parameters",
        "builder",
        "age",
        "sbom",
        "reproduced",
    ]  # fmt: skip  (each check prints a line, passed or not: build-parameters did only on failure)
    assert r.to_dict()["ok"] is True


def test_no_policy_checks_content_only(built) -> None:
    r = policy.verify_path(built.store, built.hello)
    assert r.ok
    assert {c.name for c in r.checks if c.skipped} == {"signatures", "provenance", "sbom", "reproduced"}


def test_missing_path(built) -> None:
    r = policy.verify_path(built.store, "/kiln/store/" + "0" * 32 + "-nothere")
    assert not r.ok and "not a valid path" in r.checks[0].detail


def _writable(p: Path) -> None:
    os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) | stat.S_IWUSR)


def test_tampered_object(built, keys) -> None:
    _attest_all(built, keys)
    obj = built.store.object_path(built.hello)
    _writable(obj)
    data = bytearray(obj.read_bytes())
    data[-8] ^= 0xFF
    obj.write_bytes(bytes(data))
    fails = _fails(policy.verify_path(built.store, built.hello, _policy(keys), now=NOW))
    assert set(fails) == {"content"}
    assert "does not match the recorded NAR hash" in fails["content"]


def test_tampered_tree(built, keys) -> None:
    _attest_all(built, keys)
    real = built.store.real_path(built.hello)
    _writable(real)
    _writable(real / "hello")
    (real / "hello").write_text("#!/bin/sh\necho pwned\n")
    fails = _fails(policy.verify_path(built.store, built.hello, _policy(keys), now=NOW))
    assert set(fails) == {"tree"}
    assert "modified" in fails["tree"]


def test_tampered_provenance(built, keys) -> None:
    _attest_all(built, keys)
    env = attestations.read(built.store, built.hello, "provenance")
    forged = env.payload.replace(b'"attribute":"hello"', b'"attribute":"evil"')
    assert forged != env.payload
    attestations.write(
        built.store, built.hello, "provenance", dsse.Envelope(env.payload_type, forged, env.signatures)
    )
    fails = _fails(policy.verify_path(built.store, built.hello, _policy(keys), now=NOW))
    assert set(fails) == {"provenance"}
    assert "no valid signature by a trusted key" in fails["provenance"]
    # whose it was, and why it did not count (it said only "1 signature(s) present")
    assert (
        "(1 signature(s) present: builder (a trusted key's keyid, but the signature does not verify"
        in fails["provenance"]
    ), fails


def test_provenance_by_untrusted_key(built, keys) -> None:
    _attest_all(built, keys)
    env = attestations.sign(_provenance(built, built.hello), [_signer(keys["evil"])])
    attestations.write(built.store, built.hello, "provenance", env)
    assert (
        "no valid signature"
        in _fails(policy.verify_path(built.store, built.hello, _policy(keys), now=NOW))["provenance"]
    )


def test_wrong_subject(built, keys) -> None:
    _attest_all(built, keys)
    zlib_hex = built.store.query(built.zlib).nar_hash.hex
    env = attestations.sign(_provenance(built, built.hello, nar_hex=zlib_hex), [_signer(keys["builder"])])
    attestations.write(built.store, built.hello, "provenance", env)
    fails = _fails(policy.verify_path(built.store, built.hello, _policy(keys), now=NOW))
    assert set(fails) == {"provenance"}
    assert "wrong subject" in fails["provenance"]
    # An attestation naming another path cannot even be stored under this one.
    other = attestations.sign(_provenance(built, built.zlib), [_signer(keys["builder"])])
    with pytest.raises(Exception, match="subject does not name it"):
        attestations.write(built.store, built.hello, "provenance", other)


def _revoke(keys, name: str, at: datetime, compromised: bool) -> str:
    return f"""
[[revoked]]
key = "{keys[name].public()}"
revoked_at = {at:%Y-%m-%dT%H:%M:%SZ}
compromised = {str(compromised).lower()}
reason = "test"
"""


def test_revoked_compromised_key_rejects_everything(built, keys) -> None:
    _attest_all(built, keys)
    # Revoked long after the build: still rejected, because the key was compromised.
    pol = _policy(keys, _revoke(keys, "builder", FINISHED + timedelta(days=300), True))
    fails = _fails(policy.verify_path(built.store, built.hello, pol, now=NOW))
    assert "compromised" in fails["provenance"] and "compromised" in fails["sbom"]
    pol = _policy(keys, _revoke(keys, "cache", FINISHED + timedelta(days=300), True))
    assert "compromised" in _fails(policy.verify_path(built.store, built.hello, pol, now=NOW))["signatures"]


def test_compromised_after_retired_wins(built, keys) -> None:
    # kiln key revoke appends: a key retired first and found compromised later has two
    # entries, and the stricter one decides whichever comes first in the file.
    _attest_all(built, keys)
    retired = _revoke(keys, "builder", FINISHED + timedelta(days=1), False)
    stolen = _revoke(keys, "builder", FINISHED + timedelta(days=300), True)
    for extra in (retired + stolen, stolen + retired):
        fails = _fails(policy.verify_path(built.store, built.hello, _policy(keys, extra), now=NOW))
        assert "compromised" in fails["provenance"]


def test_retired_key_counts_before_revocation_only(built, keys) -> None:
    _attest_all(built, keys)
    later = _policy(keys, _revoke(keys, "builder", FINISHED + timedelta(days=1), False), sbom="false")
    # Provenance (signed time before the revocation) still counts; the SBOM statement
    # carries no signed time, so the retired key's signature on it no longer does.
    fails = _fails(policy.verify_path(built.store, built.hello, later, now=NOW))
    assert set(fails) == {"sbom"} and "no signed time" in fails["sbom"]
    earlier = _policy(keys, _revoke(keys, "builder", FINISHED - timedelta(days=1), False), sbom="false")
    fails = _fails(policy.verify_path(built.store, built.hello, earlier, now=NOW))
    assert set(fails) == {"provenance", "sbom"} and "retired" in fails["provenance"]


def test_expired(built, keys) -> None:
    _attest_all(built, keys)
    fails = _fails(
        policy.verify_path(built.store, built.hello, _policy(keys), now=FINISHED + timedelta(days=2))
    )
    assert set(fails) == {"age"} and "expired" in fails["age"]


def test_below_threshold_signatures(built, keys) -> None:
    _attest_all(built, keys)
    info = built.store.query(built.hello)
    # The same key twice and an untrusted key do not make two.
    built.store.add_signatures(built.hello, [sign_info(info, keys["cache"]), sign_info(info, keys["evil"])])
    fails = _fails(policy.verify_path(built.store, built.hello, _policy(keys, signatures=2), now=NOW))
    assert set(fails) == {"signatures"} and "need 2" in fails["signatures"]
    assert "(not a trusted key)" in fails["signatures"] and "(valid)" in fails["signatures"], fails
    built.store.add_signatures(built.hello, [sign_info(info, keys["cache2"])])
    assert policy.verify_path(built.store, built.hello, _policy(keys, signatures=2), now=NOW).ok


def test_reproduced_needs_independent_rebuilders(built, keys) -> None:
    _attest_all(built, keys)
    p = built.hello
    k = keys["rb-b"]
    attestations.write(
        built.store,
        p,
        attestations.vsa_kind(k.public().key),
        attestations.sign(_vsa(built, p, passed=False), [_signer(k)]),
    )
    fails = _fails(policy.verify_path(built.store, p, _policy(keys), now=NOW))
    assert set(fails) == {"reproduced"} and "did NOT reproduce" in fails["reproduced"]
    # A rebuilder that is also the builder is not independent.
    text = _policy(keys).source
    assert text
    both = f"""
[keys]
provenance = ["{keys["builder"].public()}"]
rebuilders = ["{keys["builder"].public()}", "{keys["rb-a"].public()}"]
[require]
"""
    # two reproductions can never pass with only one key independent of the builder
    with pytest.raises(policy.PolicyError, match="1 independent of the provenance keys"):
        policy.parse(both + "reproduced = 2\n")
    pol = policy.parse(both + "reproduced = 1\n")
    kb = keys["builder"]
    attestations.write(
        built.store,
        p,
        attestations.vsa_kind(kb.public().key),
        attestations.sign(_vsa(built, p), [_signer(kb)]),
    )

    def reproduced() -> policy.Check:
        (c,) = [c for c in policy.verify_path(built.store, p, pol, now=NOW).checks if c.name == "reproduced"]
        return c

    # rb-a's rebuild counts; the builder's own VSA does not
    assert reproduced().ok and "not independent" in reproduced().detail and "rb-a" in reproduced().detail
    # ... also once its provenance is deleted: the policy trusts it for provenance
    os.unlink(attestations._dir(built.store, p) / "provenance.dsse.json")
    assert "not independent" in reproduced().detail


def test_a_rebuilders_latest_verdict_counts(built, keys) -> None:
    # An older PASSED envelope kept under another vsa-* name must not outvote the same
    # key's newer FAILED verdict.
    _attest_all(built, keys)
    p, k = built.hello, keys["rb-a"]
    old = _vsa(built, p, passed=True)
    old["predicate"]["timeVerified"] = "2020-01-01T00:00:00Z"
    attestations.write(built.store, p, "vsa-0ld", attestations.sign(old, [_signer(k)]))
    attestations.write(
        built.store,
        p,
        attestations.vsa_kind(k.public().key),
        attestations.sign(_vsa(built, p, passed=False), [_signer(k)]),
    )
    fails = _fails(policy.verify_path(built.store, p, _policy(keys), now=NOW))
    assert "latest verdict" in fails.get("reproduced", "")


def test_builder_id_not_allowed(built, keys) -> None:
    _attest_all(built, keys)
    env = attestations.sign(
        _provenance(built, built.hello, builder_id="https://evil.example/b"), [_signer(keys["builder"])]
    )
    attestations.write(built.store, built.hello, "provenance", env)
    fails = _fails(policy.verify_path(built.store, built.hello, _policy(keys), now=NOW))
    assert set(fails) == {"builder"}


CI = "https://ci.example/builders/v1"


def _bound(key: SecretKey, *ids: str) -> str:
    quoted = ", ".join(f'"{i}"' for i in ids)
    return f'{{ key = "{key.public()}", builder_ids = [{quoted}] }}'


@pytest.mark.parametrize(
    ("prov", "claimed", "ok"),
    [
        ("bound-local", intoto.BUILDER_LOCAL, True),
        ("bound-ci", intoto.BUILDER_LOCAL, False),  # the key may not claim the local builder
        ("bound-ci", CI, True),
    ],
)
def test_a_provenance_key_bound_to_builder_ids(built, keys, prov: str, claimed: str, ok: bool) -> None:
    """Trust is in the (key, builder id) pair: a key written with builder_ids stands
    behind provenance claiming those builders only."""
    _attest_all(built, keys)
    env = attestations.sign(_provenance(built, built.hello, builder_id=claimed), [_signer(keys["builder"])])
    attestations.write(built.store, built.hello, "provenance", env)
    entries = {
        "bound-local": _bound(keys["builder"], intoto.BUILDER_LOCAL),
        "bound-ci": _bound(keys["builder"], CI),
    }
    pol = _policy(keys, prov=entries[prov], builder_ids=f'["{intoto.BUILDER_LOCAL}", "{CI}"]')
    fails = _fails(policy.verify_path(built.store, built.hello, pol, now=NOW))
    if ok:
        assert fails == {}
    else:
        # and its SBOM signature does not count either: an SBOM names no builder
        assert set(fails) == {"provenance", "sbom"}
        assert "may only claim builder id(s) https://ci.example/builders/v1" in fails["provenance"]
        assert "not a signer of this path's valid provenance" in fails["sbom"]


def test_attestation_storage(built, keys) -> None:
    _attest_all(built, keys)
    kinds = attestations.list(built.store, built.hello)
    assert kinds[:2] == ["provenance", "sbom"] and len(kinds) == 4
    assert attestations.read(built.store, built.zlib, "provenance") is None
    assert set(attestations.read_all(built.store, built.hello)) == set(kinds)
    with pytest.raises(Exception, match="kind"):
        attestations.read(built.store, built.hello, "../x")
    attestations.remove(built.store, built.hello)
    assert attestations.list(built.store, built.hello) == []


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[require]\nsignaturs = 1\n", "unknown setting"),
        ("[require]\nmax_age = 'forever'\n", "max_age"),
        ("[require]\nsignatures = 1\n", "trusts 0 signing"),
        ("[require]\nprovenance = true\n", "no provenance key"),
        ("[keys]\nsigning = ['nope']\n", "neither a public key"),
        ("[[revoked]]\nkey = 'x'\n", "needs 'key' and 'revoked_at'"),
        ("not toml [", "invalid TOML"),
        ("[keys]\nsigning = [{ key = 'x', builder_ids = ['b'] }]\n", "only provenance keys can be bound"),
        ("[keys]\nprovenance = [{ key = 'x' }]\n", "needs 'key' and 'builder_ids'"),
        ("[keys]\nprovenance = [{ key = 'x', builder_ids = [] }]\n", "non-empty list"),
        ("[keys]\nprovenance = [{ key = 'x', builder_ids = ['b'], id = 1 }]\n", "unknown setting"),
    ],
)
def test_policy_errors(text: str, match: str) -> None:
    with pytest.raises(policy.PolicyError, match=match):
        policy.parse(text)


def test_a_key_both_bound_and_plain_is_refused(keys) -> None:
    """Listed plainly (here under another name) it could claim any id: the binding would
    be silently void."""
    k = keys["builder"].public()
    plain = f"other-name:{k.to_text().split(':', 1)[1]}"
    text = f"""
[keys]
provenance = [{_bound(keys["builder"], CI)}, "{plain}"]
"""
    with pytest.raises(policy.PolicyError, match="both bound to builder ids and plainly"):
        policy.parse(text)


def test_a_policy_whose_keys_can_never_claim_a_required_builder_id_is_refused(keys) -> None:
    text = f"""
[keys]
provenance = [{_bound(keys["builder"], CI)}]
[require]
builder_ids = ["{intoto.BUILDER_LOCAL}"]
"""
    with pytest.raises(policy.PolicyError, match="every provenance key is bound to other builder ids"):
        policy.parse(text)


def test_policy_key_files(tmp_path: Path, keys) -> None:
    (tmp_path / "cache.pub").write_text(keys["cache"].public().to_text())
    (tmp_path / "p.toml").write_text(
        '[keys]\nsigning = ["cache.pub"]\nprovenance = ["cache.pub"]\n[require]\nsignatures = 1\nmax_age = "2w"\n'
    )
    pol = policy.load(tmp_path / "p.toml")
    assert pol.signing == (keys["cache"].public(),)
    assert pol.max_age == timedelta(days=14)


def test_record_provenance_for_build(built, keys) -> None:
    """What the build loop does after registering an output."""
    SRC_URL = "https://ftp.example.org/gnu/hello/hello-2.12.tar.gz"  # as in conftest.py
    deps = attestations.build_dependencies(built.store, built.hello_drv)
    by_name = {d["name"]: d for d in deps}
    for p in (built.hello_drv, built.zlib, built.src):
        assert StorePath.parse(p).base in by_name
    assert by_name[StorePath.parse(built.src).base]["url"] == SRC_URL
    assert (
        by_name[StorePath.parse(built.zlib).base]["digest"]["sha256"]
        == built.store.query(built.zlib).nar_hash.hex
    )
    attestations.record_provenance(
        built.store,
        built.hello,
        [_signer(keys["builder"])],
        recipe_file="recipes/hello.recipe",
        attribute="hello",
        parameters={},
        git_commit=None,
        git_dirty=True,
        sandbox_settings={"network": False},
        toolchain_path=None,
        resolved_dependencies=deps,
        builder_version="0.1.0",
        invocation_id="inv",
        started_on=FINISHED,
        finished_on=FINISHED,
    )
    pol = policy.parse(f'[keys]\nprovenance = ["{keys["builder"].public()}"]\n[require]\nprovenance = true\n')
    r = policy.verify_path(built.store, built.hello, pol, now=NOW)
    assert r.ok, r.lines()
    st = intoto.parse_statement(attestations.read(built.store, built.hello, "provenance").payload)
    uris = [d.get("uri") for d in st.predicate["buildDefinition"]["resolvedDependencies"]]
    assert SRC_URL in uris


def test_build_hook_provenance_verifies(built, keys) -> None:
    """What ``kiln build --sign-key`` writes (cli/buildprov.py) passes verify_path."""
    from kiln.buildprov import ProvenanceHook
    from kiln.store.drvparse import parse as parse_drv

    drv = parse_drv(built.store.real_path(built.hello_drv).read_text(), "hello-2.12")
    hook = ProvenanceHook(
        store=built.store,
        key=keys["builder"],
        recipe_file="recipes/hello.recipe",
        attrs_by_drv={built.hello_drv: "hello"},
        git_commit=None,
        git_dirty=False,
        cores=1,
        isolation={"executor": "bubblewrap", "namespaces": ["user", "net"]},
    )
    hook(built.hello_drv, drv, {"out": built.hello}, FINISHED.timestamp() - 60, FINISHED.timestamp())
    b = keys["builder"].public()
    pol = policy.parse(
        f'[keys]\nsigning = ["{b}"]\nprovenance = ["{b}"]\n[require]\nsignatures = 1\nprovenance = true\n'
        f'builder_ids = ["{intoto.BUILDER_LOCAL}"]\nmax_age = "1d"\n'
    )
    r = policy.verify_path(built.store, built.hello, pol, now=NOW)
    assert r.ok, r.lines()


def test_sign_path_with_external_signer(built, keys, tmp_path: Path) -> None:
    import sys

    from kiln.store.keyfiles import write_secret_key

    secret = tmp_path / "hsm.sec"
    write_secret_key(secret, keys["cache"])
    script = tmp_path / "signer.py"
    script.write_text(
        "import sys\nfrom kiln.store.keyfiles import load_secret_key\n"
        f"k = load_secret_key({str(secret)!r})\n"
        "sys.stdout.write(k.sign(sys.stdin.buffer.read()).split(':', 1)[1])\n"
    )
    name, signer = attestations.load_named_signer(
        signer_cmd=f"{sys.executable} {script}", signer_public=keys["cache"].public().to_text()
    )
    sig = attestations.sign_path(built.store, built.hello, name, signer)
    assert sig == sign_info(built.store.query(built.hello), keys["cache"])  # ed25519 is deterministic
    pol = policy.parse(f'[keys]\nsigning = ["{keys["cache"].public()}"]\n[require]\nsignatures = 1\n')
    assert policy.verify_path(built.store, built.hello, pol).ok


def test_a_secret_key_pasted_as_a_public_key_is_never_echoed(keys, tmp_path) -> None:
    secret = keys["cache"].to_text().strip()
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(f'[keys]\nsigning = ["{secret}"]\n')
    assert "secret key or part of one (not shown" in str(e.value) and secret.split(":")[1] not in str(e.value)
    from kiln.keyrotate import revoke

    with pytest.raises(policy.PolicyError) as e:
        revoke(tmp_path / "p.toml", secret, True, "stolen", None)
    assert secret.split(":")[1] not in str(e.value) and not (tmp_path / "p.toml").exists()
    # a public key with TOML in it cannot inject entries
    with pytest.raises(policy.PolicyError):
        revoke(tmp_path / "p.toml", 'a:b"\n[[revoked]]\nkey = "x', True, "", None)


def test_a_vsa_by_a_compromised_rebuilder_key_fails_even_when_not_required(built, keys) -> None:
    # a detector: the compromised key's VSA fails the check (docs/security.md), as its
    # provenance or SBOM would, instead of being a note beside a PASS
    _attest_all(built, keys)
    stolen = _revoke(keys, "rb-b", FINISHED - timedelta(days=1), True)
    for reproduced in (1, 0):
        pol = _policy(keys, stolen, reproduced=reproduced)
        fails = _fails(policy.verify_path(built.store, built.hello, pol, now=NOW))
        assert set(fails) == {"reproduced"} and "compromised" in fails["reproduced"], fails


def test_an_invalid_vsa_fails_if_a_known_key_signed_it_and_is_noted_otherwise(built, keys) -> None:
    _attest_all(built, keys)
    p = built.hello
    wrong = _vsa(built, p)
    wrong["subject"][0]["digest"]["sha256"] = "0" * 64
    # by a stranger: not evidence either way, only noted
    attestations.write(
        built.store, p, "vsa-stranger", attestations.sign(_vsa(built, p), [_signer(keys["evil"])])
    )
    report = policy.verify_path(built.store, p, _policy(keys), now=NOW)
    assert report.ok and "vsa-stranger" in next(c.detail for c in report.checks if c.name == "reproduced")
    # by a rebuilder the policy trusts, but for other content: fails
    envelope = attestations.sign(wrong, [_signer(keys["rb-a"])])
    d = attestations._dir(built.store, p)
    (d / "vsa-misfiled.dsse.json").write_text(envelope.dumps())
    fails = _fails(policy.verify_path(built.store, p, _policy(keys), now=NOW))
    assert set(fails) == {"reproduced"} and "vsa-misfiled" in fails["reproduced"], fails


def test_a_revocation_time_with_an_offset_is_kept_and_shown_in_utc() -> None:
    """``revoked_at = 2026-01-01T00:00:00+02:00`` was shown as ``...00:00:00Z`` (the local
    time with a Z); one out of range in UTC was shown with a wrong year."""
    from kiln.store.policy import PolicyError
    from kiln.store.policyfile import parse
    from kiln.store.signing import SecretKey

    pk = SecretKey.generate("a-1").public().to_text()
    text = f'[keys]\nsigning = ["{pk}"]\n[[revoked]]\nkey = "{pk}"\nrevoked_at = '
    (r,) = parse(text + "2026-01-01T00:00:00+02:00\n").revoked
    assert "at 2025-12-31T22:00:00Z" in r.describe()
    for far in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"):
        with pytest.raises(PolicyError, match="out of range in UTC"):
            parse(text + far + "\n")
