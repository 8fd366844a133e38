"""``SandboxSpec.cpus``: how many CPUs a build may see (its CPU affinity, hence ``nproc``).

``--check --vary`` rebuilds with ``cpus=1`` to catch builds whose output depends on the
CPU count; every other build has ``cpus=None`` and sees every CPU kiln's cpuset allows
(``procstate.visible_cpus``), whatever kiln's own affinity. Real bubblewrap: the build
runs busybox's ``nproc``, which counts its affinity mask.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from kiln.sandbox import SandboxSpec
from kiln.sandbox.procstate import visible_cpus

ALLOWED = os.sched_getaffinity(0)
two_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two CPUs (this machine lets kiln use one)")

NPROC = 'echo "nproc=$(nproc)"; grep Cpus_allowed_list /proc/self/status'


def _seen(sh, **kw) -> tuple[int, str]:
    """(the build's ``nproc``, its ``Cpus_allowed_list``)."""
    r = sh(NPROC, **kw)
    assert r.result.ok, r.log
    fields = dict(line.replace(":\t", "=").split("=", 1) for line in r.log.splitlines())
    return int(fields["nproc"]), fields["Cpus_allowed_list"].strip()


@pytest.fixture
def kiln_pinned_to_last_cpu() -> Iterator[int]:
    """kiln's own thread on its highest CPU only (``taskset -c N kiln``), restored after."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(ALLOWED)})
    try:
        yield max(ALLOWED)
    finally:
        os.sched_setaffinity(0, before)


def test_a_spec_without_cpus_sees_every_cpu(sh) -> None:
    nproc, _ = _seen(sh)
    assert nproc == len(ALLOWED) == visible_cpus()


@two_cpus
def test_a_spec_with_one_cpu_sees_one(sh) -> None:
    nproc, cpus = _seen(sh, cpus=1)
    assert nproc == 1
    assert cpus == str(min(ALLOWED))  # the lowest-numbered of those the build could have
    assert _seen(sh)[0] == len(ALLOWED)  # the next ordinary build sees them all again


@two_cpus
def test_the_cpu_kept_is_the_cpusets_first_not_kilns(sh, kiln_pinned_to_last_cpu: int) -> None:
    """``taskset -c <last> kiln``: builds still see every CPU (``visible_cpus`` too, not
    kiln's one), and a one-CPU rebuild runs on the first of the cpuset's, as anywhere."""
    assert visible_cpus() == len(ALLOWED)
    assert _seen(sh)[0] == len(ALLOWED)
    assert _seen(sh, cpus=1) == (1, str(min(ALLOWED)))


def test_more_cpus_than_there_are_means_all(sh) -> None:
    assert _seen(sh, cpus=len(ALLOWED) + 7)[0] == len(ALLOWED)


@pytest.mark.parametrize("bad", [0, -1, True, 1.0, "1"])
def test_cpus_must_be_a_positive_integer_or_none(bad: object) -> None:
    with pytest.raises(ValueError, match="cpus"):
        SandboxSpec(argv=("/bin/true",), build_dir="/tmp", cpus=bad)  # type: ignore[arg-type]
    assert SandboxSpec(argv=("/bin/true",), build_dir="/tmp").cpus is None
