"""``kiln store add --name -x``: a store path name may start with '-' (Nix's rules,
``store/paths.py``), and argparse took such a value for an option ("argument --name:
expected one argument"); now the word after ``--name`` is its value unless it is one of
``add``'s own options."""

from __future__ import annotations

from pathlib import Path

from clikit import kiln_at


def test_a_name_starting_with_a_dash_is_taken(tmp_path: Path):
    src = tmp_path / "f.txt"
    src.write_text("x\n")
    spaced = kiln_at(tmp_path, "store", "add", str(src), "--name", "-dash")
    assert spaced.returncode == 0, spaced.stderr
    assert spaced.stdout.strip().endswith("--dash")  # (<hash>-<name>)
    joined = kiln_at(tmp_path, "store", "add", "--name=-dash", str(src))
    assert joined.stdout == spaced.stdout
    # before the path, with --add-root after it, and a top-level --store first
    r = kiln_at(
        tmp_path,
        "store",
        "--store",
        str(tmp_path / "home"),
        "add",
        "--name",
        "--x",
        str(src),
        "--add-root",
        "r",
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("---x"), r.stderr
    assert (tmp_path / "home" / "gcroots" / "r").is_symlink()


def test_an_option_after_name_is_still_an_option(tmp_path: Path):
    """``--name --add-root r`` (a forgotten name) stays a usage error, as does a prefix
    argparse takes for an option, and ``-h``: never a path named so."""
    src = tmp_path / "f.txt"
    src.write_text("x\n")
    for word in ("--add-root", "--add", "-h"):
        r = kiln_at(tmp_path, "store", "add", str(src), "--name", word, "r")
        assert r.returncode == 2 and "/kiln/store/" not in r.stdout, (word, r)
        assert "usage:" in r.stdout + r.stderr
    r = kiln_at(tmp_path, "store", "add", str(src), "--name")
    assert r.returncode == 2 and "--name: expected one argument" in r.stderr
    # an invalid name is refused by the store's own rules
    bad = kiln_at(tmp_path, "store", "add", str(src), "--name", "-bad/name")
    assert bad.returncode == 1 and "invalid characters" in bad.stderr, bad.stderr
