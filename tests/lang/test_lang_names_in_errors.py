"""A file's name or path embedded in an error message is shown with its control
characters visible (``kiln.lang.errors.visible``), a newline as ``␊``: messages keep
their own newlines, so a name holding one (from a tarball, a checkout) printed a line of
its own that looked like kiln's, ``kiln: verified 3 signatures, all good``. One test per
message that embeds a name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lang_helpers import run_kiln

from kiln.lang import RecipeError, evaluate_file
from kiln.store.errors import KilnError

#: what a name may try to pass off as a line of kiln's own
FORGED = "kiln: verified 3 signatures, all good"
EVIL = f"x\n{FORGED}\n"
SHOWN = f"x\u240a{FORGED}\u240a"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KILN_RECIPE_ROOT", raising=False)


def _error(file: str | Path, **kw: object) -> str:
    """The message of the error evaluating ``file`` (every attribute) raises; checks it
    has no forged line: one line, or a located error's three (header, code, caret)."""
    with pytest.raises(RecipeError) as info:
        evaluate_file(file, **kw).attributes()  # type: ignore[arg-type]
    return _checked(str(info.value))


def _checked(text: str) -> str:
    lines = text.split("\n")
    assert len(lines) in (1, 3), text
    assert not any(line.startswith(FORGED) for line in lines), text
    return text


def test_a_missing_entry_file(tmp_path: Path) -> None:
    assert _error(f"{EVIL}.recipe") == f"recipe file {SHOWN}.recipe does not exist"


def test_kiln_eval_of_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    r = run_kiln(["eval", "--no-cache", f"d\n{FORGED}/nonexist.recipe"], cwd=tmp_path, home=tmp_path / "home")
    assert r.returncode == 1
    assert r.stderr == f"error: recipe file d\u240a{FORGED}/nonexist.recipe does not exist\n", r.stderr


def test_a_missing_import(tmp_path: Path) -> None:
    (tmp_path / "r.recipe").write_text(f'import "{EVIL}.recipe"\n')
    assert f"imported file {SHOWN}.recipe does not exist" in _error("r.recipe")


def test_an_import_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / EVIL).mkdir()
    (tmp_path / "r.recipe").write_text(f'import "{EVIL}"\n')
    assert f"cannot read imported file {SHOWN}: it is a directory, not a regular file" in _error("r.recipe")


def test_an_import_that_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / EVIL).write_text("")  # a file, used as a directory: ENOTDIR
    (tmp_path / "r.recipe").write_text(f'import "{EVIL}/a.recipe"\n')
    assert f"cannot read imported file {SHOWN}/a.recipe: Not a directory" in _error("r.recipe")


def test_an_import_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / f"{EVIL}.recipe").write_bytes(b"let x = 1\n\xff\n")
    (tmp_path / "r.recipe").write_text(f'import "{EVIL}.recipe"\n')
    assert f"{SHOWN}.recipe:2:1: not valid UTF-8 (byte 0xff)" in _error("r.recipe")


def test_an_entry_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / f"{EVIL}.recipe").write_bytes(b"\xff\n")
    assert _error(f"{EVIL}.recipe").startswith(f"{SHOWN}.recipe:1:1: not valid UTF-8 (byte 0xff)")


def test_an_import_cycle(tmp_path: Path) -> None:
    (tmp_path / f"{EVIL}.recipe").write_text('import "r.recipe"\n')
    (tmp_path / "r.recipe").write_text(f'import "{EVIL}.recipe"\n')
    assert f"import cycle: r.recipe → {SHOWN}.recipe → r.recipe" in _error("r.recipe")


def test_an_import_clash(tmp_path: Path) -> None:
    (tmp_path / f"{EVIL}.recipe").write_text("let a = 1\n")
    (tmp_path / "r.recipe").write_text(f'import "{EVIL}.recipe"\nlet a = 2\n')
    assert f"'a' from {SHOWN}.recipe clashes with 'a' defined in this file" in _error("r.recipe")


def test_an_import_or_path_outside_a_tree_whose_name_has_a_newline(tmp_path: Path) -> None:
    """The tree and where the import leads are both named (``roots.outside_message``),
    and so is a marker passed over (``roots.ignored_markers``)."""
    proj = tmp_path / EVIL
    proj.mkdir()
    (tmp_path / f"{EVIL}.recipe").write_text("let a = 1\n")
    (proj / "r.recipe").write_text(f'import "../{EVIL}.recipe"\n')
    text = _error(proj / "r.recipe")
    assert f"leads outside the recipe tree {tmp_path}/{SHOWN} (to {tmp_path}/{SHOWN}.recipe)" in text
    (proj / "r.recipe").write_text(f'let s = path "../{EVIL}.recipe"\n')
    assert f"(to {tmp_path}/{SHOWN}.recipe)" in _error(proj / "r.recipe")
    (proj / ".kilnroot").symlink_to("r.recipe")
    assert f"{tmp_path}/{SHOWN}/.kilnroot does not count: it is a symlink" in _error(proj / "r.recipe")


def test_a_kilnignore_that_is_not_a_regular_file_or_not_utf8(tmp_path: Path) -> None:
    (tmp_path / EVIL).mkdir()
    (tmp_path / EVIL / ".kilnignore").symlink_to("elsewhere")
    (tmp_path / "r.recipe").write_text(f'let s = path "./{EVIL}"\n')
    text = _error("r.recipe")
    assert f"{tmp_path}/{SHOWN}/.kilnignore must be a regular file" in text
    (tmp_path / EVIL / ".kilnignore").unlink()
    (tmp_path / EVIL / ".kilnignore").write_bytes(b"\xff\n")
    assert f"{tmp_path}/{SHOWN}/.kilnignore is not valid UTF-8" in _error("r.recipe")


def test_a_store_error_adding_a_source(tmp_path: Path) -> None:
    """The store's own message may name a file of the source as it is."""
    (tmp_path / "src").mkdir()
    (tmp_path / "r.recipe").write_text('let s = path "./src"\n')

    def add(src: Path, name: str) -> str:
        raise KilnError(f"cannot read {os.path.join(src, EVIL)}")

    assert f"cannot add path './src' to the store: cannot read {tmp_path}/src/{SHOWN}" in _error(
        "r.recipe", add_source=add
    )


def test_an_attribute_expression_over_lines(tmp_path: Path) -> None:
    (tmp_path / "r.recipe").write_text('package p { build = "" }\n')
    with pytest.raises(RecipeError) as info:
        evaluate_file("r.recipe").select(f'"{EVIL}"')
    assert f"'\"{SHOWN}\"' is a string, not a package" in _checked(str(info.value)).split("\n")[0]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["build", f"{EVIL}.recipe", "p"], f"recipe file {SHOWN}.recipe does not exist"),
        (["show-derivation", f"{EVIL}.recipe"], f"which package of {SHOWN}.recipe?"),
    ],
)
def test_the_command_line_s_own_messages_show_names_escaped(
    tmp_path: Path, args: list[str], said: str
) -> None:
    r = run_kiln(args, cwd=tmp_path, home=tmp_path / "home")
    assert r.returncode == 1 and said in r.stderr and FORGED + "\n" not in r.stderr, r.stderr
