#!/usr/bin/env python3
"""Builds: kiln versus Nix (sandbox on) on graphs of trivial derivations, side by side.

Same work on both sides, as ../shared/anchors/nix/d_builds.sh: N derivations whose
builder is a static busybox in the store; a chain (each copies its predecessor and
appends a line) and a fan-in (N leaves + one aggregator). Build only: the derivations
are written to the store untimed (kiln: Derivation + add_text; Nix: nix-instantiate),
then `kiln build <drv>` and `nix-store -r <drv>` are timed, taking turns with the bare
loop rep by rep. A fresh salt per rep makes every derivation new. Also: the same N steps under a bare `bwrap --unshare-all` (the
per-build overhead floor), a no-op rebuild of an evaluated recipe (evaluation cache
hit), and `--check` of one derivation versus building it.

Usage: bench/bench_builds.py [--n 200] [--reps 3] [--checkout]

kiln runs as ``pip install`` gives it to a user (``common.user_kiln``), unless
``--checkout``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, env, interleaved, med, row, run, timeit, user_kiln  # noqa: E402

from kiln.store.derivation import Derivation, Output, drv_path, finalize  # noqa: E402
from kiln.store.localstore import LocalStore  # noqa: E402

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
GRAPH_NIX = REPO.parent / "shared" / "anchors" / "nix" / "graph.nix"


def kiln_graph(store: LocalStore, bb: str, n: int, shape: str, salt: str) -> str:
    drvs: dict[str, Derivation] = {}
    memo: dict = {}
    sh = f"{bb}/busybox"

    def mk(name: str, script: str, inputs: list[str]) -> str:
        e = {"name": name, "salt": salt, "out": ""}
        if shape == "chain" and inputs:
            e["prev"] = drvs[inputs[0]].output_path()
        if shape == "fanin" and inputs:
            e["leaves"] = " ".join(drvs[p].output_path() for p in inputs)
        d = Derivation.make(
            name,
            outputs={"out": Output()},
            input_drvs={p: ["out"] for p in inputs},
            input_srcs=[bb],
            builder=sh,
            args=["sh", "-c", script],
            env=e,
            store_dir=store.store_dir,
        )
        d = finalize(d, drvs.__getitem__, memo)
        p = str(drv_path(d))
        store.add_text(f"{name}.drv", d.serialize().encode(), [str(r) for r in d.references()])
        drvs[p] = d
        return p

    if shape == "chain":
        top = mk("chain-0", "echo 0 > $out", [])
        for i in range(1, n):
            top = mk(f"chain-{i}", f"{sh} cat $prev > $out; echo {i} >> $out", [top])
        return top
    leaves = [mk(f"leaf-{i}", f"echo {i} > $out", []) for i in range(n)]
    return mk("fanin", f"{sh} cat $leaves > $out", leaves)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--checkout", action="store_true", help="run this checkout's kiln, not a pip-installed one"
    )
    a = ap.parse_args()
    kiln, _, how = user_kiln(a.checkout)
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-builds-"))
    home = work / "home"
    e = env(KILN_HOME=str(home))
    store = LocalStore.open(home)
    bbdir = work / "bbdir"
    bbdir.mkdir()
    shutil.copy(BUSYBOX, bbdir / "busybox")
    bb = store.add_path(bbdir, "busybox-static").path
    have_nix = shutil.which("nix-store") is not None and GRAPH_NIX.exists()
    results: dict[str, list[float]] = {}
    print(f"# builds: N={a.n}, reps={a.reps}, kiln store {home}; kiln: {kiln} ({how})")

    # bare bwrap floor: the chain's N steps (the first echoes, each later one runs
    # `busybox cat` of its predecessor and appends a line), each under a bare
    # bwrap --unshare-all, as in the anchor's d_builds.sh loop_bwrap_all.sh
    loop = work / "loop.sh"
    w = work / "loop"
    bw = (
        f"bwrap --unshare-all --die-with-parent --ro-bind {bbdir} /bb --bind {w} /w --proc /proc "
        "--dev /dev --tmpfs /tmp --chdir /tmp --clearenv --setenv PATH /bb"
    )
    loop.write_text(
        f"set -e; rm -rf {w}; mkdir -p {w}\n"
        f'{bw} /bb/busybox sh -c "echo 0 > /w/0"\n'
        f"for i in $(seq 1 {a.n - 1}); do "
        f'{bw} /bb/busybox sh -c "/bb/busybox cat /w/$((i-1)) > /w/$i; echo $i >> /w/$i"; done\n'
    )

    def nix_instantiate(shape: str, box: dict) -> None:
        box["ndrv"] = run(
            [
                "nix-instantiate",
                str(GRAPH_NIX),
                "--arg",
                "bbdir",
                str(bbdir),
                "--arg",
                "n",
                str(a.n),
                "--argstr",
                "shape",
                shape,
                "--argstr",
                "salt",
                uuid.uuid4().hex,
            ]
        ).stdout.strip()

    # kiln, Nix and the bare loop take turns rep by rep (common.interleaved): this
    # machine's speed drifts by tens of percent within minutes
    cases: dict = {}
    labels: dict[str, str] = {}
    for shape, jobs in (("chain", 1), ("fanin", 2)):
        box: dict[str, str] = {}
        cases[f"kiln {shape}"] = (
            lambda box=box, jobs=jobs: run([kiln, "build", "-j", str(jobs), box["drv"]], e),
            lambda shape=shape, box=box: box.update(drv=kiln_graph(store, bb, a.n, shape, uuid.uuid4().hex)),
        )
        labels[f"kiln {shape}"] = f"kiln build {shape} N={a.n} -j{jobs} (build only)"
        if have_nix:
            cases[f"nix {shape}"] = (
                lambda box=box, jobs=jobs: run(["nix-store", "-r", box["ndrv"], "-j", str(jobs)]),
                lambda shape=shape, box=box: nix_instantiate(shape, box),
            )
            labels[f"nix {shape}"] = f"nix-store -r {shape} N={a.n} -j{jobs} sandbox=true"
        if shape == "chain":
            cases["bwrap"] = (lambda: run(["bash", str(loop)]), None)
            labels["bwrap"] = f"bare bwrap --unshare-all, the chain's {a.n} steps"
    results.update(interleaved(cases, a.reps))
    for k, label in labels.items():
        print(row(label, results[k], a.n))

    # no-op: recipe whose outputs are valid (evaluation cache hit); --check vs build of one drv
    one = kiln_graph(store, bb, 1, "chain", "noop")
    run([kiln, "build", one], e)
    results["noop drv"] = timeit(lambda: run([kiln, "build", one], e), 10)
    print(row("kiln build <valid drv> (no-op)", results["noop drv"]))
    recipe = work / "noop.recipe"
    recipe.write_text('package noop {\n  build = "echo > $out"\n}\n')
    run([kiln, "eval", str(recipe)], e)  # warm the evaluation cache
    results["noop eval"] = timeit(lambda: run([kiln, "path", str(recipe), "noop"], e), 10)
    print(row("kiln path <recipe> (evaluation cache hit)", results["noop eval"]))
    box2: dict[str, str] = {}
    results["one build"] = timeit(
        lambda: run([kiln, "build", box2["d"]], e),
        a.reps * 3,
        lambda: box2.update(d=kiln_graph(store, bb, 1, "chain", uuid.uuid4().hex)),
    )
    print(row("kiln build of 1 trivial drv", results["one build"]))
    results["check"] = timeit(lambda: run([kiln, "build", "--check", box2["d"]], e), a.reps * 3)
    print(row("kiln build --check of the same drv", results["check"]))

    print("\n# ratios (medians)")
    n = a.n
    k_chain = med(results["kiln chain"]) / n * 1000
    floor = med(results["bwrap"]) / n * 1000
    print(
        f"  kiln per-derivation (chain): {k_chain:.2f} ms; bare bwrap per step: {floor:.2f} ms; "
        f"kiln overhead over bare bwrap: {k_chain - floor:.2f} ms (target <= 5 ms)"
    )
    if have_nix:
        for shape in ("chain", "fanin"):
            r = med(results[f"kiln {shape}"]) / med(results[f"nix {shape}"])
            print(f"  {shape}: kiln / nix wall time = {r:.2f}  (target <= 1.0)")
    print(f"  no-op build of a valid drv: {med(results['noop drv']):.3f} s (target <= 0.15 s)")
    print(f"  --check / build of one drv: {med(results['check']) / med(results['one build']):.2f}")
    store.close()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    raise SystemExit(main())
