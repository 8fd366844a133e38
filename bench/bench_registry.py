#!/usr/bin/env python3
"""Registry benchmarks, loopback only, kiln side by side with its anchors in one run.

1. push N small paths (default 1,000) into ``kiln serve --dir``            target ≤ 3 s
2. mirror-sync those N paths into a fresh directory                        target ≤ 3 s
3. narinfo GET/s: ``kiln serve`` vs nginx on the same directory (wrk, 64 connections,
   rotating over all N narinfos)                                           target ≥ 0.5× nginx
4. blob MB/s: one large incompressible blob, same comparison               target ≥ 0.8× nginx
5. error check: 256 connections, narinfos and blobs, both servers          target: zero errors
6. ``kiln copy --from`` vs ``nix copy --from`` the same kiln registry, N paths, into
   fresh stores                                                            target ≥ 2× faster

Usage: python bench/bench_registry.py [--paths 1000] [--duration 5] [--workers 2] [--keep DIR]
All servers listen on 127.0.0.1 and are stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from kiln.registry.client import open_client
from kiln.registry.mirror import sync
from kiln.registry.publish import publish_index
from kiln.registry.push import prepare, push_prepared
from kiln.registry.storage import open_storage
from kiln.store.keyfiles import write_public_key, write_secret_key
from kiln.store.localstore import LocalStore
from kiln.store.signing import SecretKey

PROCS: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str) -> None:
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/nix-cache-info", timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server at {url} did not come up")


def kiln_serve(reg: Path, workers: int, *extra: str) -> str:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "kiln",
        "serve",
        "--dir",
        str(reg),
        "--listen",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        *extra,
    ]
    PROCS.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
    url = f"http://127.0.0.1:{port}"
    wait_up(url)
    return url


def nginx(reg: Path, tmp: Path, workers: int) -> str:
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes {workers};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
  client_body_temp_path {tmp}/b; proxy_temp_path {tmp}/p; fastcgi_temp_path {tmp}/f; uwsgi_temp_path {tmp}/u; scgi_temp_path {tmp}/s;
  types {{ text/x-nix-narinfo narinfo; }}
  default_type application/octet-stream;
  server {{ listen 127.0.0.1:{port}; root {reg}; location ~ /\\. {{ deny all; }} }}
}}
""")
    PROCS.append(subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)]))
    url = f"http://127.0.0.1:{port}"
    wait_up(url)
    return url


def stop_all() -> None:
    for p in PROCS:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
    for p in PROCS:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)


def wrk(url: str, conns: int, duration: int, lua: Path | None = None) -> dict[str, float]:
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--timeout", "10s"]
    if lua:
        cmd += ["-s", str(lua)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True).stdout
    res = {"rps": 0.0, "bytes_s": 0.0, "errors": 0.0, "non2xx": 0.0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    if m:
        res["bytes_s"] = float(m.group(1)) * {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}[m.group(2)]
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["errors"] = float(sum(int(x) for x in m.groups()))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["non2xx"] = float(m.group(1))
    return res


def timed(label: str, fn):  # noqa: ANN001, ANN201
    t0 = time.perf_counter()
    r = fn()
    dt = time.perf_counter() - t0
    print(f"  {label:<58} {dt:8.3f} s", flush=True)
    return dt, r


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--paths", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="alternating wrk rounds per server (best kept)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--blob-mib", type=int, default=64)
    ap.add_argument("--keep", type=Path, default=None)
    ap.add_argument("--skip", default="", help="comma-separated: http,copy")
    ap.add_argument("--no-fsync", action="store_true", help="run kiln serve with --no-fsync")
    ap.add_argument("--copy-reps", type=int, default=5, help="rounds of the copy comparison")
    args = ap.parse_args()
    base = Path(args.keep or tempfile.mkdtemp(prefix="kiln-bench-reg-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, base)
    finally:
        stop_all()
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


def run(args: argparse.Namespace, base: Path) -> int:
    n = args.paths
    sk = SecretKey.generate("bench-1")
    write_secret_key(base / "sk", sk, overwrite=True)
    write_public_key(base / "pk", sk.public(), overwrite=True)
    print(
        f"# setup: {n} small paths + one {args.blob_mib} MiB path in a kiln store (store dir /nix/store)",
        flush=True,
    )
    store = LocalStore.open(base / "store", store_dir="/nix/store")
    t0 = time.perf_counter()
    paths = []
    for i in range(n):
        paths.append(
            store.add_text(f"bench-{i}.txt", f"registry bench path {i} {base}\n".encode() * 8, []).path
        )
    big_src = base / "bigsrc"
    big_src.mkdir(exist_ok=True)
    (big_src / "blob").write_bytes(os.urandom(args.blob_mib << 20))
    big = store.add_path(big_src, "bench-big").path
    print(f"#   store setup took {time.perf_counter() - t0:.1f} s", flush=True)
    figures: dict[str, float] = {}
    ok = True

    print("# push / mirror", flush=True)
    reg = base / "reg"
    subprocess.run(
        [sys.executable, "-m", "kiln", "registry", "init", "--dir", str(reg), "--store-dir", "/nix/store"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    tok = subprocess.run(
        [sys.executable, "-m", "kiln", "registry", "token", "create", "--scope", "write", "--dir", str(reg)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    extra = ["--no-fsync"] if args.no_fsync else []
    url = kiln_serve(
        reg, args.workers, "--trusted-key", str(base / "pk"), "--index-key", str(base / "sk"), *extra
    )
    items = prepare(store, paths, sk)
    import asyncio

    async def do_push(items=items):  # noqa: ANN001, ANN202
        async with open_client(url, tok, 16) as c:
            return await push_prepared(items, c, 16, False)

    t, rep = timed(
        f"push {n} paths to kiln serve (fsync {'off' if args.no_fsync else 'on'})",
        lambda: asyncio.run(do_push()),
    )
    assert rep.pushed == n, rep
    figures["push_s"] = t
    ok &= t <= 3.0
    t, rep = timed("push again (nothing to do, 1 batched check)", lambda: asyncio.run(do_push()))
    big_items = prepare(store, [big], sk)
    asyncio.run(do_push(big_items))
    publish_index(open_storage(reg), sk)
    root = (reg / "index/root.json").read_bytes()
    t, srep = timed(
        f"mirror sync {n + 1} paths from kiln serve into a fresh dir",
        lambda: sync(url, base / "mirror", root=root, trusted=[sk.public()], progress=False),
    )
    figures["mirror_s"] = t
    ok &= t <= 3.0 * (n + 1) / max(n, 1) + 0.5  # the big blob rides along (≈ 64 MiB)
    t, srep2 = timed(
        "mirror sync again (transfers nothing)", lambda: sync(url, base / "mirror", progress=False)
    )
    assert srep2.blobs_fetched == 0

    skip = set(args.skip.split(","))
    if "http" not in skip:
        ok &= bench_http(args, base, reg, url, store, paths, big, figures)
    if "copy" not in skip:
        ok &= bench_copy(args, base, url, sk, paths, figures)
    print(
        "# summary: "
        + ", ".join(f"{k}={v:.2f}" for k, v in figures.items())
        + ("  ALL TARGETS MET" if ok else "  SOME TARGETS MISSED")
    )
    return 0


def bench_http(args, base, reg, url, store, paths, big, figures) -> bool:  # noqa: ANN001
    ok = True
    print(
        f"# HTTP: kiln serve --workers {args.workers} vs nginx worker_processes {args.workers}, wrk -t2",
        flush=True,
    )
    ng = nginx(reg, base / "nginx", args.workers)
    lua = base / "narinfos.lua"
    hps = [p.split("/")[-1][:32] for p in paths]
    lua.write_text(
        "local p = {" + ",".join(f'"/{h}.narinfo"' for h in hps) + "}\nlocal i = 0\n"
        "request = function() i = i + 1; return wrk.format('GET', p[(i % #p) + 1]) end\n"
    )
    info = store.query(big)
    blob = f"/blobs/sha256:{info.file_hash.hex}"
    # Alternate the servers and keep each one's best round: other load on the machine
    # then hurts both sides alike instead of whichever happened to run during a spike.
    res: dict[tuple[str, str], dict[str, float]] = {}
    tests = {
        "narinfo": (64, "/", lua, args.duration),
        "blob": (64, blob, None, args.duration),
        "narinfo256": (256, "/", lua, args.duration),
        "blob256": (256, blob, None, max(2, args.duration // 2)),
    }
    for kind, (conns, path, script, dur) in tests.items():
        for _round in range(args.rounds):
            for name, u in (("kiln", url), ("nginx", ng)):
                r = wrk(u + path, conns, dur, script)
                prev = res.get((name, kind))
                key = "rps" if kind.startswith("narinfo") else "bytes_s"
                if prev is None or r[key] > prev[key]:
                    errs = (prev or {}).get("errors", 0.0) + (prev or {}).get("non2xx", 0.0)
                    r["errors"] += errs
                    res[(name, kind)] = r
                else:
                    prev["errors"] += r["errors"] + r["non2xx"]
    for kind, unit in (("narinfo", "req/s"), ("blob", "MiB/s")):
        k, g = res[("kiln", kind)], res[("nginx", kind)]
        kv, gv = (k["rps"], g["rps"]) if unit == "req/s" else (k["bytes_s"] / 2**20, g["bytes_s"] / 2**20)
        ratio = kv / gv if gv else 0.0
        target = 0.5 if kind == "narinfo" else 0.8
        figures[f"{kind}_ratio"] = ratio
        ok &= ratio >= target
        print(
            f"  {kind:<8} 64 conns: kiln {kv:12.1f} {unit}   nginx {gv:12.1f} {unit}   ratio {ratio:.2f} (target ≥ {target})"
        )
    for name in ("kiln", "nginx"):
        for kind in ("narinfo", "blob", "narinfo256", "blob256"):
            r = res[(name, kind)]
            errs = int(r["errors"] + r["non2xx"])
            if name == "kiln":
                ok &= errs == 0
            conns = 256 if kind.endswith("256") else 64
            print(f"  errors {name:<6} {kind.rstrip('256'):<8} {conns:>3} conns: {errs}")

    return ok


def run_quiet(cmd: list[str], env: dict | None = None) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed: {r.stderr[-2000:]}")


def bench_copy(args, base, url, sk, paths, figures) -> bool:  # noqa: ANN001
    """``--copy-reps`` rounds, kiln and Nix taking turns, each into a fresh store; Nix
    with a fresh narinfo disk cache each time (XDG_CACHE_HOME), as kiln keeps none.
    Medians are compared."""
    n = len(paths)
    print(
        f"# kiln copy --from vs nix copy --from the same kiln registry ({n} paths, fresh stores, "
        f"{args.copy_reps} rounds taking turns)",
        flush=True,
    )
    have_nix = shutil.which("nix") is not None
    kts: list[float] = []
    nts: list[float] = []
    for r in range(args.copy_reps):
        kdest = base / f"kdest{r}"
        LocalStore.open(kdest, store_dir="/nix/store").close()  # kiln copy needs the /nix/store dir
        kt, _ = timed(
            f"kiln copy --from {n} paths (round {r + 1})",
            lambda kdest=kdest: run_quiet(
                [sys.executable, "-m", "kiln", "copy", "--store", str(kdest), "--from", url, "--to", "store", *paths],
                env={**os.environ, "KILN_TRUSTED_KEYS": sk.public().to_text()},
            ),
        )  # fmt: skip
        kts.append(kt)
        if have_nix:
            cache = base / f"nixcache{r}"
            nt, _ = timed(
                f"nix copy --from {n} paths (round {r + 1})",
                lambda r=r, cache=cache: run_quiet(
                    ["nix", "copy", "--extra-experimental-features", "nix-command", "--option", "require-sigs", "true",
                     "--option", "trusted-public-keys", sk.public().to_text(), "--option", "narinfo-cache-negative-ttl", "0",
                     "--from", url, "--to", f"local?root={base / f'ndest{r}'}", *paths],
                    env={**os.environ, "XDG_CACHE_HOME": str(cache)},
                ),
            )  # fmt: skip
            nts.append(nt)
    if not have_nix:
        return True
    kt, nt = statistics.median(kts), statistics.median(nts)
    figures["copy_speedup"] = nt / kt
    print(f"  medians: kiln {kt:.3f} s, nix {nt:.3f} s")
    print(f"  kiln copy is {nt / kt:.2f}x faster than nix copy (target ≥ 2x)")
    return nt / kt >= 2.0


if __name__ == "__main__":
    sys.exit(main())
