"""Per-build overhead of kiln's sandbox, side by side with bare bubblewrap and no sandbox.

Runs N trivial builds (``busybox sh -c 'echo i > $out/x'``) four ways, interleaved over
several repetitions, and prints ms/run (min and median over reps) and ratios:

  plain     busybox sh from Python's subprocess (no sandbox)
  bare      ``bwrap --unshare-all --ro-bind ... --proc --dev --tmpfs`` from Python's subprocess
  shell     the same bare bwrap from a busybox shell loop (what the Nix anchor row d measured)
  kiln      ``BwrapExecutor.run`` (full flag set, generated /etc files, limits, log streaming)

Target: kiln - bare <= 5 ms/run. Anchor: /work/shared/anchors/nix/RESULTS.md row d
(bare bwrap from a shell loop 4.91 ms/step; Nix sandboxed build 10.1 ms/drv).

Usage: python bench/bench_sandbox.py [-n 200] [-r 3]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

from kiln.sandbox import BwrapExecutor, SandboxSpec

BUSYBOX = "/bin/busybox"
NIX_BARE_BWRAP_MS = 4.91
NIX_SANDBOX_BUILD_MS = 10.1


def make_rootfs(root: str) -> None:
    ubin = os.path.join(root, "usr", "bin")
    os.makedirs(ubin)
    shutil.copy2(BUSYBOX, os.path.join(ubin, "busybox"))
    os.symlink("busybox", os.path.join(ubin, "sh"))
    os.symlink("usr/bin", os.path.join(root, "bin"))


def _cpu() -> float:
    """User+system seconds of this process and its reaped children."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="runs per batch")
    ap.add_argument("-r", type=int, default=3, help="repetitions of each batch")
    a = ap.parse_args()
    bwrap = shutil.which("bwrap") or "/usr/bin/bwrap"
    ex = BwrapExecutor(bwrap)
    with tempfile.TemporaryDirectory(prefix="kiln-bench-sandbox-") as tmp:
        root = os.path.join(tmp, "root")
        make_rootfs(root)
        build, out = os.path.join(tmp, "build"), os.path.join(tmp, "out")
        os.mkdir(build)
        os.mkdir(out)
        dest = "/kiln/store/00000000000000000000000000000000-bench"
        script = 'echo {i} > "$out/x"'

        def plain() -> None:
            for i in range(a.n):
                subprocess.run([BUSYBOX, "sh", "-c", script.format(i=i)], env={"out": out}, check=True)

        bare_flags = [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", f"{root}/usr", "/usr"]
        bare_flags += ["--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        bare_flags += [
            "--bind",
            build,
            "/build",
            "--bind",
            out,
            dest,
            "--setenv",
            "out",
            dest,
            "--chdir",
            "/build",
        ]

        def bare() -> None:
            for i in range(a.n):
                subprocess.run([*bare_flags, "/bin/sh", "-c", script.format(i=i)], check=True)

        loop = f"i=0; while [ $i -lt {a.n} ]; do {' '.join(bare_flags)} /bin/sh -c 'echo $i > $out/x' || exit 1; i=$((i+1)); done"

        def shell() -> None:
            subprocess.run([BUSYBOX, "sh", "-c", loop], env={"out": dest}, check=True)

        def kiln() -> None:
            log = io.BytesIO()
            for i in range(a.n):
                spec = SandboxSpec(
                    argv=("/bin/sh", "-c", script.format(i=i)),
                    build_dir=build,
                    env={"out": dest},
                    rw_mounts=((out, dest),),
                    rootfs=root,
                    timeout=60,
                    max_silent=60,
                    max_log_bytes=1 << 20,
                )
                r = ex.run(spec, log)
                if not r.ok:
                    raise SystemExit(f"kiln run failed: {r} {log.getvalue()!r}")

        ways: dict[str, Callable[[], None]] = {"plain": plain, "bare": bare, "shell": shell, "kiln": kiln}
        times: dict[str, list[float]] = {k: [] for k in ways}
        cpu: dict[str, list[float]] = {k: [] for k in ways}
        for _ in range(a.r):
            for name, fn in ways.items():
                c0, t0 = _cpu(), time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1000 / a.n)
                cpu[name].append((_cpu() - c0) * 1000 / a.n)
            with open(os.path.join(out, "x")) as f:
                assert f.read() == f"{a.n - 1}\n"

    load = os.getloadavg()[0]
    print(f"{ex.version}, {a.n} runs x {a.r} reps, load average {load:.1f} on {os.cpu_count()} CPUs")
    print("         wall ms/run (min / median)   CPU ms/run (parent + children, min)")
    for name, ts in times.items():
        print(f"  {name:<6} {min(ts):6.2f} / {statistics.median(ts):6.2f}            {min(cpu[name]):6.2f}")
    k, b, s = (statistics.median(times[x]) for x in ("kiln", "bare", "shell"))
    print(
        f"kiln overhead over bare bwrap (subprocess): {k - b:+.2f} ms/run, ratio {k / b:.2f}  (target <= +5 ms)"
    )
    print(f"kiln vs bare bwrap from a shell loop:       {k - s:+.2f} ms/run, ratio {k / s:.2f}")
    print(
        f"anchor (Nix row d): bare bwrap {NIX_BARE_BWRAP_MS} ms/step -> ratio kiln/anchor {k / NIX_BARE_BWRAP_MS:.2f}"
    )
    print(
        f"anchor (Nix row d): sandboxed nix build {NIX_SANDBOX_BUILD_MS} ms/drv -> ratio kiln/nix {k / NIX_SANDBOX_BUILD_MS:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
