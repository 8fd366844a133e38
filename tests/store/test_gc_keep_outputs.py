"""GC keeps what building a rooted result again takes (Nix's ``keep-outputs``): the
outputs of every live ``.drv`` — a live result keeps its ``.drv``, that keeps its input
``.drv`` files, and those keep their outputs (the toolchain, the fetched sources). A
collection deleted them all, so the next one-line recipe change fetched and unpacked
everything again (or failed, once a mirror dropped a locked package). Config.json's
``keep_outputs: false`` or ``kiln store gc --no-keep-outputs`` gives the old collection;
``kiln store why`` follows the same edges."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from storekit import make_tree

from kiln.store.errors import StoreError
from kiln.store.hashes import Hash
from kiln.store.localstore import LocalStore
from kiln.store.paths import make_output_path


def kiln(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True)


def _built(store: LocalStore, tmp: Path, name: str, drv: str, refs: tuple[str, ...] = ()) -> str:
    path = str(make_output_path(Hash.sha256_of(name.encode()), "out", name, store.store_dir))
    tree = make_tree(tmp / "trees" / name, {"f": f"{name}\n"})
    return store.register_built(path, tree, refs, drv).path


def _graph(store: LocalStore, tmp: Path) -> dict[str, str]:
    """app (rooted) <- app.drv -> tool.drv -> tool (a build-time input of app only)."""
    tool_drv = store.add_text("tool.drv", b"Derive(tool)", []).path
    app_drv = store.add_text("app.drv", b"Derive(app)", [tool_drv]).path
    tool = _built(store, tmp, "tool", tool_drv)
    app = _built(store, tmp, "app", app_drv)
    store.add_root("app", app)
    return {"tool_drv": tool_drv, "app_drv": app_drv, "tool": tool, "app": app}


def test_a_rooted_result_keeps_its_build_inputs(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with LocalStore.open(root) as store:
        g = _graph(store, tmp_path)
        r = store.gc()
        assert r.deleted == ()
        assert all(store.is_valid(p) for p in g.values())
    # ``why`` names the chain through the .drv files
    out = kiln("store", "why", "--store", str(root), g["tool"])
    assert out.returncode == 0, out.stderr
    assert g["app_drv"] in out.stdout and g["tool_drv"] in out.stdout
    # one collection without: the build-time input goes, the result and its .drv stay
    out = kiln("store", "gc", "--store", str(root), "--no-keep-outputs")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [g["tool"]]
    with LocalStore.open(root) as store:
        assert not store.is_valid(g["tool"])
        assert all(store.is_valid(g[k]) for k in ("app", "app_drv", "tool_drv"))


def test_the_store_config_can_turn_it_off(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with LocalStore.open(root) as store:
        g = _graph(store, tmp_path)
    cfg = root / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "keep_outputs": False}))
    with LocalStore.open(root) as store:
        assert store.gc(dry_run=True).deleted == (g["tool"],)
        assert store.gc(dry_run=True, keep_outputs=True).deleted == ()
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "keep_outputs": "yes"}))
    with pytest.raises(StoreError, match="'keep_outputs' must be true"):
        LocalStore.open(root)
