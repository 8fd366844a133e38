"""``kiln rebuild``: fresh-sandbox rebuilds, signed VSAs that ``kiln verify`` counts, and
mismatches that name the differing file and record a FAILED verdict."""

from __future__ import annotations

import json
import shutil

import pytest
from rbkit import Keys, needs_bwrap

from kiln.store import attestations, intoto
from kiln.store.policy import PolicyError, parse, verify_path

pytestmark = needs_bwrap


def _policy(*rebuilders: Keys, need: int = 1) -> str:
    keys = ", ".join(f'"{k.pk.to_text()}"' for k in rebuilders)
    return f"[keys]\nrebuilders = [{keys}]\n[require]\nreproduced = {need}\n"


def _vsa(store, path: str, keys: Keys) -> intoto.Statement:
    env = attestations.read(store, path, attestations.vsa_kind(keys.pk.key))
    assert env is not None, attestations.list(store, path)
    return intoto.parse_statement(env.payload)


def test_deterministic_build_reproduces_and_the_vsa_counts(store, graph, kiln, rebuilder_keys, tmp_path):
    drv, out = graph.drv("steady", "mkdir $out; echo same > $out/data; echo more > $out/other")
    kiln("build", drv)  # signs the provenance with the store's default key
    pol = parse(_policy(rebuilder_keys))
    assert not verify_path(store, out, pol).ok  # nobody has rebuilt it yet

    r = kiln("rebuild", out, "--key", str(rebuilder_keys.sk_file))
    assert f"{out}: reproduced" in r.stdout
    assert "signed PASSED verification summary" in r.stdout

    st = _vsa(store, out, rebuilder_keys)
    assert st.predicate_type == intoto.VSA_TYPE
    assert st.predicate["verificationResult"] == "PASSED"
    assert st.predicate["verifiedLevels"] == [intoto.LEVEL_REPRODUCED]
    assert st.predicate["kiln_rebuild"]["derivation"] == drv
    info = store.query(out)
    assert st.matches(out.rsplit("/", 1)[1], info.nar_hash.hex)
    assert st.predicate["kiln_rebuild"]["narSha256"] == info.nar_hash.hex

    report = verify_path(store, out, pol)
    assert report.ok, report.lines()
    (check,) = [c for c in report.checks if c.name == "reproduced"]
    assert "reproduced by 1 independent rebuilder(s) (rebuilder-a-1)" in check.detail

    # the same through the CLI, with the policy in a file
    (tmp_path / "policy.toml").write_text(_policy(rebuilder_keys))
    v = kiln("verify", out, "--policy", str(tmp_path / "policy.toml"))
    assert "pass reproduced" in v.stdout


def test_rebuild_by_gc_root_name_and_json(store, graph, kiln, rebuilder_keys):
    drv, out = graph.drv("named", "echo named > $out")
    kiln("build", drv)  # creates the GC root "named"
    r = kiln("rebuild", "named", "--key", str(rebuilder_keys.sk_file), "--json")
    doc = json.loads(r.stdout)
    assert doc["ok"] is True
    (o,) = doc["outputs"]
    assert o["path"] == out and o["derivation"] == drv and o["reproduced"] is True
    assert o["registered"] == o["rebuilt"] == f"sha256:{store.query(out).nar_hash.nix32}"  # as Nix prints it
    assert o["vsa"].endswith(".dsse.json")


def test_default_key_is_the_build_key_and_is_not_independent(store, graph, kiln):
    drv, out = graph.drv("selfcheck", "echo self > $out")
    kiln("build", drv)
    r = kiln("rebuild", out)
    assert "also signed the provenance" in r.stderr
    default = Keys.__new__(Keys)
    from kiln.store.keyfiles import load_secret_key

    default.sk = load_secret_key(store.root / "keys" / "default.sec")
    default.pk = default.sk.public()
    assert _vsa(store, out, default).predicate["verificationResult"] == "PASSED"
    # Independence is judged against the provenance keys the policy trusts: a policy
    # whose only rebuilder is its provenance key can never pass, and is refused.
    text = _policy(default).replace("[keys]\n", f'[keys]\nprovenance = ["{default.pk.to_text()}"]\n')
    with pytest.raises(PolicyError, match="a builder cannot vouch for itself"):
        parse(text)


def test_nondeterministic_build_names_the_file_and_records_failed(store, graph, kiln, rebuilder_keys):
    drv, out = graph.drv(
        "flaky", "mkdir $out; echo fixed > $out/stable; cat /proc/sys/kernel/random/uuid > $out/id"
    )
    kiln("build", drv)
    r = kiln("rebuild", out, "--key", str(rebuilder_keys.sk_file), expect=1)
    assert f"{out}: NOT reproduced" in r.stdout
    assert "id: contents differ" in r.stdout
    assert "stable" not in r.stdout.split("differing files:")[1].split("diffoscope:")[0]
    assert "signed FAILED verification summary" in r.stdout

    st = _vsa(store, out, rebuilder_keys)
    assert st.predicate["verificationResult"] == "FAILED"
    assert st.predicate["kiln_rebuild"]["narSha256"] != store.query(out).nar_hash.hex
    report = verify_path(store, out, parse(_policy(rebuilder_keys)))
    (check,) = [c for c in report.checks if c.name == "reproduced"]
    assert not check.ok and "did NOT reproduce" in check.detail


def test_a_later_failure_replaces_the_same_keys_pass(store, graph, kiln, rebuilder_keys):
    # One key, one verdict per path: the newest rebuild is what the key attests.
    drv, out = graph.drv("coin", "mkdir $out; cat /proc/sys/kernel/random/uuid > $out/id")
    kiln("build", drv)
    kiln("rebuild", out, "--key", str(rebuilder_keys.sk_file), expect=1)
    kinds = [k for k in attestations.list(store, out) if k.startswith("vsa-")]
    assert kinds == [attestations.vsa_kind(rebuilder_keys.pk.key)]


def test_rebuild_of_an_added_path_is_refused(store, kiln, busybox_path):
    r = kiln("rebuild", busybox_path, expect=1)
    assert "no recorded deriver" in r.stderr


def test_rebuild_of_an_unknown_path_is_an_error(kiln, store):
    r = kiln("rebuild", "nothing-by-this-name", expect=1)
    assert "is not a path in the store" in r.stderr


def test_rebuild_builds_missing_inputs_first(store, graph, kiln, rebuilder_keys):
    a, a_out = graph.drv("dep", "echo dep > $out")
    b, b_out = graph.drv("top", "cat $in0 > $out; echo top >> $out", inputs=[a])
    kiln("build", b)  # roots "top" (the output); root the .drv closure too
    store.add_root("top-drv", b)
    # the input's output is unreachable now, as if "top" had been substituted (the store's
    # default keeps build inputs)
    store.gc(keep_outputs=False)
    assert not store.is_valid(a_out) and store.is_valid(b_out) and store.is_valid(b)
    r = kiln("rebuild", b_out, "--key", str(rebuilder_keys.sk_file))
    assert f"{b_out}: reproduced" in r.stdout
    assert store.is_valid(a_out) and "provenance" in attestations.list(store, a_out)


@pytest.mark.parametrize("how", ["key", "signer-cmd"])
def test_key_or_external_signer(store, graph, kiln, rebuilder_keys, tmp_path, how):
    drv, out = graph.drv(f"signed-{how}", f"echo {how} > $out")
    kiln("build", drv)
    if how == "key":
        kiln("rebuild", out, "--key", str(rebuilder_keys.sk_file))
    else:
        signer = tmp_path / "signer.py"
        signer.write_text(
            "import base64, sys\n"
            "from kiln.store.keyfiles import load_secret_key\n"
            "import nacl.signing\n"
            f"sk = load_secret_key({str(rebuilder_keys.sk_file)!r})\n"
            "msg = sys.stdin.buffer.read()\n"
            "sig = nacl.signing.SigningKey(sk.key[:32]).sign(msg).signature\n"
            "print(base64.b64encode(sig).decode())\n"
        )
        import sys

        kiln(
            "rebuild",
            out,
            "--signer-cmd",
            f"{sys.executable} {signer}",
            "--signer-key",
            str(rebuilder_keys.pk_file),
        )
    assert verify_path(store, out, parse(_policy(rebuilder_keys))).ok


def test_rebuild_with_a_rebuilder_key_never_makes_a_build_key(store, graph, kiln, rebuilder_keys):
    # A rebuilder machine holds only its rebuilder key: nothing to build, no build key.
    from kiln.sandbox.bwrap import BwrapExecutor
    from kiln.store.build import Builder, BuildOptions

    drv, out = graph.drv("keyless", "echo keyless > $out")
    Builder(store, BwrapExecutor(), BuildOptions(progress=False), say=lambda m: None).realise([drv])
    r = kiln("rebuild", out, "--key", str(rebuilder_keys.sk_file))
    assert f"{out}: reproduced" in r.stdout and "generated signing key" not in r.stderr
    assert not (store.root / "keys" / "default.sec").exists()


@pytest.mark.skipif(shutil.which("diffoscope") is None, reason="diffoscope not installed")
def test_mismatch_runs_diffoscope_when_installed(store, graph, kiln, rebuilder_keys):
    drv, out = graph.drv("scope", "mkdir $out; cat /proc/sys/kernel/random/uuid > $out/id")
    kiln("build", drv)
    r = kiln("rebuild", out, "--key", str(rebuilder_keys.sk_file), expect=1)
    explained = r.stdout.split("diffoscope:", 1)[1]
    assert "id" in explained and "@@" in explained  # a unified diff of the file that differs


def test_vary_catches_what_a_plain_rebuild_misses(store, graph, kiln, rebuilder_keys):
    drv, out = graph.drv("cores", "mkdir $out; echo $KILN_CORES > $out/cores; echo fixed > $out/keep")
    kiln("build", drv)
    kiln("rebuild", out, "--key", str(rebuilder_keys.sk_file))  # same conditions: identical
    assert "varied" not in _vsa(store, out, rebuilder_keys).predicate["kiln_rebuild"]
    r = kiln("rebuild", out, "--key", str(rebuilder_keys.sk_file), "--vary", expect=1)
    assert "varied conditions" in r.stderr and "KILN_CORES=" in r.stderr
    assert "cores: contents differ" in r.stdout and "keep:" not in r.stdout.split("diffoscope:")[0]
    pred = _vsa(store, out, rebuilder_keys).predicate
    assert pred["verificationResult"] == "FAILED"
    # the VSA says the rebuild was varied, and how (stable labels, no host paths)
    varied = pred["kiln_rebuild"]["varied"]
    assert (
        "build-directory" in varied
        and "umask=077" in varied
        and any(v.startswith("KILN_CORES=") for v in varied)
    )
    assert not any("/" in v for v in varied)
    assert not list((store.root / "tmp").glob("vary-*"))  # the varied build dir is cleaned up
    steady, steady_out = graph.drv("steady-vary", "mkdir $out; echo same > $out/f")
    kiln("build", steady)
    assert f"{steady_out}: reproduced" in kiln("rebuild", steady_out, "--vary").stdout


def test_signer_argument_errors(store, graph, kiln, rebuilder_keys):
    drv, out = graph.drv("args", "echo args > $out")
    kiln("build", drv)
    k = str(rebuilder_keys.sk_file)
    r = kiln("rebuild", out, "--key", k, "--signer-cmd", "true", expect=2)
    assert "not both" in r.stderr
    r = kiln("rebuild", out, "--signer-key", str(rebuilder_keys.pk_file), expect=1)
    assert "only meaningful with --signer-cmd" in r.stderr
    rebuilder_keys.sk_file.chmod(0o644)
    r = kiln("rebuild", out, "--key", k, expect=1)
    assert "chmod 600" in r.stderr
    assert attestations.list(store, out) == ["provenance"]  # nothing signed on any error
