"""``kiln rebuild --deep``: every derivation of the closure is rebuilt, inputs first, each
with its own verdict, so an input that does not reproduce is caught even when the path
asked about comes out the same."""

from __future__ import annotations

import json

from rbkit import needs_bwrap

from kiln.store import attestations, intoto

pytestmark = needs_bwrap


def _result(store, path: str, keys) -> str:
    env = attestations.read(store, path, attestations.vsa_kind(keys.pk.key))
    assert env is not None, attestations.list(store, path)
    return intoto.parse_statement(env.payload).predicate["verificationResult"]


def test_deep_rebuild_catches_an_input_that_does_not_reproduce(store, graph, kiln, rebuilder_keys):
    noisy_drv, noisy = graph.drv("noisy", "head -c 16 /dev/urandom > $out")
    drv, out = graph.drv("steady", "mkdir $out; echo same > $out/data; cat $in0 > /dev/null", [noisy_drv])
    kiln("build", drv)

    plain = kiln("rebuild", out, "--key", str(rebuilder_keys.sk_file))
    assert f"{out}: reproduced" in plain.stdout and noisy not in plain.stdout

    r = kiln("rebuild", out, "--deep", "--key", str(rebuilder_keys.sk_file), "--json", expect=1)
    outputs = json.loads(r.stdout)["outputs"]
    # inputs first, then the path asked about
    assert [(o["path"], o["reproduced"]) for o in outputs] == [(noisy, False), (out, True)]
    assert "[1/2] " + noisy_drv in r.stderr and "[2/2] " + drv in r.stderr
    assert _result(store, noisy, rebuilder_keys) == "FAILED"
    assert _result(store, out, rebuilder_keys) == "PASSED"

    text = kiln("rebuild", out, "--deep", "--key", str(rebuilder_keys.sk_file), expect=1).stdout
    assert f"{noisy}: NOT reproduced" in text and f"{out}: reproduced" in text


def test_deep_rebuild_of_a_deterministic_closure_passes(store, graph, kiln, rebuilder_keys):
    a_drv, a = graph.drv("leaf", "echo leaf > $out")
    b_drv, b = graph.drv("left", "cat $in0 > $out", [a_drv])
    c_drv, c = graph.drv("right", "echo right > $out", [a_drv])
    top_drv, top = graph.drv("top", "mkdir $out; cat $in0 $in1 > $out/both", [b_drv, c_drv])
    kiln("build", top_drv)

    r = kiln("rebuild", top, "--deep", "--key", str(rebuilder_keys.sk_file), "--json")
    outputs = [o["path"] for o in json.loads(r.stdout)["outputs"]]
    assert sorted(outputs) == sorted([a, b, c, top]) and len(outputs) == 4  # each once
    assert outputs[0] == a and outputs[-1] == top  # inputs first
    assert all(o["reproduced"] for o in json.loads(r.stdout)["outputs"])
    for p in (a, b, c, top):
        assert _result(store, p, rebuilder_keys) == "PASSED"


class _Drv:
    def __init__(self, inputs: list[str]) -> None:
        self.input_drvs = [(p, ["out"]) for p in inputs]


def test_order_of_a_diamond_and_a_deep_chain():
    from kiln.rebuilddeep import order

    g = {"top": ["l", "r"], "l": ["leaf"], "r": ["leaf"], "leaf": []}
    got = order("top", lambda p: _Drv(g[p]))
    assert got[-1] == "top" and sorted(got) == sorted(g) and len(got) == 4
    assert got.index("leaf") < got.index("l") and got.index("leaf") < got.index("r")
    chain = {f"d{i}": [f"d{i + 1}"] if i < 5000 else [] for i in range(5001)}
    got = order("d0", lambda p: _Drv(chain[p]))  # no recursion limit
    assert got == [f"d{i}" for i in range(5000, -1, -1)]
