"""bubblewrap's cap on its arguments (9,000 in all, ``--args`` files included): a build
over it is refused by kiln, naming its inputs, before bwrap starts — not with bwrap's
bare "Exceeded maximum number of arguments". Each input is one mount of three
arguments, so an input closure of about 2,900 paths is the most a build can have.
The boundary is found with environment variables (``--setenv K V``, three arguments
each, and cheap where mounts are not) so the real bwrap confirms kiln's count."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from kiln.sandbox import BwrapExecutor, SandboxError, SandboxSpec, bwrap_argv
from kiln.sandbox.bwrap import BWRAP_MAX_ARGS
from kiln.sandbox.procstate import BLOCK_FD, ETC_FDS, INFO_FD, SECCOMP_FD


def _spec(rootfs: Path, build_dir: Path, extra: int, ro_mounts=()) -> SandboxSpec:
    env = {"PATH": "/bin", **{f"V{i}": "x" for i in range(extra)}}
    return SandboxSpec(
        argv=("/bin/sh", "-c", "echo ran"),
        build_dir=str(build_dir),
        env=env,
        rootfs=str(rootfs),
        ro_mounts=tuple(ro_mounts),
    )


def _count(spec: SandboxSpec) -> int:
    return len(bwrap_argv("bwrap", spec, ETC_FDS, SECCOMP_FD, BLOCK_FD, info_fd=INFO_FD)) + 3


def test_the_largest_build_bwrap_takes_runs_and_one_argument_more_is_refused_by_kiln(
    executor: BwrapExecutor, rootfs: Path, build_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _count(_spec(rootfs, build_dir, 0))
    extra = (BWRAP_MAX_ARGS - base) // 3  # the most --setenv triples under the cap
    spec = _spec(rootfs, build_dir, extra)
    assert BWRAP_MAX_ARGS - 3 < _count(spec) <= BWRAP_MAX_ARGS
    log = io.BytesIO()
    assert executor.run(spec, log).reason == "ok", log.getvalue()
    assert log.getvalue() == b"ran\n"
    # three more arguments: over the cap by kiln's count ...
    over = _spec(rootfs, build_dir, extra + 1)
    with pytest.raises(SandboxError) as e:
        executor.run(over, io.BytesIO())
    assert f"at most {BWRAP_MAX_ARGS}" in str(e.value)
    # ... and by bwrap's own, had kiln let it start
    monkeypatch.setattr("kiln.sandbox.bwrap.BWRAP_MAX_ARGS", 10**6)
    log = io.BytesIO()
    assert executor.run(over, log).reason == "setup-failed"
    assert b"Exceeded maximum number of arguments" in log.getvalue()


def test_a_closure_too_large_for_bwrap_is_refused_naming_its_inputs(
    executor: BwrapExecutor, rootfs: Path, build_dir: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    mounts = []
    for i in range(3100):
        d = inputs / f"p{i}"
        d.mkdir()
        mounts.append((str(d), f"/kiln/store/p{i}"))
    with pytest.raises(SandboxError) as e:
        executor.run(_spec(rootfs, build_dir, 0, mounts), io.BytesIO())
    assert "3100 inputs" in str(e.value) and "about 2900 inputs" in str(e.value)
