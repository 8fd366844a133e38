"""A rebuild's VSA records the inputs it rebuilt from (``kiln_rebuild.inputs``), and
``kiln verify`` compares them with the provenance's ``resolvedDependencies``: a
difference is said, and ``[require] reproduced_same_inputs`` does not count such a
verdict (nor one that records no inputs). The differing copy of an input is real: a
second store builds a non-deterministic input itself, then rebuilds a package whose
provenance came from the first store."""

from __future__ import annotations

from pathlib import Path

import pytest
from buildkit import add_busybox
from rbkit import APPLETS, Graph, Keys, Kiln, needs_bwrap

from kiln.store import attestations, intoto
from kiln.store.keyfiles import load_secret_key
from kiln.store.localstore import LocalStore
from kiln.store.policy import PolicyError, parse, verify_path

pytestmark = needs_bwrap


def _policy(builder_pub: str, rebuilder: Keys, *, same_inputs: bool) -> str:
    same = "reproduced_same_inputs = true\n" if same_inputs else ""
    return (
        f'[keys]\nprovenance = ["{builder_pub}"]\nrebuilders = ["{rebuilder.pk.to_text()}"]\n'
        f"[require]\nprovenance = true\nreproduced = 1\n{same}"
    )


def _builder_pub(store: LocalStore) -> str:
    return load_secret_key(store.root / "keys" / "default.sec").public().to_text()


def _two_step(graph: Graph) -> tuple[str, str]:
    """A non-deterministic input and a package that uses it but whose output does not
    depend on its bytes: ``(package .drv, package output)``."""
    noisy, _ = graph.drv("noisy", "head -c 16 /dev/urandom > $out")
    return graph.drv("steady", "mkdir $out; echo same > $out/data; cat $in0 > /dev/null", [noisy])


def _reproduced(store: LocalStore, out: str, policy: str):
    report = verify_path(store, out, parse(policy))
    (check,) = [c for c in report.checks if c.name == "reproduced"]
    return check


def test_the_vsa_records_the_provenances_inputs(store, graph, kiln, rebuilder_keys):
    drv, out = _two_step(graph)
    kiln("build", drv)
    kiln("rebuild", out, "--key", str(rebuilder_keys.sk_file))

    vsa = attestations.read(store, out, attestations.vsa_kind(rebuilder_keys.pk.key))
    recorded = intoto.parse_statement(vsa.payload).predicate["kiln_rebuild"]["inputs"]
    prov = intoto.parse_statement(attestations.read(store, out, "provenance").payload)
    deps = prov.predicate["buildDefinition"]["resolvedDependencies"]
    # the same entries (name and digest; the provenance may add a fetch URL)
    assert recorded == [{"name": d["name"], "digest": d["digest"]} for d in deps]
    assert {d["name"] for d in recorded} >= {Path(drv).name, Path(graph.bb).name}

    check = _reproduced(store, out, _policy(_builder_pub(store), rebuilder_keys, same_inputs=True))
    assert check.ok, check.detail
    assert "inputs" not in check.detail


def test_a_rebuild_from_another_copy_of_an_input_is_said_and_not_counted_when_required(
    store, graph, kiln, rebuilder_keys, tmp_path
):
    drv, out = _two_step(graph)
    kiln("build", drv)
    builder_pub = _builder_pub(store)
    provenance = attestations.read(store, out, "provenance")

    # A second machine: the same recipe, its own (different) build of the noisy input.
    other = LocalStore.open(tmp_path / "other")
    try:
        g2 = Graph(other, add_busybox(other, tmp_path / "o", APPLETS))
        drv2, out2 = _two_step(g2)
        assert (drv2, out2) == (drv, out)  # same recipe, same paths
        Kiln(other.root)("build", drv)
        assert other.query(out).nar_hash == store.query(out).nar_hash
        noisy = next(p for p, _ in g2.drvs[drv].input_drvs)
        noisy_out = g2.drvs[noisy].output_path("out")
        assert other.query(noisy_out).nar_hash != store.query(noisy_out).nar_hash
        # it holds the first machine's provenance of the package (as a copy would bring)
        attestations.write(other, out, "provenance", provenance)
        Kiln(other.root)("rebuild", out, "--key", str(rebuilder_keys.sk_file))

        loose = _reproduced(other, out, _policy(builder_pub, rebuilder_keys, same_inputs=False))
        assert loose.ok, loose.detail
        assert "rebuilt from inputs other than the provenance's (1 difference(s) from" in loose.detail
        assert (
            f"{Path(noisy_out).name} (provenance {store.query(noisy_out).nar_hash.to_nix32()}" in loose.detail
        )
        assert f"rebuild {other.query(noisy_out).nar_hash.to_nix32()})" in loose.detail
        assert "not counted" not in loose.detail

        strict = _reproduced(other, out, _policy(builder_pub, rebuilder_keys, same_inputs=True))
        assert not strict.ok
        assert "reproduced by 0 independent rebuilder(s)" in strict.detail
        assert "): not counted" in strict.detail
    finally:
        other.close()


def test_a_verdict_recording_no_inputs_is_not_counted_when_required(store, graph, kiln, rebuilder_keys):
    drv, out = graph.drv("plain", "echo plain > $out")
    kiln("build", drv)
    info = store.query(out)
    # a verdict as kiln wrote it before it recorded inputs
    from kiln.store.dsse import Ed25519Signer

    st = intoto.vsa(
        Path(out).name,
        info.nar_hash.hex,
        verifier_version="old",
        time_verified=info.registration_time + 5,
        passed=True,
        resource_uri=f"kiln:{out}",
        derivation=drv,
        rebuilt_nar_sha256_hex=info.nar_hash.hex,
    )
    kind = attestations.vsa_kind(rebuilder_keys.pk.key)
    attestations.write(store, out, kind, attestations.sign(st, [Ed25519Signer(rebuilder_keys.sk.key)]))
    builder_pub = _builder_pub(store)
    assert _reproduced(store, out, _policy(builder_pub, rebuilder_keys, same_inputs=False)).ok
    strict = _reproduced(store, out, _policy(builder_pub, rebuilder_keys, same_inputs=True))
    assert not strict.ok
    assert "records no inputs (or none readable): not counted" in strict.detail


@pytest.mark.parametrize(
    "require, why",
    [
        ("reproduced_same_inputs = true\n", "requires no reproduction"),
        ("reproduced = 1\nreproduced_same_inputs = true\n", "trusts no provenance key"),
        ("reproduced = 1\nreproduced_same_inputs = 1\n", "reproduced_same_inputs"),
    ],
)
def test_policies_that_cannot_use_reproduced_same_inputs_are_refused(rebuilder_keys, require, why):
    text = f'[keys]\nrebuilders = ["{rebuilder_keys.pk.to_text()}"]\n[require]\n{require}'
    with pytest.raises(PolicyError, match=why):
        parse(text)


def test_unreadable_input_lists_compare_as_absent():
    from kiln.store.vsainputs import compare, digests

    h = "ab" * 32
    assert digests([{"name": "x", "digest": {"sha256": h}}]) == {"x": h}
    # provenance of a recipe in a git checkout: the commit is among the dependencies
    git = {"uri": "git+file:recipes/a.recipe", "digest": {"gitCommit": "ab" * 20}}
    assert digests([{"name": "x", "digest": {"sha256": h}}, git]) == {"x": h}
    for bad in (None, {}, [1], [{"name": "x"}], [{"name": "x", "digest": {}}],
                [{"name": "x", "digest": {"sha256": "zz"}}],
                [{"name": "x", "digest": {"sha256": h}}] * 2):  # fmt: skip
        assert digests(bad) is None, bad
    d = compare({"a": h, "b": h}, {"a": "cd" * 32, "c": h})
    assert d and d.total == 2 and [n for n, *_ in d.changed] == ["a"]
    assert d.missing == ("b",) and d.extra == ("c",)
    text = d.describe(limit=1)
    assert text.startswith("3 difference(s) from the provenance's 2 input(s): a (provenance sha256:")
    assert text.endswith("b (not in the rebuild), c (not in the provenance)")
    assert not compare({"a": h}, {"a": h})
