"""A rebuilder key's verdict never turns PASSED without evidence (``store/vsareplace.py``,
``cli/rebuildverdict.py``).

Audit findings fixed here:

- a ``kiln rebuild --vary`` that signed FAILED (the output depends on ``KILN_CORES``) was
  replaced by a later plain ``kiln rebuild`` by the same key with PASSED, silently, and
  ``kiln verify --policy`` then passed ``reproduced``: now the PASSED is refused (warned,
  nothing signed) and the FAILED stays; a PASSED made varying at least as much replaces it,
  with a notice;
- a rebuild that did not build (here: the builder fails under ``--vary``'s umask 077, as a
  time bomb fails under its clock shift) signed nothing, so the key's older PASSED stayed
  its latest verdict: now it signs FAILED, saying the rebuild failed to build.

Everything runs for real: bubblewrap sandboxes, stores, the ``kiln`` command.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from rbkit import Keys, needs_bwrap

from kiln.store import attestations, dsse, intoto
from kiln.store.build import BuildError
from kiln.store.vsareplace import VerdictKept

pytestmark = needs_bwrap

#: fails when the umask is --vary's 077, builds (the same bytes every time) otherwise
UMASK_BOMB = (
    'if [ "$(umask)" = 0077 ]; then echo "refusing to build under umask 077" >&2; exit 3; fi; echo ok > $out'
)


def _policy_file(tmp_path: Path, keys: Keys) -> str:
    f = tmp_path / "policy.toml"
    f.write_text(f'[keys]\nrebuilders = ["{keys.pk.to_text()}"]\n[require]\nreproduced = 1\n')
    return str(f)


def _stored(store, path: str, keys: Keys) -> tuple[bytes, dict]:
    f = attestations.file_of(store, path, attestations.vsa_kind(keys.pk.key))
    data = f.read_bytes()
    return data, intoto.parse_statement(dsse.Envelope.loads(data).payload).predicate


def test_a_plain_pass_does_not_replace_a_failed_made_under_vary(store, graph, kiln, rebuilder_keys, tmp_path):
    drv, out = graph.drv("cores-dep", "mkdir $out; echo $KILN_CORES > $out/cores")
    kiln("build", drv)
    key = str(rebuilder_keys.sk_file)
    kiln("rebuild", out, "--key", key, "--vary", expect=1)
    before, pred = _stored(store, out, rebuilder_keys)
    assert pred["verificationResult"] == "FAILED" and "umask=077" in pred["kiln_rebuild"]["varied"]

    # the plain rebuild reproduces (same KILN_CORES as the build), but records nothing
    r = kiln("rebuild", out, "--key", key)
    assert f"{out}: reproduced" in r.stdout, r.stdout
    assert "no verification summary signed: this key's FAILED verdict stays" in r.stdout, r.stdout
    assert "warning:" in r.stderr and "this PASSED verdict was not recorded" in r.stderr, r.stderr
    assert "varied nothing (a plain rebuild)" in r.stderr and "rebuild with --vary" in r.stderr, r.stderr
    assert _stored(store, out, rebuilder_keys)[0] == before  # the very same FAILED envelope

    # the policy sees the FAILED as the key's latest verdict
    v = kiln("verify", out, "--policy", _policy_file(tmp_path, rebuilder_keys), expect=1)
    assert "FAIL reproduced" in v.stdout and "did NOT reproduce" in v.stdout, v.stdout

    # --json says the same: reproduced, but no VSA, and why
    (o,) = json.loads(kiln("rebuild", out, "--key", key, "--json").stdout)["outputs"]
    assert o["reproduced"] is True and o["vsa"] is None and "FAILED verdict stays" in o["not_recorded"]


def test_a_pass_made_varying_as_much_replaces_a_failed_and_says_so(store, graph, kiln, rebuilder_keys):
    drv, out = graph.drv("steady-again", "mkdir $out; echo same > $out/f")
    kiln("build", drv)
    key = str(rebuilder_keys.sk_file)
    kiln("rebuild", out, "--key", key, "--vary")  # what --vary varies on this machine
    labels = _stored(store, out, rebuilder_keys)[1]["kiln_rebuild"]["varied"]
    signer = dsse.Ed25519Signer(rebuilder_keys.sk.key)
    earlier = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=30)

    def failed_earlier(varied: list[str] | None) -> None:  # a fluke FAILED, signed by the same key
        attestations.record_vsa(
            store, out, signer, passed=False, verifier_version="t", time_verified=earlier, varied=varied
        )
        assert _stored(store, out, rebuilder_keys)[1]["verificationResult"] == "FAILED"

    # varied as much: the PASSED replaces the FAILED, with a notice
    failed_earlier(labels)
    r = kiln("rebuild", out, "--key", key, "--vary")
    assert "signed PASSED verification summary" in r.stdout, r.stdout + r.stderr
    assert "replacing this key's FAILED verdict" in r.stderr and "at least as much" in r.stderr, r.stderr
    assert _stored(store, out, rebuilder_keys)[1]["verificationResult"] == "PASSED"

    # a FAILED that varied something this machine's --vary does not: kept
    failed_earlier([*labels, "clock+7300d"])
    r = kiln("rebuild", out, "--key", key, "--vary")
    assert "not clock+7300d" in r.stderr and "FAILED verdict stays" in r.stdout, r.stdout + r.stderr
    assert _stored(store, out, rebuilder_keys)[1]["verificationResult"] == "FAILED"

    # a plain FAILED (e.g. a disk that filled up) is replaced by a plain PASSED
    failed_earlier(None)
    r = kiln("rebuild", out, "--key", key)
    assert "signed PASSED verification summary" in r.stdout and "replacing" in r.stderr, r.stdout + r.stderr


def test_a_rebuild_that_does_not_build_signs_failed(store, graph, kiln, rebuilder_keys, tmp_path):
    drv, out = graph.drv("umask-bomb", UMASK_BOMB)
    kiln("build", drv)
    key = str(rebuilder_keys.sk_file)
    kiln("rebuild", out, "--key", key)  # plain: builds, reproduces, PASSED
    assert _stored(store, out, rebuilder_keys)[1]["verificationResult"] == "PASSED"
    policy = _policy_file(tmp_path, rebuilder_keys)
    assert "pass reproduced" in kiln("verify", out, "--policy", policy).stdout

    r = kiln("rebuild", out, "--key", key, "--vary", expect=1)
    assert f"{out}: NOT reproduced: the rebuild failed to build" in r.stdout, r.stdout + r.stderr
    assert "refusing to build under umask 077" in r.stdout  # the log's tail
    assert "signed FAILED verification summary" in r.stdout
    pred = _stored(store, out, rebuilder_keys)[1]
    assert pred["verificationResult"] == "FAILED" and pred["verifiedLevels"] == ["FAILED"]
    ext = pred["kiln_rebuild"]
    assert ext["derivation"] == drv and "narSha256" not in ext and "umask=077" in ext["varied"]
    assert ext["buildError"].startswith(f"the rebuild failed to build: builder for {drv} failed"), ext
    assert "\n" not in ext["buildError"]
    v = kiln("verify", out, "--policy", policy, expect=1)
    assert "FAIL reproduced" in v.stdout and "did NOT reproduce" in v.stdout, v.stdout

    # --json: a result, not an error
    doc = json.loads(kiln("rebuild", out, "--key", key, "--vary", "--json", expect=1).stdout)
    (o,) = doc["outputs"]
    assert doc["ok"] is False and o["reproduced"] is False and o["rebuilt"] is None
    assert "refusing to build" in o["build_error"] and o["vsa"].endswith(".dsse.json")

    # and the plain rebuild that builds again cannot turn it back into PASSED
    r = kiln("rebuild", out, "--key", key)
    assert (
        "FAILED verdict stays" in r.stdout
        and _stored(store, out, rebuilder_keys)[1]["verificationResult"] == "FAILED"
    )


def test_without_a_signer_a_rebuild_that_does_not_build_is_an_error(store, graph):
    """``kiln challenge --rebuild`` signs nothing: for it a failed rebuild stays an error."""
    from kiln.rebuilders import make_builder, rebuild_drv

    drv, out = graph.drv("umask-bomb-unsigned", UMASK_BOMB)
    builder = make_builder(store, say=lambda _: None)
    builder.realise([drv])
    with pytest.raises(BuildError, match="refusing to build under umask 077"):
        rebuild_drv(store, builder, drv, None, say=lambda _: None, vary=True)
    assert not [k for k in attestations.list(store, out) if k.startswith("vsa-")]


def test_only_this_keys_own_failed_verdict_about_this_content_holds(store, busybox_path, tmp_path):
    """A FAILED file someone else signed, or one about other content, pins nothing."""
    mine = Keys(tmp_path, "rb-mine-1")
    other = Keys(tmp_path, "rb-other-1")
    signer = dsse.Ed25519Signer(mine.sk.key)
    kind = attestations.vsa_kind(mine.pk.key)
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    nar = store.query(busybox_path).nar_hash.hex

    def plant(signed_by: Keys, digest: str) -> None:
        st = intoto.vsa(
            busybox_path.rsplit("/", 1)[1], digest, verifier_version="t", time_verified=t0,
            passed=False, resource_uri="x", varied=["umask=077"],
        )  # fmt: skip
        env = attestations.sign(st, [dsse.Ed25519Signer(signed_by.sk.key)])
        attestations.write(store, busybox_path, kind, env)

    for who, digest in ((other, nar), (mine, "0" * 64)):
        plant(who, digest)
        attestations.record_vsa(
            store, busybox_path, signer, passed=True, verifier_version="t", time_verified=t0
        )
        st = intoto.parse_statement(attestations.read(store, busybox_path, kind).payload)
        assert st.predicate["verificationResult"] == "PASSED"
    plant(mine, nar)
    with pytest.raises(VerdictKept, match="umask=077"):
        attestations.record_vsa(
            store, busybox_path, signer, passed=True, verifier_version="t", time_verified=t0
        )
    # a new FAILED always replaces it, whatever it varied
    attestations.record_vsa(store, busybox_path, signer, passed=False, verifier_version="t", time_verified=t0)
    pred = intoto.parse_statement(attestations.read(store, busybox_path, kind).payload).predicate
    assert "kiln_rebuild" not in pred


def test_a_signed_report_records_a_rebuild_that_does_not_build(kiln, tmp_path, store, rebuilder_keys):
    from test_report import write_recipes

    _, good = write_recipes(tmp_path)
    bomb = tmp_path / "bomb.recipe"
    text = UMASK_BOMB.replace('"', '\\"')
    bomb.write_text(
        good.read_text().split("package calm")[0]
        + f'package bomb {{\n  deps = [toolchain]\n  build = "{text}"\n}}\n'
    )
    r = kiln(
        "report", "reproducibility", str(bomb), "--vary", "--json", "--key", str(rebuilder_keys.sk_file),
        "--source-mirror", str(tmp_path / "mirror"), expect=1,
    )  # fmt: skip
    (p,) = [p for p in json.loads(r.stdout)["packages"] if p["attribute"] == "bomb"]
    assert p["status"] == "build failed" and p["error"].startswith("the rebuild failed to build: builder for")
    (o,) = p["outputs"]
    assert o["vsa"] and o["build_error"]
    pred = _stored(store, o["path"], rebuilder_keys)[1]
    assert pred["verificationResult"] == "FAILED" and "buildError" in pred["kiln_rebuild"]
