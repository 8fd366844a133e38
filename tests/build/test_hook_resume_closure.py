"""A signing hook left pending on a *dependency* is finished by the next ``kiln build`` of
the target (``buildsched._finish_left_hooks``), not only the target's own.

The signer (an external ``--signer-cmd``, a KMS stand-in) fails while a flag file
exists: ``liba`` and ``app`` are built and committed, and both are left unsigned, without
provenance, with their ``locks/<h>.hook`` markers. Before, a re-run of ``kiln build
app.drv`` with the signer working exited 0 having signed only ``app``: planning reached
only the roots, what was to be built and its inputs, and with everything valid that is
the root alone; ``liba`` stayed unsigned until its own ``.drv`` was built."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from buildkit import flaky_signer

from kiln.store import attestations, dsse
from kiln.store.signing import SecretKey, valid_signers

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]


def test_a_dependency_left_unsigned_is_signed_by_the_next_build_of_the_target(store, graph, tmp_path):
    key = SecretKey.generate("hsm-1")
    flag = tmp_path / "kms-down"
    flag.touch()
    cmd = flaky_signer(tmp_path, key, flag)
    a, ad = graph.drv("liba", "mkdir -p $out; echo lib > $out/lib")
    app, appd = graph.drv("app", "mkdir -p $out; cat $in0/lib > $out/app; echo $in0 >> $out/app", inputs=[a])
    outs = [ad.output_path(), appd.output_path()]
    markers = [store.root / "locks" / f"{o.split('/')[-1][:32]}.hook" for o in outs]

    def build() -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "kiln",
                "build",
                app,
                "--signer-cmd",
                cmd,
                "--signer-key",
                key.public().to_text(),
            ],
            env=dict(os.environ, KILN_HOME=str(store.root)),
            capture_output=True,
            text=True,
            timeout=180,
        )

    r = build()
    assert r.returncode == 1 and "KMS is unavailable" in r.stderr, r.stderr
    for o, m in zip(outs, markers, strict=True):  # both committed, neither signed: both pending
        info = store.query(o)
        assert info is not None and valid_signers(info, [key.public()]) == set()
        assert attestations.list(store, o) == [] and m.exists()
    flag.unlink()
    r = build()
    assert r.returncode == 0 and r.stdout.strip() == outs[1], r.stderr
    for o, m in zip(outs, markers, strict=True):
        assert valid_signers(store.query(o), [key.public()]) == {"hsm-1"}, o
        dsse.verify(attestations.read(store, o, "provenance"), {"hsm-1": key.public().key}, 1)
        assert not m.exists()
    r = build()  # finished: nothing left to do
    assert r.returncode == 0 and "stopped before" not in r.stderr, r.stderr
