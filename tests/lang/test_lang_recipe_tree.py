"""The recipe tree (``kiln.lang.roots``): imports and ``path`` sources stay inside the
entry file's directory or the nearest one above it holding ``.kilnroot`` (or
``KILN_RECIPE_ROOT``). Before, ``path
"../home/keys/default.sec"`` in a recipe copied the store's signing key into a signed,
world-readable store path at evaluation time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lang_helpers import run_kiln

from kiln.lang import RecipeError, evaluate_file


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path/proj`` (the recipes, cwd) beside ``tmp_path/secret/key``."""
    monkeypatch.delenv("KILN_RECIPE_ROOT", raising=False)
    monkeypatch.delenv("SUDO_UID", raising=False)  # (the tests may run under sudo)
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("SECRET\n")
    (tmp_path / "secret" / "x.recipe").write_text('package x { build = "" }\n')
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "a.c").write_text("int main;\n")
    monkeypatch.chdir(proj)
    return proj


def _added() -> tuple[list[str], object]:
    seen: list[str] = []

    def add(src: Path, name: str) -> str:
        seen.append(os.fspath(src))
        return "/kiln/store/" + "a" * 32 + "-" + name

    return seen, add


@pytest.mark.parametrize(
    ("expr", "col"),
    [('path "../secret/key"', 14), ('path { path = "../secret/key", name = "x" }', 23)],
)
def test_a_path_outside_the_tree_is_refused_before_anything_is_read(tree: Path, expr: str, col: int) -> None:
    (tree / "r.recipe").write_text(f'let k = {expr}\npackage p {{ build = "cp ${{k}} $out" }}\n')
    seen, add = _added()
    with pytest.raises(RecipeError) as e:
        evaluate_file("r.recipe", add_source=add).attributes()
    assert (
        str(e.value)
        .splitlines()[0]
        .startswith(f"r.recipe:1:{col}: path '../secret/key' leads outside the recipe tree")
    )
    assert str(tree.parent / "secret" / "key") in str(e.value) and "KILN_RECIPE_ROOT" in str(e.value)
    assert seen == []


def test_an_absolute_path_and_a_symlink_out_are_refused(tree: Path) -> None:
    (tree / "out").symlink_to(tree.parent / "secret")
    for expr in ('"/etc/hostname"', '"./out/key"', f'"{tree.parent}/secret"'):
        (tree / "r.recipe").write_text(f'package p {{ build = "${{path {expr}}}" }}\n')
        seen, add = _added()
        with pytest.raises(RecipeError, match="leads outside the recipe tree"):
            evaluate_file("r.recipe", add_source=add).attributes()
        assert seen == []


def test_a_symlink_in_the_tree_is_a_source_of_its_own_not_followed(tree: Path) -> None:
    """``path "./out"`` where ``out`` links out of the tree adds the link itself (as
    ``kiln store add`` does), which reveals nothing: allowed."""
    (tree / "out").symlink_to(tree.parent / "secret")
    (tree / "r.recipe").write_text('package p { build = "${path "./out"} ${path "./src"} ${path "."}" }\n')
    seen, add = _added()
    evaluate_file("r.recipe", add_source=add).attributes()
    assert sorted(seen) == sorted([str(tree / "out"), str(tree / "src"), str(tree)])


def test_an_import_outside_the_tree_is_refused(tree: Path) -> None:
    (tree / "r.recipe").write_text('import "../secret/x.recipe"\npackage p { build = "" }\n')
    with pytest.raises(RecipeError) as e:
        evaluate_file("r.recipe").attributes()
    assert (
        str(e.value)
        .splitlines()[0]
        .startswith("r.recipe:1:1: import '../secret/x.recipe' leads outside the recipe tree")
    )


def test_a_kilnroot_marker_makes_the_tree(tree: Path) -> None:
    """A recipe in ``pkgs/`` of a project with a ``.kilnroot`` at its top may import
    ``../lib/`` and take sources from ``../src``; nothing above the marker."""
    (tree / ".kilnroot").write_text("")
    (tree / "lib").mkdir()
    (tree / "lib" / "common.recipe").write_text('let flags = "-O2"\n')
    (tree / "pkgs").mkdir()
    (tree / "pkgs" / "p.recipe").write_text(
        'import "../lib/common.recipe"\npackage p { build = "${path "../src"} ${flags}" }\n'
    )
    seen, add = _added()
    evaluate_file("pkgs/p.recipe", add_source=add).attributes()
    assert seen == [str(tree / "src")]
    (tree / "pkgs" / "q.recipe").write_text('package q { build = "${path "../../secret"}" }\n')
    with pytest.raises(RecipeError, match=f"leads outside the recipe tree {tree} "):
        evaluate_file("pkgs/q.recipe", add_source=add).attributes()


def test_a_git_work_tree_above_does_not_widen_the_tree(tree: Path) -> None:
    """A ``.git`` above an unpacked tarball (a dotfiles repository in ``$HOME``) would
    hand its recipes everything below it: only a ``.kilnroot`` marks a tree."""
    (tree.parent / ".git").mkdir()
    (tree / "r.recipe").write_text('package p { build = "${path "../secret/key"}" }\n')
    seen, add = _added()
    with pytest.raises(RecipeError, match=f"leads outside the recipe tree {tree} "):
        evaluate_file("r.recipe", add_source=add).attributes()
    assert seen == []


def test_command_line_expressions_are_confined_too(tree: Path) -> None:
    (tree / "r.recipe").write_text('package p { build = "" }\n')
    ev = evaluate_file("r.recipe")
    with pytest.raises(RecipeError, match="leads outside the recipe tree"):
        ev.select('path "../secret/key"')


def test_kiln_recipe_root_widens_the_tree(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / "r.recipe").write_text(
        'import "../secret/x.recipe"\npackage p { build = "${path "../secret/key"}" }\n'
    )
    monkeypatch.setenv("KILN_RECIPE_ROOT", str(tree.parent))
    seen, add = _added()
    assert "p" in evaluate_file("r.recipe", add_source=add).attributes()
    assert seen == [str(tree.parent / "secret" / "key")]


def test_the_eval_cache_does_not_serve_a_wider_tree_s_evaluation(tree: Path, tmp_path: Path) -> None:
    """An evaluation allowed by ``KILN_RECIPE_ROOT`` is cached; without it, the same
    recipe must fail, not be served from the cache."""
    (tree / "r.recipe").write_text('import "../secret/x.recipe"\npackage p { build = "" }\n')
    home = tmp_path / "home"
    assert run_kiln(["store", "init"], cwd=tree, home=home).returncode == 0  # (only a store's cache)
    wide = run_kiln(["eval", "r.recipe"], cwd=tree, home=home, env_extra={"KILN_RECIPE_ROOT": str(tmp_path)})
    assert wide.returncode == 0, wide.stderr
    assert any((home / "eval-cache").iterdir())
    narrow = run_kiln(["eval", "r.recipe"], cwd=tree, home=home)
    assert narrow.returncode == 1 and "leads outside the recipe tree" in narrow.stderr, narrow.stderr


def test_a_source_in_the_key_directory_is_refused_even_inside_the_tree(tree: Path) -> None:
    """A project keeping its store in ``.kiln`` (inside the recipe tree): the store's
    keys are still out of reach; the project itself is fine once ``.kiln`` is ignored."""
    home = tree / ".kiln"
    assert run_kiln(["key", "generate", "k"], cwd=tree, home=home).returncode == 0
    assert run_kiln(["store", "init"], cwd=tree, home=home).returncode == 0  # (sources go in a store)
    (tree / "r.recipe").write_text('package p { build = "${path "./.kiln/keys"}" }\n')
    r = run_kiln(["eval", "r.recipe", "--no-cache"], cwd=tree, home=home)
    assert r.returncode == 1 and "in the key directory" in r.stderr and "r.recipe:1:" in r.stderr, r.stderr
    (tree / "r.recipe").write_text('package p { build = "${path "."}" }\n')
    r = run_kiln(["eval", "r.recipe", "--no-cache"], cwd=tree, home=home)
    assert r.returncode == 1 and "holds the signing key or key directory" in r.stderr, r.stderr
    (tree / ".kilnignore").write_text(".kiln\n")
    r = run_kiln(["eval", "r.recipe", "--no-cache"], cwd=tree, home=home)
    assert r.returncode == 0, r.stderr
    assert not any("SECRET" in p.name for p in (home / "kiln" / "store").iterdir())


def test_the_key_kiln_sign_key_names_is_refused_inside_the_tree(tree: Path) -> None:
    """A CI signing key kept in the repository (``ci/sign.sec``) and named by
    ``$KILN_SIGN_KEY`` is out of reach of the recipes beside it."""
    home = tree / "home"
    (tree / "ci").mkdir()
    assert (
        run_kiln(
            ["key", "generate", "ci", "-o", str(tree / "ci" / "sign.sec")], cwd=tree, home=home
        ).returncode
        == 0
    )
    env = {"KILN_SIGN_KEY": str(tree / "ci" / "sign.sec")}
    for expr, what in (('"./ci/sign.sec"', "is the signing key"), ('"./ci"', "holds the signing key")):
        (tree / "r.recipe").write_text(f'package p {{ build = "${{path {expr}}}" }}\n')
        r = run_kiln(["eval", "r.recipe", "--no-cache"], cwd=tree, home=home, env_extra=env)
        assert r.returncode == 1 and what in r.stderr, r.stderr
    (tree / "ci" / ".kilnignore").write_text("sign.sec\n")
    r = run_kiln(["eval", "r.recipe", "--no-cache"], cwd=tree, home=home, env_extra=env)
    assert r.returncode == 0, r.stderr  # left out of ./ci by its .kilnignore


def test_a_kilnignore_that_is_a_symlink_or_fifo_is_refused(tree: Path) -> None:
    """A ``.kilnignore`` is read where it lies: a symlink out of the tree made a file
    outside it decide what was stored (and showed its bytes in errors); a FIFO blocked."""
    (tree / "src" / ".kilnignore").symlink_to(tree.parent / "secret" / "key")
    (tree / "r.recipe").write_text('package p { build = "${path "./src"}" }\n')
    with pytest.raises(RecipeError, match="must be a regular file, not a symlink"):
        evaluate_file("r.recipe", add_source=_added()[1]).attributes()
    (tree / "src" / ".kilnignore").unlink()
    os.mkfifo(tree / "src" / ".kilnignore")
    with pytest.raises(RecipeError, match="must be a regular file, not a symlink"):
        evaluate_file("r.recipe", add_source=_added()[1]).attributes()


def test_the_key_sign_key_names_is_refused_inside_the_tree(tree: Path) -> None:
    """``kiln build --sign-key ci/sign.sec``: the key is as out of reach as
    ``$KILN_SIGN_KEY``'s (the refusal comes at evaluation, before any build)."""
    home = tree / "home"
    (tree / "ci").mkdir()
    key = str(tree / "ci" / "sign.sec")
    assert run_kiln(["key", "generate", "ci", "-o", key], cwd=tree, home=home).returncode == 0
    (tree / "r.recipe").write_text('package p { build = "${path "./ci"}" }\n')
    r = run_kiln(["build", "--no-cache", "--sign-key", key, "r.recipe", "p"], cwd=tree, home=home)
    assert r.returncode == 1 and "holds the signing key" in r.stderr, r.stderr
    assert not any("sign" in p.name for p in (home / "kiln" / "store").iterdir())


def test_a_marker_that_is_a_symlink_or_another_user_s_does_not_count(tree: Path) -> None:
    """A ``.kilnroot`` another user left in a shared directory above (``/tmp``) must not
    widen the tree of every recipe below it; nor a symlink named so."""
    (tree / "r.recipe").write_text('package p { build = "${path "../secret/key"}" }\n')
    (tree.parent / ".kilnroot").symlink_to(tree / "r.recipe")
    with pytest.raises(RecipeError, match=f"leads outside the recipe tree {tree} "):
        evaluate_file("r.recipe", add_source=_added()[1]).attributes()
    (tree.parent / ".kilnroot").unlink()
    (tree.parent / ".kilnroot").write_text("")
    assert "p" in evaluate_file("r.recipe", add_source=_added()[1]).attributes()  # ours: counts
    if os.geteuid() == 0:  # (only root can give a file to another user)
        os.chown(tree.parent / ".kilnroot", 12345, 12345)
        with pytest.raises(RecipeError, match=f"leads outside the recipe tree {tree} "):
            evaluate_file("r.recipe", add_source=_added()[1]).attributes()


def _another_users_marker(path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Make the ``.kilnroot`` at ``path``, owned by a user other than root, and have kiln
    run as root (as it does under sudo); returns that user's uid."""
    path.write_text("")
    if os.geteuid() == 0:
        os.chown(path, 12345, 12345)
        return 12345
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # (only root can give a file away)
    return os.getuid()


def test_under_sudo_the_invoking_user_s_marker_counts(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sudo kiln build``: the project's marker, owned by the user who ran sudo, was
    ignored (a marker counts only if the user running kiln or root owns it), with an error
    telling them to add the marker that is there. ``SUDO_UID`` names that user, as git's
    ``safe.directory`` takes it; the error names a marker passed over and its owner."""
    (tree / "pkgs").mkdir()
    (tree / "pkgs" / "p.recipe").write_text('package p { build = "${path "../src"}" }\n')
    uid = _another_users_marker(tree / ".kilnroot", monkeypatch)
    with pytest.raises(RecipeError) as e:
        evaluate_file("pkgs/p.recipe", add_source=_added()[1]).attributes()
    first = str(e.value).splitlines()[0]
    assert f"leads outside the recipe tree {tree / 'pkgs'} " in first
    assert f"; {tree / '.kilnroot'} does not count: it is owned by uid {uid}" in first, first
    assert "SUDO_UID" in first and "add one to the project's top" not in first, first
    monkeypatch.setenv("SUDO_UID", str(uid))
    seen, add = _added()
    assert "p" in evaluate_file("pkgs/p.recipe", add_source=add).attributes()
    assert seen == [str(tree / "src")]
    monkeypatch.setenv("SUDO_UID", str(uid + 1))  # another user's sudo: not theirs
    with pytest.raises(RecipeError, match=f"it is owned by uid {uid}, and a marker counts only if owned"):
        evaluate_file("pkgs/p.recipe", add_source=_added()[1]).attributes()


def test_sudo_uid_counts_only_for_root(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``SUDO_UID`` is only a hint of who ran sudo: kiln not running as root, anyone can
    set it, and it widens nothing."""
    (tree / "r.recipe").write_text('package p { build = "${path "../secret/key"}" }\n')
    uid = _another_users_marker(tree.parent / ".kilnroot", monkeypatch)
    monkeypatch.setenv("SUDO_UID", str(uid))
    assert "p" in evaluate_file("r.recipe", add_source=_added()[1]).attributes()
    monkeypatch.setattr(os, "geteuid", lambda: uid + 1)
    with pytest.raises(RecipeError, match=f"leads outside the recipe tree {tree} "):
        evaluate_file("r.recipe", add_source=_added()[1]).attributes()


def test_a_marker_passed_over_is_named_in_the_error(tree: Path) -> None:
    (tree / "r.recipe").write_text('package p { build = "${path "../secret/key"}" }\n')
    (tree.parent / ".kilnroot").symlink_to(tree / "r.recipe")
    with pytest.raises(RecipeError) as e:
        evaluate_file("r.recipe", add_source=_added()[1]).attributes()
    assert f"; {tree.parent / '.kilnroot'} does not count: it is a symlink; " in str(e.value)


def test_a_key_named_after_the_evaluation_was_cached_is_refused_too(tree: Path) -> None:
    """A cache hit re-adds only sources that are gone: the key check ran only inside
    that re-add, so ``--sign-key`` or ``$KILN_SIGN_KEY`` naming a key a cached
    evaluation's source holds went unnoticed."""
    home = tree / "home"
    (tree / "ci").mkdir()
    key = str(tree / "ci" / "sign.sec")
    assert run_kiln(["key", "generate", "ci", "-o", key], cwd=tree, home=home).returncode == 0
    (tree / "r.recipe").write_text('package p { build = "${path "./ci"}" }\n')
    assert run_kiln(["eval", "r.recipe"], cwd=tree, home=home).returncode == 0  # cached, key unnamed
    r = run_kiln(["build", "--sign-key", key, "r.recipe", "p"], cwd=tree, home=home)
    assert r.returncode == 1 and "holds the signing key" in r.stderr, r.stderr
    r = run_kiln(["eval", "r.recipe"], cwd=tree, home=home, env_extra={"KILN_SIGN_KEY": key})
    assert r.returncode == 1 and "holds the signing key" in r.stderr, r.stderr


def test_path_sources_need_no_home_directory_when_the_store_is_given(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a home directory (no ``HOME``, no passwd entry: ``~`` stays ``~``) and no
    ``KILN_HOME``, a store given with ``--store`` still takes path sources (the home's
    key directory, which does not exist then, was looked up first and failed)."""
    from kiln.buildglue import add_recipe_source
    from kiln.store.localstore import LocalStore

    for var in ("KILN_HOME", "XDG_DATA_HOME", "HOME", "KILN_SIGN_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os.path, "expanduser", lambda p: p)
    with LocalStore.open(tree / "st", create=True) as store:
        assert add_recipe_source(store, tree / "src", "src").endswith("-src")
