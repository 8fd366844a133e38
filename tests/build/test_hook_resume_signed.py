"""A signing hook that failed after signing and before writing provenance is finished by
the next ``kiln build`` (``buildsched._finish_left_hooks``, ``hookmarks``): the path's
signature does not mean its hook ran. Before, a signed path with a marker was taken for
a substitute and its marker dropped, so the next build exited 0 with no provenance and
``kiln verify`` said nothing was stored. A hook that fails again fails the build.

The failure is an external signer (a KMS stand-in) that signs the path's fingerprint and
refuses the provenance envelope (DSSE's ``DSSEv1 `` pre-authentication encoding) while a
flag file exists."""

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


def test_a_hook_that_failed_after_signing_is_finished_by_the_next_build(store, graph, tmp_path):
    key = SecretKey.generate("hsm-1")
    flag = tmp_path / "kms-down"
    flag.touch()
    cmd = flaky_signer(tmp_path, key, flag, dsse_only=True)
    a, ad = graph.drv("half-hooked", "echo half > $out")
    out = ad.output_path()
    marker = store.root / "locks" / f"{out.split('/')[-1][:32]}.hook"

    def build() -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "kiln",
                "build",
                a,
                "--signer-cmd",
                cmd,
                "--signer-key",
                key.public().to_text(),
            ],
            env=dict(os.environ, KILN_HOME=str(store.root)),
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = build()
    assert r.returncode == 1 and "KMS is unavailable" in r.stderr, r.stderr
    # built, committed and signed; the provenance is missing and the marker says so
    assert valid_signers(store.query(out), [key.public()]) == {"hsm-1"}
    assert attestations.list(store, out) == [] and marker.exists()
    r = build()  # the hook is run again, and fails again: the build fails, not passes
    assert r.returncode == 1 and "its build stopped before that" in r.stderr, r.stderr
    assert "cannot sign" in r.stderr and "KMS is unavailable" in r.stderr, r.stderr
    assert attestations.list(store, out) == [] and marker.exists()
    flag.unlink()
    r = build()
    assert r.returncode == 0 and r.stdout.strip() == out, r.stderr
    assert "its build stopped before that" in r.stderr
    dsse.verify(attestations.read(store, out, "provenance"), {"hsm-1": key.public().key}, 1)
    assert not marker.exists()
    r = build()  # finished: nothing left to do
    assert r.returncode == 0 and "stopped before" not in r.stderr, r.stderr
