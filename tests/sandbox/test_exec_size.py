"""Linux's limits on a program's arguments and environment (``execsize``): a build whose
environment variable, build script or whole command and environment ``execve`` would
refuse (E2BIG) is refused by kiln before bwrap starts, naming what is too large, its
size and the limit, and saying what to do. A recipe's fields become environment
variables and its build script an argument of ``bash -c``: a 1 MB field evaluated, then
failed to build with "cannot start the sandbox /usr/bin/bwrap: [Errno 7] Argument list
too long", naming nothing.

Each limit is found exactly: the largest build kiln takes runs in a real sandbox, one
byte more is refused by kiln, and by the kernel too when kiln's check is skipped."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from kiln.sandbox import BwrapExecutor, SandboxError, SandboxSpec, SandboxUnavailable
from kiln.sandbox.execsize import MAX_ARG_STRLEN, POINTER, arg_limit, stack_limit
from kiln.sandbox.spec import build_env

_E2BIG = "Argument list too long"


def _spec(rootfs: Path, build_dir: Path, env: dict[str, str], script: str = "echo ran") -> SandboxSpec:
    return SandboxSpec(
        argv=("/bin/sh", "-c", script),
        build_dir=str(build_dir),
        env={"PATH": "/bin", **env},
        rootfs=str(rootfs),
    )


def _run(executor: BwrapExecutor, spec: SandboxSpec) -> tuple[str, bytes]:
    log = io.BytesIO()
    return executor.run(spec, log).reason, log.getvalue()


def _unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a build kiln would refuse reach bwrap: the kernel's own verdict."""
    monkeypatch.setattr("kiln.sandbox.execsize.check", lambda spec, bwrap: None)


def test_one_environment_variable_over_the_limit_is_named(
    executor: BwrapExecutor, rootfs: Path, build_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fits = MAX_ARG_STRLEN - len("BLOB=") - 1  # 'BLOB=' + value + NUL: exactly the limit
    assert _run(executor, _spec(rootfs, build_dir, {"BLOB": "x" * fits})) == ("ok", b"ran\n")
    over = _spec(rootfs, build_dir, {"BLOB": "x" * (fits + 1)})
    with pytest.raises(SandboxError) as e:
        executor.run(over, io.BytesIO())
    msg = str(e.value)
    assert msg.startswith("the build's environment variable 'BLOB' is too large for Linux to pass")
    assert f"{MAX_ARG_STRLEN + 1:,} bytes" in msg and f"at most {MAX_ARG_STRLEN:,}" in msg
    assert "E2BIG" in msg and "a `path` source or a fetched file" in msg
    _unchecked(monkeypatch)
    reason, log = _run(executor, over)
    assert reason == "failed" and _E2BIG.encode() in log, log


def test_a_build_script_over_the_limit_is_named(
    executor: BwrapExecutor, rootfs: Path, build_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = "echo ran #"
    fits = head + "x" * (MAX_ARG_STRLEN - 1 - len(head))  # + NUL: exactly the limit
    assert _run(executor, _spec(rootfs, build_dir, {}, fits)) == ("ok", b"ran\n")
    over = _spec(rootfs, build_dir, {}, fits + "x")
    with pytest.raises(SandboxError) as e:
        executor.run(over, io.BytesIO())
    msg = str(e.value)
    assert msg.startswith("the build script (the argument of -c) is too large for Linux to pass")
    assert f"{MAX_ARG_STRLEN + 1:,} bytes" in msg and f"at most {MAX_ARG_STRLEN:,}" in msg
    _unchecked(monkeypatch)  # bwrap itself cannot start: the bare errno kiln gave before
    with pytest.raises(SandboxUnavailable, match=f"cannot start the sandbox .*{_E2BIG}"):
        executor.run(over, io.BytesIO())


def _filling(rootfs: Path, build_dir: Path, extra: int) -> SandboxSpec:
    """A build whose command and environment take exactly ``arg_limit`` bytes plus
    ``extra``, in variables each under the one-variable limit."""
    base = _spec(rootfs, build_dir, {})
    env = [f"{k}={v}" for k, v in build_env(base).items()]
    used = len(b"/bin/sh\0") + sum(len(a) + 1 + POINTER for a in base.argv)
    used += sum(len(s.encode()) + 1 + POINTER for s in env)
    room = arg_limit(stack_limit()) - used + extra
    big: dict[str, str] = {}
    while room > 0:
        k = f"V{len(big):02d}"
        n = min(100_000, room - len(k) - 2 - POINTER)  # 'K=' + value + NUL + pointer
        big[k] = "y" * n
        room -= len(k) + 2 + n + POINTER
    assert room == 0
    return _spec(rootfs, build_dir, big)


def test_a_command_and_environment_over_the_total_limit_are_refused(
    executor: BwrapExecutor, rootfs: Path, build_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = arg_limit(stack_limit())
    assert _run(executor, _filling(rootfs, build_dir, 0)) == ("ok", b"ran\n")
    over = _filling(rootfs, build_dir, 1)
    with pytest.raises(SandboxError) as e:
        executor.run(over, io.BytesIO())
    msg = str(e.value)
    assert msg.startswith("the build's command and environment are too large for Linux to pass")
    assert f"{limit + 1:,} bytes in all" in msg and f"at most {limit:,}" in msg
    assert "The largest: variable 'V00' 100,005" in msg and "E2BIG" in msg
    _unchecked(monkeypatch)
    reason, log = _run(executor, over)
    assert reason == "failed" and _E2BIG.encode() in log, log
