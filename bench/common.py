"""Helpers shared by the benchmarks: timing subprocesses, medians, ratio tables.

Benchmarks are scripts, not tests: each compares kiln with its anchor (Nix, bwrap,
nginx, tar|zstd) side by side in one run on the same data and prints ratios. Every
timed command runs in a fresh process, as a user would run it; kiln is invoked through
its real console script (not a pyenv shim, which would add ~0.2 s of shell to every
call), with byte-code compiled. Where a benchmark times kiln's start-up against a
native tool (``bench_nar``, ``bench_ingest``, ``bench_builds``), it runs kiln as ``pip
install`` gives it to a user (``user_kiln``): a venv without system site-packages and a
regular install of this checkout, so none of this development environment's ``.pth``
hooks (~10 ms of certifi) or the editable-install finder (~12 ms) run at each start.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KILN = str(Path(sys.executable).with_name("kiln"))
USER_VENV = Path("/tmp/kilnbench/user-venv")
NIX_CONFIG = "\n".join(
    [
        "sandbox = true",
        "sandbox-fallback = false",
        "build-users-group = nixbld",
        "experimental-features = nix-command",
        "substituters =",
        "require-sigs = false",
        "max-jobs = auto",
        "cores = 1",
    ]
)


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ, NIX_CONFIG=NIX_CONFIG, **extra)
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    return e


def compile_kiln() -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            *(str(REPO / d) for d in ("cli", "store", "lang", "sandbox", "registry")),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def run(cmd: list[str] | str, environ: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(
        cmd, env=environ or env(), capture_output=True, text=True, shell=isinstance(cmd, str), **kw
    )
    if r.returncode != 0:
        raise SystemExit(
            f"benchmark command failed ({r.returncode}): {cmd}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
        )
    return r


def timeit(fn: Callable[[], object], reps: int, pre: Callable[[], object] | None = None) -> list[float]:
    """Wall-clock seconds of ``fn`` over ``reps`` runs; ``pre`` runs untimed before each."""
    out = []
    for _ in range(reps):
        if pre:
            pre()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def interleaved(
    cases: dict[str, tuple[Callable[[], object], Callable[[], object] | None]], reps: int
) -> dict[str, list[float]]:
    """``timeit`` for several cases, rep by rep in turn (A B C, A B C, ...), so that a
    machine whose speed drifts during the run affects every case alike. ``cases`` maps
    a label to ``(fn, pre)``."""
    out: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(reps):
        for k, (fn, pre) in cases.items():
            out[k] += timeit(fn, 1, pre)
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def row(label: str, xs: list[float], per: int = 0) -> str:
    extra = f"  {med(xs) * 1000 / per:8.2f} ms/item" if per else ""
    return f"  {label:<58} median {med(xs):8.3f} s  min {min(xs):8.3f} s{extra}"


def user_install(venv: Path = USER_VENV) -> Path | None:
    """``venv`` holding a regular (non-editable) install of this checkout, made on first
    use (dependencies from the package index or pip's cache) and refreshed from the
    checkout (``--no-deps``) on every call. None if pip fails, with the reason printed."""
    import shutil

    had_build_dir = (REPO / "build").exists()
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    try:
        if not (venv / "bin" / "kiln").exists():
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True
            )
            subprocess.run([*pip, str(REPO)], check=True, capture_output=True)
        else:
            subprocess.run(
                [*pip, "--no-deps", "--force-reinstall", str(REPO)], check=True, capture_output=True
            )
    except subprocess.CalledProcessError as e:
        print(
            f"(kiln as installed by pip is unavailable: {' '.join(e.cmd[:4])} failed: {e.stderr.decode()[-300:]})"
        )
        return None
    finally:
        if not had_build_dir:  # setuptools' in-tree build dir, made by the install
            shutil.rmtree(REPO / "build", ignore_errors=True)
    return venv


def user_kiln(checkout: bool = False) -> tuple[str, str, str]:
    """(kiln console script, its python, label): the ``user_install`` venv's, or this
    checkout's (``checkout``, or when the venv cannot be made; byte-code compiled)."""
    if not checkout and (venv := user_install()) is not None:
        return str(venv / "bin" / "kiln"), str(venv / "bin" / "python"), "pip-installed venv"
    compile_kiln()
    return KILN, sys.executable, "this checkout (editable install)"
