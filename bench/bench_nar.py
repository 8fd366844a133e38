#!/usr/bin/env python3
"""NAR hashing, dumping and restoring: kiln side by side with Nix, in one run.

Usage: python bench/bench_nar.py [--reps N] [--tree DIR] [--checkout]

kiln runs as ``pip install`` gives it to a user (``common.user_kiln``), unless
``--checkout``.

Generates the anchor test tree (2,000 files, 200 MiB, /work/shared/anchors/nix/gen_tree.py)
at /tmp/kilnbench/tree unless it exists, warms the page cache, then times each command
``--reps`` times (default 5; kiln and Nix alternate rep by rep) as a fresh process (so kiln pays interpreter start-up, as a
``kiln`` command would) and prints min / median and the kiln/Nix ratio of medians.
The in-process time of ``hash_path`` is printed as well, to separate Python start-up
from the hashing itself. Before timing it checks that kiln and Nix agree on the hash.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import user_kiln  # noqa: E402

GEN_TREE = "/work/shared/anchors/nix/gen_tree.py"
WORK = Path("/tmp/kilnbench")
PY = sys.executable


def timed(cmd: str, reps: int, pre: str | None = None) -> list[float]:
    """Wall-clock seconds of ``bash -c cmd`` per rep; ``pre`` runs untimed before each."""
    out = []
    for _ in range(reps):
        if pre:
            subprocess.run(["bash", "-c", pre], check=True)
        t0 = time.perf_counter()
        p = subprocess.run(["bash", "-c", cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t1 = time.perf_counter()
        if p.returncode:
            sys.exit(f"FAILED: {cmd}\n{p.stderr.decode()}")
        out.append(t1 - t0)
    return out


def in_process(setup: str, stmt: str, reps: int, pre: str | None = None) -> list[float]:
    """Seconds ``stmt`` takes inside a fresh interpreter (after ``setup``), per rep."""
    code = f"import time\n{setup}\nt = time.perf_counter()\n{stmt}\nprint(time.perf_counter() - t)"
    out = []
    for _ in range(reps):
        if pre:
            subprocess.run(["bash", "-c", pre], check=True)
        out.append(float(subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tree", type=Path, default=WORK / "tree")
    ap.add_argument(
        "--checkout", action="store_true", help="run this checkout's kiln, not a pip-installed one"
    )
    args = ap.parse_args()
    global PY
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    _, PY, how = user_kiln(args.checkout)
    print(f"# kiln: {PY} ({how})")
    for tool in ("nix-hash", "nix-store"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: install Debian's nix-bin")
    tree: Path = args.tree
    if not tree.exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, GEN_TREE, str(tree), "2000", "200"], check=True)
    nar = WORK / "tree.nar"
    subprocess.run(f"nix-store --dump {tree} > {nar}", shell=True, check=True)
    subprocess.run(f"cat {tree}/*/* > /dev/null", shell=True, check=True)  # warm cache
    nar_size = nar.stat().st_size

    # correctness first
    want = subprocess.run(
        ["nix-hash", "--type", "sha256", "--base32", str(tree)], capture_output=True, text=True, check=True
    ).stdout.strip()
    got = subprocess.run(
        [PY, "-c", f"from kiln.store.nar import hash_path; print(hash_path({str(tree)!r})[0].nix32)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if got != want:
        sys.exit(f"hash mismatch: kiln {got} vs nix-hash {want}")

    r = args.reps
    dest_k, dest_n = WORK / "restored-kiln", WORK / "restored-nix"
    kiln_dump = f"{PY} -c 'import sys; from kiln.store.nar import dump; w=sys.stdout.buffer.write; [w(c) for c in dump(\"{tree}\")]'"
    kiln_restore = f'{PY} -c \'from kiln.store.nar import restore; restore(open("{nar}", "rb"), "{dest_k}")\''
    rows = [
        # (label, kiln cmd, nix label, nix cmd, pre)
        (
            "NAR hash",
            f"{PY} -c 'from kiln.store.nar import hash_path; hash_path(\"{tree}\")'",
            "nix-hash --type sha256",
            f"nix-hash --type sha256 {tree}",
            None,
        ),
        (
            "NAR hash (dump | sha256sum)",
            f"{kiln_dump} | sha256sum",
            "nix-store --dump | sha256sum",
            f"nix-store --dump {tree} | sha256sum",
            None,
        ),
        (
            "NAR dump > /dev/null",
            f"{kiln_dump} > /dev/null",
            "nix-store --dump > /dev/null",
            f"nix-store --dump {tree} > /dev/null",
            None,
        ),
        (
            "restore tree.nar",
            kiln_restore,
            "nix-store --restore < tree.nar",
            f"nix-store --restore {dest_n} < {nar}",
            f"rm -rf {dest_k} {dest_n}",
        ),
    ]
    floor = timed(f"{PY} -c 'import kiln.store.nar'", r)
    print(f"tree: {tree} (NAR {nar_size:,} bytes); reps={r}; hashes agree: {want}")
    print("fresh processes (what a user of each command waits for):")
    print(
        f"{'what':<30} {'kiln min':>9} {'kiln med':>9} {'nix min':>9} {'nix med':>9} {'kiln/nix':>9}  nix command"
    )
    for label, kcmd, nlabel, ncmd, pre in rows:
        k, n = [], []
        for _ in range(r):  # interleaved rep by rep so load changes hit both alike
            k += timed(kcmd, 1, pre)
            n += timed(ncmd, 1, pre)
        km, nm = statistics.median(k), statistics.median(n)
        print(
            f"{label:<30} {min(k):>8.3f}s {km:>8.3f}s {min(n):>8.3f}s {nm:>8.3f}s {km / nm:>8.2f}x  {nlabel}"
        )
    print(f"{'python + import floor':<30} {min(floor):>8.3f}s {statistics.median(floor):>8.3f}s")
    setup = "from kiln.store import nar; import os"
    inproc = [
        ("hash_path", in_process(setup, f"nar.hash_path({str(tree)!r})", r)),
        (
            "dump -> /dev/null",
            in_process(
                setup + "; fd = os.open('/dev/null', os.O_WRONLY)",
                f"for c in nar.dump({str(tree)!r}): os.write(fd, c)",
                r,
            ),
        ),
        (
            "restore tree.nar",
            in_process(
                setup, f"nar.restore(open({str(nar)!r}, 'rb'), {str(dest_k)!r})", r, f"rm -rf {dest_k}"
            ),
        ),
    ]
    print("kiln in-process (interpreter start-up excluded):")
    mib = nar_size / 2**20
    for label, ts in inproc:
        med = statistics.median(ts)
        print(f"{label:<30} {min(ts):>8.3f}s {med:>8.3f}s  ({mib / med:,.0f} MiB/s)")
    subprocess.run(["rm", "-rf", str(dest_k), str(dest_n)], check=True)
    os.unlink(nar)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
