"""kiln eval / show-derivation / path / graph, run as the user runs them."""

from __future__ import annotations

import json
import os

from lang_helpers import run_kiln

from kiln.lang import evaluate_file
from kiln.store.drvparse import parse


def test_eval_text_and_json(features, tmp_path, monkeypatch):
    monkeypatch.chdir(features)
    ev = evaluate_file("variants.recipe")
    r = run_kiln(["eval", "variants.recipe"], cwd=features, home=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == ["lib", "app", "static_lib"]
    assert lines[0].split()[1:] == [ev.drv_paths["lib"], "->", ev.packages["lib"].output_path()]
    j = run_kiln(["eval", "variants.recipe", "--json"], cwd=features, home=tmp_path)
    data = json.loads(j.stdout)
    assert data["app"] == {
        "name": "app",
        "drvPath": ev.drv_paths["app"],
        "outPath": ev.packages["app"].output_path(),
    }
    one = run_kiln(["eval", "variants.recipe", "lib(static = true)", "--json"], cwd=features, home=tmp_path)
    assert json.loads(one.stdout)["lib(static = true)"]["drvPath"] == ev.drv_paths["static_lib"]


def test_eval_of_a_value_that_is_no_package_prints_it_as_json(tmp_path):
    """``kiln eval FILE EXPR`` of a string, list or record (a ``let`` being debugged)
    prints its value, as ``nix eval --json`` would: it said "is a string, not a
    package"; a package inside is its output path. ``kiln path`` still wants a package."""
    (tmp_path / ".kilnroot").write_text("")
    (tmp_path / "v.recipe").write_text(
        'let flags = "-O2"\nlet r = { x = 1, l = [true, "${flags} -g"], p = p }\n'
        'package p {\n  build = "echo ${flags}"\n}\n'
    )
    out = run_kiln(["eval", "v.recipe", "p"], cwd=tmp_path, home=tmp_path).stdout.split()[-1]
    r = run_kiln(["eval", "v.recipe", "r"], cwd=tmp_path, home=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout) == {"l": [True, "-O2 -g"], "p": out, "x": 1}, r.stderr
    r = run_kiln(["eval", "v.recipe", 'flags + " x"', "--json"], cwd=tmp_path, home=tmp_path)
    assert json.loads(r.stdout) == "-O2 x", r.stderr
    assert (
        json.loads(run_kiln(["eval", "v.recipe", "p.build"], cwd=tmp_path, home=tmp_path).stdout)
        == "echo -O2"
    )
    r = run_kiln(["path", "v.recipe", "flags"], cwd=tmp_path, home=tmp_path)
    assert r.returncode == 1 and "'flags' is a string, not a package" in r.stderr, r.stderr
    r = run_kiln(["eval", "v.recipe", "flags", "--write"], cwd=tmp_path, home=tmp_path)
    assert r.returncode == 1 and "no package" in r.stderr, r.stderr


def test_path(features, tmp_path, monkeypatch, hash_sources):
    monkeypatch.chdir(features)
    ev = evaluate_file("source.recipe", add_source=hash_sources)
    r = run_kiln(["path", "source.recipe", "local"], cwd=features, home=tmp_path)
    assert r.returncode == 0, r.stderr
    # the CLI adds the source to the local store; the path is the one computed without it
    assert r.stdout.strip() == ev.packages["local"].output_path()
    assert (tmp_path / "kiln" / "store").is_dir() or any(tmp_path.iterdir())


def test_show_derivation(features, tmp_path):
    r = run_kiln(["show-derivation", "context.recipe", "user"], cwd=features, home=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    ((path, d),) = data.items()
    assert path.endswith("-user.drv")
    assert d["builder"] == "/bin/bash" and d["args"][:3] == ["-euo", "pipefail", "-c"]
    assert d["env"]["out"] == d["outputs"]["out"]["path"]
    assert len(d["inputDrvs"]) == 2 and d["system"] == "x86_64-linux"
    rec = run_kiln(["show-derivation", "-r", "context.recipe", "user"], cwd=features, home=tmp_path)
    assert len(json.loads(rec.stdout)) == 3
    fod = json.loads(run_kiln(["show-derivation", "fetch.recipe", "hex"], cwd=features, home=tmp_path).stdout)
    ((_, f),) = fod.items()
    assert f["outputs"]["out"]["hashAlgo"] == "sha256" and len(f["outputs"]["out"]["hash"]) == 64
    aterm = run_kiln(["show-derivation", "--aterm", "context.recipe", "user"], cwd=features, home=tmp_path)
    drv = parse(aterm.stdout.strip(), "user")
    assert drv.env_map["name"] == "user"
    (tmp_path / "x-user.drv").write_text(aterm.stdout.strip())
    again = run_kiln(["show-derivation", str(tmp_path / "x-user.drv")], cwd=features, home=tmp_path)
    assert list(json.loads(again.stdout).values()) == [d]
    loose = run_kiln(["show-derivation", "-r", str(tmp_path / "x-user.drv")], cwd=features, home=tmp_path)
    assert loose.returncode == 1 and "-r needs a .drv path in the store" in loose.stderr


def test_write_then_show_by_store_path(features, tmp_path):
    w = run_kiln(["eval", "--write", "context.recipe", "user"], cwd=features, home=tmp_path)
    assert w.returncode == 0, w.stderr
    drv = w.stdout.split()[1]
    r = run_kiln(["show-derivation", drv], cwd=features, home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert list(json.loads(r.stdout)) == [drv]
    # -r follows inputDrvs through the store, as it does through the recipe (it was ignored)
    rec = run_kiln(["show-derivation", "-r", drv], cwd=features, home=tmp_path)
    assert rec.returncode == 0, rec.stderr
    from_recipe = run_kiln(["show-derivation", "-r", "context.recipe", "user"], cwd=features, home=tmp_path)
    assert json.loads(rec.stdout) == json.loads(from_recipe.stdout) and len(json.loads(rec.stdout)) == 3


def test_graph(features, tmp_path):
    r = run_kiln(["graph", "rootfs.recipe", "uses_toolchain"], cwd=features, home=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("uses_toolchain  /kiln/store/")
    assert lines[1].startswith("└── toolchain  ")
    assert any("bash_5.2.15-2+b13_amd64.deb" in ln for ln in lines[2:])
    dot = run_kiln(["graph", "--dot", "rootfs.recipe", "uses_toolchain"], cwd=features, home=tmp_path)
    assert dot.stdout.startswith("digraph kiln {") and dot.stdout.count("->") == 3
    shared = run_kiln(["graph", "variants.recipe", "app"], cwd=features, home=tmp_path)
    assert shared.returncode == 0


def test_cli_cache_is_used(features, tmp_path):
    assert run_kiln(["store", "init"], cwd=features, home=tmp_path).returncode == 0  # (only a store's)
    a = run_kiln(["eval", "values.recipe"], cwd=features, home=tmp_path)
    assert (tmp_path / "eval-cache").is_dir()
    b = run_kiln(["eval", "values.recipe"], cwd=features, home=tmp_path)
    assert a.stdout == b.stdout


def test_usage_errors(features, tmp_path):
    r = run_kiln(["path", "values.recipe", "nope"], cwd=features, home=tmp_path)
    assert r.returncode == 1 and "unknown name 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = run_kiln(["path", "values.recipe", "rec"], cwd=features, home=tmp_path)
    assert r.returncode == 1 and "is a record, not a package" in r.stderr
    r = run_kiln(["eval", "missing.recipe"], cwd=features, home=tmp_path)
    assert r.returncode == 1 and "does not exist" in r.stderr


def test_plain_eval_skips_argparse_with_the_same_arguments():
    """``kiln eval FILE`` is parsed by hand (see cmd_eval.main): the namespace must be
    exactly what argparse would have made."""
    from kiln import cmd_eval

    assert vars(cmd_eval._plain_eval_args("x.recipe")) == vars(
        cmd_eval._parser("eval").parse_args(["x.recipe"])
    )


def test_cached_cli_eval_imports_little(features, tmp_path):
    """A cached ``kiln eval FILE`` imports neither the parser nor argparse, pathlib,
    typing, json, threading or hashlib (each costs milliseconds a hit does not need).
    Only what kiln itself loads counts: site (.pth hooks, the editable-install finder)
    may have imported some of them already."""
    import subprocess
    import sys

    code = (
        "import sys; before = set(sys.modules); from kiln.main import main; main(['eval', 'values.recipe']);"
        "heavy = ['lark', 'kiln.lang.parser', 'argparse', 'pathlib', 'typing', 'json', 'threading', 'hashlib'];"
        "print('LOADED', *[m for m in heavy if m in sys.modules and m not in before], file=sys.stderr)"
    )

    def run() -> list[str]:
        r = subprocess.run(
            [sys.executable, "-c", code],
            cwd=features,
            env={**os.environ, "KILN_HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            check=True,
        )
        return r.stderr.split("LOADED")[1].split()

    from kiln.store.localstore import LocalStore

    LocalStore.open(tmp_path).close()  # (evaluating uses the cache of an existing store only)
    assert "lark" in run()  # the first run evaluates
    assert run() == []


def test_write_adds_each_drv_once(tmp_path):
    """``kiln eval --write`` of a whole set writes the union of the closures once, in
    dependency order (it used to walk every package's closure separately: quadratic,
    90 s for 1,000 packages)."""
    from test_lang_cache import gen

    from kiln.buildglue import write_drvs
    from kiln.store.localstore import LocalStore

    (tmp_path / "set.recipe").write_text(gen(60))
    ev = evaluate_file(tmp_path / "set.recipe")
    roots = list(ev.drv_paths.values())
    order = ev.closure(*roots)
    assert len(order) == len(set(order)) == 120  # 60 packages + their 60 sources
    pos = {p: i for i, p in enumerate(order)}
    assert all(pos[d] < pos[p] for p in order for d, _ in ev.drvs[p].input_drvs)
    assert set(ev.closure(roots[0], roots[-1])) == set(ev.closure(roots[-1]))  # p0 is in p59's closure

    store = LocalStore.open(tmp_path / "home")
    added: list[str] = []
    real_add_texts = store.add_texts

    def counting_add_texts(items):
        infos = real_add_texts(items)
        added.extend(i.path for i in infos)
        return infos

    store.add_texts = counting_add_texts  # type: ignore[method-assign]
    write_drvs(store, ev, roots)
    assert added == order
    write_drvs(store, ev, roots)  # all valid now: nothing is added again
    assert added == order
    r = run_kiln(["eval", "--write", "set.recipe"], cwd=tmp_path, home=tmp_path / "home2")
    assert r.returncode == 0, r.stderr
    other = LocalStore.open(tmp_path / "home2")
    assert all(other.is_valid(p) for p in order)


def test_write_drvs_roots_what_it_skips(tmp_path):
    """Derivations already valid are temp-rooted by ``write_drvs`` before it checks them
    (a GC in another process must not delete one it skipped and a new one refers to)."""
    from test_lang_cache import gen

    from kiln.buildglue import write_drvs
    from kiln.store.localstore import LocalStore

    (tmp_path / "set.recipe").write_text(gen(5))
    ev = evaluate_file(tmp_path / "set.recipe")
    roots = list(ev.drv_paths.values())
    first = LocalStore.open(tmp_path / "home")
    write_drvs(first, ev, roots)  # registers them all (temp roots of `first`)
    second = LocalStore.open(tmp_path / "home")
    write_drvs(second, ev, roots)  # all valid: nothing written, but rooted
    first.close()
    gc = LocalStore.open(tmp_path / "home")
    assert gc.gc().deleted == ()
    second.close()
    assert set(gc.gc().deleted) == set(ev.closure(*roots))
    gc.close()


def test_no_home_directory_is_an_error(monkeypatch):
    """Without KILN_HOME, XDG_DATA_HOME or a home directory, kiln says so instead of
    using a directory named '~' under the current one."""
    import pytest

    from kiln.common import default_home_dir
    from kiln.store.errors import KilnError

    monkeypatch.delenv("KILN_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setattr(os.path, "expanduser", lambda p: p)
    with pytest.raises(KilnError, match="home directory"):
        default_home_dir()


def test_eval_never_falls_back_from_a_damaged_store_config(features, tmp_path):
    """A truncated or invalid config.json made eval print paths for /kiln/store (exit 0);
    an invalid --store-dir gave malformed paths."""
    home = tmp_path / "home"
    assert run_kiln(["store", "init", "--store-dir", "/a/store"], cwd=features, home=home).returncode == 0
    ok = run_kiln(["path", "context.recipe", "user"], cwd=features, home=home)
    assert ok.returncode == 0 and ok.stdout.startswith("/a/store/"), ok.stderr
    for text, says in (
        ('{"store_dir": "/a/st', "cannot read store config"),
        ('{"store_dir": "/a/store/"}', "ends with '/'"),
    ):
        (home / "config.json").write_text(text)
        r = run_kiln(["path", "context.recipe", "user"], cwd=features, home=home)
        assert r.returncode == 1 and says in r.stderr and not r.stdout, r.stderr
    r = run_kiln(["path", "--store-dir", "rel", "context.recipe", "user"], cwd=features, home=tmp_path / "h2")
    assert r.returncode == 1 and "--store-dir" in r.stderr and "not absolute" in r.stderr, r.stderr
