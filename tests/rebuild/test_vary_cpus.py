"""``--vary`` varies the CPUs a build can see, not only ``KILN_CORES``.

An audit found ``--vary`` changed ``KILN_CORES`` but every rebuild still saw every CPU
(``fix_child`` gave bwrap all of them), so a build whose output depends on ``nproc``
(``make -j$(nproc)`` races, a recorded CPU count) passed ``--check --vary``. Now the
varied rebuild runs on one CPU where builds here see more (``SandboxSpec.cpus``), the
VSA says ``cpus=1``, and on a one-CPU machine ``describe`` says it could not vary it.
Real bubblewrap, real builds: the builder is the store's static busybox.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rbkit import needs_bwrap

from kiln.sandbox.procstate import visible_cpus
from kiln.store import attestations, intoto
from kiln.store.vary import standard

SEEN = visible_cpus()
several_cpus = pytest.mark.skipif(SEEN < 2, reason="one CPU here: a rebuild cannot see fewer")


def sandboxed(test):
    """Real builds on a machine where builds see two CPUs or more."""
    for mark in (*needs_bwrap, several_cpus):
        test = mark(test)
    return test


# (busybox is in $PATH, its bin/: ``nproc`` counts the build's CPU affinity)
WRITES_NPROC = "mkdir $out; busybox nproc > $out/cpus; echo fixed > $out/keep"


@sandboxed
def test_check_vary_catches_an_output_that_records_nproc(store, graph, kiln) -> None:
    drv, out = graph.drv("records-nproc", WRITES_NPROC)
    kiln("build", drv)
    # an ordinary build sees every CPU, as before
    assert (store.real_path(out) / "cpus").read_text() == f"{SEEN}\n"
    kiln("build", "--check", drv)  # same conditions: identical
    r = kiln("build", "--check", "--vary", drv, expect=1)
    said = r.stderr.split("varied conditions: ", 1)[1].splitlines()[0]
    assert f"1 CPU visible (nproc) instead of {SEEN}" in said, said
    assert "may not be deterministic" in r.stderr
    assert "cpus: contents differ" in r.stderr, r.stderr  # names the file
    assert "keep:" not in r.stderr.split("diffoscope:")[0]
    assert not list((store.root / "tmp").glob("vary-*"))


@sandboxed
def test_rebuild_vary_records_cpus_in_the_vsa(store, graph, kiln, rebuilder_keys) -> None:
    drv, out = graph.drv("records-nproc-vsa", WRITES_NPROC)
    kiln("build", drv)
    kiln("rebuild", out, "--key", str(rebuilder_keys.sk_file))  # plain: reproduced
    r = kiln("rebuild", out, "--key", str(rebuilder_keys.sk_file), "--vary", expect=1)
    assert "cpus: contents differ" in r.stdout, r.stdout
    env = attestations.read(store, out, attestations.vsa_kind(rebuilder_keys.pk.key))
    assert env is not None
    pred = intoto.parse_statement(env.payload).predicate
    assert pred["verificationResult"] == "FAILED"
    assert "cpus=1" in pred["kiln_rebuild"]["varied"]


def test_a_one_cpu_machine_says_cpus_were_not_varied(tmp_path: Path) -> None:
    one = standard(tmp_path, {1}, cpus_seen=1)
    assert one.cpus is None
    assert not any(v.startswith("cpus=") for v in one.varied())
    assert "CPUs visible: not varied (builds here see 1 CPU)" in one.describe()
    many = standard(tmp_path, {1}, cpus_seen=4)
    assert many.cpus == 1 and "cpus=1" in many.varied()
    assert "1 CPU visible (nproc) instead of 4" in many.describe()
