"""``kiln rebuild --deep`` leaves out what it cannot or need not rebuild: fixed-output
derivations (a rebuild would fetch the same pinned bytes) and derivations none of whose
outputs is valid here (nothing to compare with; said on stderr)."""

from __future__ import annotations

import hashlib
import json

from rbkit import needs_bwrap

from kiln.store.derivation import Derivation, Output, drv_path, finalize

pytestmark = needs_bwrap


def _fixed_drv(store, graph, name: str, content: bytes) -> tuple[str, str]:
    """A flat fixed-output derivation writing ``content`` (added to ``graph``)."""
    d = Derivation.make(
        name,
        outputs={"out": Output(hash_algo="sha256", hash=hashlib.sha256(content).hexdigest())},
        input_drvs={},
        input_srcs=[graph.bb],
        builder=f"{graph.bb}/bin/busybox",
        args=["sh", "-c", f"printf '{content.decode()}' > $out"],
        env={"PATH": f"{graph.bb}/bin", "name": name, "out": ""},
        store_dir=store.store_dir,
    )
    d = finalize(d, lambda p: graph.drvs[p], graph.memo)
    p = str(drv_path(d))
    store.add_text(f"{name}.drv", d.serialize().encode(), [str(r) for r in d.references()])
    graph.drvs[p] = d
    return p, d.output_path("out")


def test_fixed_output_inputs_are_not_rebuilt(store, graph, kiln, rebuilder_keys):
    fo_drv, fo = _fixed_drv(store, graph, "pinned", b"pinned bytes")
    drv, out = graph.drv("user", "mkdir $out; cat $in0 > $out/copy", [fo_drv])
    kiln("build", drv)
    assert store.is_valid(fo)

    r = kiln("rebuild", out, "--deep", "--key", str(rebuilder_keys.sk_file), "--json")
    outputs = json.loads(r.stdout)["outputs"]
    assert [(o["path"], o["reproduced"]) for o in outputs] == [(out, True)]
    assert "[1/1] " + drv in r.stderr and fo_drv not in r.stderr


def test_inputs_without_a_valid_output_are_skipped_and_said(store, graph, kiln, rebuilder_keys):
    gone_drv, gone = graph.drv("gone", "echo input > $out")
    # the top output does not refer to its input's output, so a GC may take that
    drv, out = graph.drv("top", "mkdir $out; cat $in0 > $out/copy", [gone_drv])
    kiln("build", drv)
    store.add_root("top-out", out)
    store.add_root("top-drv", drv)  # (its closure holds the input's .drv)
    kiln("store", "gc", "--no-keep-outputs")
    assert not store.is_valid(gone) and store.is_valid(out) and store.is_valid(gone_drv)

    r = kiln("rebuild", out, "--deep", "--key", str(rebuilder_keys.sk_file), "--json")
    said = f"not rebuilding {gone_drv}: none of its outputs is valid here (nothing to compare with)"
    assert said in r.stderr
    outputs = json.loads(r.stdout)["outputs"]
    assert [(o["path"], o["reproduced"]) for o in outputs] == [(out, True)]
    assert "[1/1] " + drv in r.stderr
