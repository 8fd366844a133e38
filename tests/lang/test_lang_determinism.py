"""Same recipes → same .drv and output paths, whatever the working directory, physical
store location, environment, locale or hash seed."""

from __future__ import annotations

import json
import os
import shutil

from lang_helpers import run_kiln

from kiln.lang import evaluate_file


def test_paths_do_not_depend_on_the_process(features, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    settings = [
        (features, {"PYTHONHASHSEED": "0", "LC_ALL": "C"}, tmp_path / "h1"),
        (other, {"PYTHONHASHSEED": "12345", "LC_ALL": "C.UTF-8", "TZ": "Asia/Tokyo"}, tmp_path / "h2"),
        (
            features / "lib",
            {"PYTHONHASHSEED": "987654321", "LANG": "de_DE.UTF-8", "HOME": str(tmp_path)},
            tmp_path / "h3",
        ),
    ]
    results = []
    for cwd, env, home in settings:
        recipe = str(features / "context.recipe") if cwd != features else "context.recipe"
        r = run_kiln(["path", recipe, "user", "--no-cache"], cwd=cwd, env_extra=env, home=home)
        assert r.returncode == 0, r.stderr
        j = run_kiln(["eval", "--json", recipe, "--no-cache"], cwd=cwd, env_extra=env, home=home)
        assert j.returncode == 0, j.stderr
        v = run_kiln(
            ["path", str(features / "variants.recipe"), "app", "--no-cache"],
            cwd=cwd,
            env_extra=env,
            home=home,
        )
        results.append((r.stdout, json.loads(j.stdout), v.stdout))
    assert results[0] == results[1] == results[2]
    assert results[0][0].startswith("/kiln/store/")


def test_local_source_path_does_not_depend_on_location(features, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(features, moved)
    a = run_kiln(["path", "source.recipe", "local"], cwd=features, home=tmp_path / "ha")
    b = run_kiln(
        ["path", "source.recipe", "local"], cwd=moved, home=tmp_path / "hb", env_extra={"PYTHONHASHSEED": "7"}
    )
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout


def test_a_recipe_named_through_a_symlink_gives_the_same_paths(tmp_path):
    # Relative imports and path sources resolve from the real file, as Nix does.
    real = tmp_path / "real" / "sub"
    real.mkdir(parents=True)
    (real / "lib.recipe").write_text('let v = "1"\n')
    (real / "data").mkdir()
    (real / "data" / "f").write_text("d")
    (real / "r.recipe").write_text('import "lib.recipe"\npackage q { src = path "./data", build = "${v}" }\n')
    os.symlink(real / "r.recipe", tmp_path / "link.recipe")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    from lang_helpers import source_hasher

    add = source_hasher()
    want = evaluate_file(real / "r.recipe", add_source=add).drv_paths
    assert evaluate_file(tmp_path / "link.recipe", add_source=add).drv_paths == want
    assert evaluate_file(tmp_path / "alias" / "sub" / "r.recipe", add_source=add).drv_paths == want


def test_the_same_file_imported_by_two_spellings_is_one_import(tmp_path):
    (tmp_path / "lib.recipe").write_text('let v = "1"\n')
    (tmp_path / "r.recipe").write_text(
        'import "lib.recipe"\nimport "./lib.recipe"\npackage q { build = v }\n'
    )
    assert "q" in evaluate_file(tmp_path / "r.recipe").drv_paths


#: Python decodes file names as ASCII here (no UTF-8 mode, no locale coercion), as it
#: would in any non-UTF-8 locale (``en_US.ISO-8859-1``): kiln must still read them as UTF-8
ASCII_NAMES = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


def test_non_ascii_file_names_mean_the_same_in_every_locale(tmp_path):
    """A ``.kilnignore`` pattern with non-ASCII characters, a ``path`` to a directory with
    a non-ASCII name and a source named after one give the same store paths whatever the
    locale decodes file names as (they did not: the patterns were UTF-8 and the names the
    locale's, so ``brouillé*`` kept ``brouillé.txt`` there, and ``path "../projé"`` was
    named ``proj__`` instead of ``proj_``)."""
    proj = tmp_path / "projé"
    (proj / "données").mkdir(parents=True)
    (proj / ".kilnroot").write_text("")
    (proj / "données" / ".kilnignore").write_text("brouillé*\ncaf?.bak\n")
    for name in ("keep.txt", "brouillé.txt", "café.bak"):
        (proj / "données" / name).write_text(name)
    (proj / "p.recipe").write_text(
        'package p {\n  src = path "./données"\n  whole = path "../projé"\n  build = "cp -r $src $out"\n}\n'
    )
    runs = []
    for env in ({}, ASCII_NAMES):
        r = run_kiln(
            ["show-derivation", "p.recipe", "p", "--no-cache"], cwd=proj, env_extra=env, home=tmp_path / "h"
        )
        assert r.returncode == 0, r.stderr
        runs.append(r.stdout)
    assert runs[0] == runs[1]
    assert "-proj_" in runs[0] and "-proj__" not in runs[0], runs[0]  # é is one character, one _
    assert "-donn_es" in runs[0], runs[0]


def test_the_checkout_directory_name_does_not_enter_store_paths(tmp_path):
    """``path "."`` (or ``".."``, ``"./x/.."``) is named ``source``, not after the directory
    the checkout sits in: ``~/app`` and ``~/app-main`` give the same paths (they did not).
    A path that names its last component keeps it (``path "./src"`` is ``src``)."""
    recipe = (
        "package p {\n"
        '  whole = path "."\n  up = path "./src/.."\n  src = path "./src"\n'
        '  build = "cp -r $whole $out"\n}\n'
    )
    outs = []
    for checkout in ("app", "app-main"):
        proj = tmp_path / checkout
        (proj / "src").mkdir(parents=True)
        (proj / ".kilnroot").write_text("")
        (proj / "src" / "f").write_text("f\n")
        (proj / "p.recipe").write_text(recipe)
        r = run_kiln(["show-derivation", "p.recipe", "p", "--no-cache"], cwd=proj, home=tmp_path / "h")
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    assert outs[0] == outs[1]
    assert "-source" in outs[0] and "-src" in outs[0] and "-app" not in outs[0], outs[0]
