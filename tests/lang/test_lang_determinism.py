"""Same recipes → same .drv and output paths, whatever the working directory, physical
store location, environment, locale or hash seed."""

from __future__ import annotations

import json
import shutil

from lang_helpers import run_kiln


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
