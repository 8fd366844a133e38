"""A rebuilder whose clock went back still replaces its PASSED with its FAILED, locally and at
a registry (``cli/verdicttime.py``).

The rebuilder signed PASSED at the real time; later, its clock an hour behind (a real
``kiln rebuild`` under libfaketime), a rebuild does not reproduce. Its FAILED used to be
dated an hour before the PASSED: the local store held FAILED while the registry refused
it (409, "older one") and kept serving PASSED. Now the FAILED is dated a second after the
PASSED, stderr says so, and the registry takes it."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rbkit import needs_bwrap

from kiln.registry.client import open_client
from kiln.registry.push import push
from kiln.store import attestations, dsse, intoto
from kiln.store.dsse import Envelope

pytestmark = [
    *needs_bwrap,
    pytest.mark.skipif(shutil.which("faketime") is None, reason="libfaketime (faketime) not installed"),
]


def _verdict(data: bytes) -> tuple[str, dt.datetime]:
    st = intoto.parse_statement(Envelope.loads(data).payload)
    t = intoto.statement_time(st)
    assert t is not None
    return st.predicate["verificationResult"], t


def test_a_failed_verdict_after_the_clock_went_back_replaces_the_passed(
    store, graph, kiln, rebuilder_keys, tmp_path: Path
) -> None:
    drv, out = graph.drv("coin-back", "mkdir $out; cat /proc/sys/kernel/random/uuid > $out/id")
    kiln("build", drv)
    kind = attestations.vsa_kind(rebuilder_keys.pk.key)
    signer = dsse.Ed25519Signer(rebuilder_keys.sk.key)
    passed_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    # this rebuilder's earlier verdict, signed with the real clock
    attestations.record_vsa(store, out, signer, passed=True, verifier_version="t", time_verified=passed_at)
    reg = tmp_path / "reg"

    def push_it() -> None:
        push(store, [out], lambda: open_client(f"file://{reg}"), sign_key=rebuilder_keys.sk, progress=False)

    push_it()
    (att,) = reg.rglob(f"{kind}.dsse.json")
    assert _verdict(att.read_bytes())[0] == "PASSED"

    # the rebuild, its clock an hour behind, does not reproduce
    r = subprocess.run(
        [
            "faketime",
            "-f",
            "-1h",
            sys.executable,
            "-m",
            "kiln",
            "rebuild",
            out,
            "--key",
            str(rebuilder_keys.sk_file),
        ],
        env={**kiln.env, "TZ": "UTC"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1 and f"{out}: NOT reproduced" in r.stdout, r.stdout + r.stderr
    assert "this machine's clock" in r.stderr and "is behind its last verdict at" in r.stderr, r.stderr
    assert f"{passed_at:%Y-%m-%dT%H:%M:%SZ}" in r.stderr and "(NTP)" in r.stderr, r.stderr
    env = attestations.read(store, out, kind)
    assert env is not None
    result, when = _verdict(env.dumps().encode())
    assert result == "FAILED" and when == passed_at + dt.timedelta(seconds=1), (result, when)

    # and the registry takes it in place of the PASSED (it refused it as older before)
    push_it()
    assert _verdict(att.read_bytes()) == ("FAILED", when), json.loads(att.read_bytes())
