"""Nothing of a build outlives ``run``: not even a build that ptraces bwrap's init, clears
its parent-death signal and forges the monitor's exit (``ptrace_escape.py``, run by the
host's python3 with / as the rootfs). Before kiln held a pidfd on the sandbox's init,
``run`` returned "ok" while the build ran on, free to rewrite an output kiln was
registering and signing."""

from __future__ import annotations

import io
import os
import platform
import time
from pathlib import Path

import pytest

from kiln.sandbox import SandboxSpec

SCRIPT = Path(__file__).with_name("ptrace_escape.py")
DELAY = 3.0  # (under a loaded machine, starting python3 in the sandbox takes its share)

pytestmark = [
    pytest.mark.skipif(
        not os.path.exists("/usr/bin/python3"), reason="needs the host's python3 as a toolchain"
    ),
    pytest.mark.skipif(platform.machine() != "x86_64", reason="the injector is x86_64 code"),
]


def test_a_build_that_forges_its_end_is_killed_with_it(executor, build_dir: Path, tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "escape.py").write_bytes(SCRIPT.read_bytes())
    spec = SandboxSpec(
        argv=("/usr/bin/python3", "/tools/escape.py", str(DELAY)),
        build_dir=str(build_dir),
        rootfs="/",
        ro_mounts=((str(tools), "/tools"),),
    )
    log = io.BytesIO()
    t0 = time.monotonic()
    res = executor.run(spec, log)
    took = time.monotonic() - t0
    time.sleep(DELAY + 1.5)
    assert not (build_dir / "late").exists(), f"the build ran on after run() returned ({res}, {took:.1f} s)"
    assert took < DELAY, (res, took, log.getvalue())
    # and the forged end is no success
    assert (res.reason, res.ok) == ("killed", False), res
    assert b"outlived bwrap" in log.getvalue()


def test_an_ordinary_build_is_not_accused(sh) -> None:
    """The init of a build that ends normally is already ending when bwrap is reaped: it
    is not reported as having outlived bwrap, and background processes the build left
    die with it at once."""
    for _ in range(20):
        t0 = time.monotonic()
        r = sh("sleep 30 & echo started")
        assert r.result.ok and r.log == "started\n", r
        assert time.monotonic() - t0 < 5.0  # (far from the sleep's 30 s, with room for a busy machine)


def test_a_kiln_with_fds_above_1024_still_builds(sh) -> None:
    """fds beyond select()'s 1024 (a kiln whose soft limit is high, holding many files)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2048:
        pytest.skip("the hard fd limit is below 2048")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    held = []
    try:
        while len(held) < 1100:
            held.append(os.open("/dev/null", os.O_RDONLY))
        r = sh("echo ok")
        assert r.result.ok and r.log == "ok\n", r
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
