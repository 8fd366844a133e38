"""``kiln build --dry-run``: what a build would build and fetch, doing none of it (as
``nix-build --dry-run``; it was an unknown option). Real stores, a real registry
directory and real builds in bubblewrap for the "before" and "after"."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from buildkit import Graph, add_busybox

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store.build import Builder, BuildOptions
from kiln.store.keyfiles import write_public_key, write_secret_key
from kiln.store.localstore import LocalStore
from kiln.store.signing import SecretKey

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]


def _kiln(store: LocalStore, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args, "--store", str(store.root)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _chain(g: Graph) -> tuple[str, str]:
    """``top`` depending on ``dep`` (.drv paths)."""
    dep, _ = g.drv("dep", "mkdir $out; echo dep > $out/d")
    top, _ = g.drv("top", "mkdir $out; cat $in0/d > $out/t", inputs=[dep])
    return dep, top


def test_it_lists_what_would_be_built_and_does_nothing(store, graph) -> None:
    dep, top = _chain(graph)
    r = _kiln(store, "build", top, "--dry-run", "--no-root")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["would build 2 derivation(s):", f"  {dep}", f"  {top}"]
    assert not store.is_valid(graph.drvs[top].output_path())
    Builder(store, BwrapExecutor(), BuildOptions(), say=lambda m: None).realise([dep])
    r = _kiln(store, "build", top, "--dry-run", "--json")
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["build"] == [top] and doc["fetch"] == [], doc
    Builder(store, BwrapExecutor(), BuildOptions(), say=lambda m: None).realise([top])
    r = _kiln(store, "build", top, "--dry-run")
    assert r.stdout == "nothing to build or fetch: every output is valid\n", r.stdout
    assert not (store.root / "gcroots" / "top").exists()  # (nothing rooted)
    r = _kiln(store, "build", top, "--dry-run", "--check")
    assert r.returncode == 2 and "--dry-run" in r.stderr


def test_what_a_substituter_has_is_listed_as_fetched(store, graph, tmp_path: Path) -> None:
    dep, top = _chain(graph)
    Builder(store, BwrapExecutor(), BuildOptions(), say=lambda m: None).realise([top])
    key = SecretKey.generate("dry-1")
    write_secret_key(tmp_path / "k.sec", key)
    write_public_key(tmp_path / "k.pub", key.public())
    reg = tmp_path / "reg"
    out_dep, out_top = graph.drvs[dep].output_path(), graph.drvs[top].output_path()
    r = _kiln(store, "push", out_dep, "--to", f"file://{reg}", "--sign-key", str(tmp_path / "k.sec"))
    assert r.returncode == 0, r.stderr
    other = LocalStore.open(tmp_path / "other")
    g2 = Graph(other, add_busybox(other, tmp_path / "o"))
    assert _chain(g2) == (dep, top)  # (the same derivations, written into the other store)
    sub = ("--substituter", f"file://{reg}", "--trusted-key", str(tmp_path / "k.pub"))
    r = _kiln(other, "build", top, "--dry-run", *sub)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["would build 1 derivation(s):", f"  {top}"], lines
    assert (
        lines[2].startswith("would fetch 1 path(s) (") and lines[3] == f"  {out_dep}  (from file://{reg})"
    ), lines
    assert not other.is_valid(out_dep) and not other.is_valid(out_top)
    doc = json.loads(_kiln(other, "build", top, "--dry-run", "--json", *sub).stdout)
    assert doc["fetch"] == [
        {"path": out_dep, "from": f"file://{reg}", "downloadSize": doc["fetch"][0]["downloadSize"]}
    ]
    other.close()
