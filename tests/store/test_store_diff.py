"""``kiln store diff A B``: two store paths compared as trees (files only in one, of
another kind, executable bit, size, contents or link target) or, with ``--closure``, as
closures package by package (versions, rebuilt, NAR size change), as Nix's ``nix store
diff-closures``; identical ones say so."""

from __future__ import annotations

from pathlib import Path

from clikit import kiln_at
from storekit import make_tree

from kiln.store.localstore import LocalStore
from kiln.storediff import split_name


def _add(store: LocalStore, tmp: Path, name: str, files: dict, refs: tuple[str, ...] = ()) -> str:
    from kiln.store.hashes import Hash
    from kiln.store.paths import make_output_path

    path = str(make_output_path(Hash.sha256_of(f"{name}{sorted(files.items())}{refs}".encode()), "out", name))
    tree = make_tree(
        tmp / "t" / f"{name}-{len(list((tmp / 't').glob('*'))) if (tmp / 't').exists() else 0}", files
    )
    return store.register_built(path, tree, refs, None).path


def test_two_builds_compared_as_trees_and_as_closures(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with LocalStore.open(home) as store:
        lib1 = _add(store, tmp_path, "zlib-1.3", {"lib.so": "one\n"})
        lib2 = _add(store, tmp_path, "zlib-1.3.1", {"lib.so": "two, longer\n"})
        tool = _add(store, tmp_path, "tool", {"t": "t\n"})
        a = _add(store, tmp_path, "app-1.0", {"bin/app": "x:v1\n", "old": "gone\n"}, (lib1, tool))
        b = _add(store, tmp_path, "app-1.0", {"bin/app": "x:v2 longer\n", "new": "here\n"}, (lib2,))
    r = kiln_at(tmp_path, "store", "diff", a, b)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "bin/app: contents differ (3 vs 10 bytes)",
        f"new: only in {b}",
        f"old: only in {a}",
    ]
    r = kiln_at(tmp_path, "store", "diff", "--closure", a, b)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("app: 1.0 rebuilt, +")
    assert lines[1] == "tool: (no version) -> (none), -" + lines[1].split(", -", 1)[1]
    assert lines[2].startswith("zlib: 1.3 -> 1.3.1, +")
    assert len(lines) == 3
    r = kiln_at(tmp_path, "store", "diff", a, a)
    assert r.stdout.strip() == "no file differs"
    r = kiln_at(tmp_path, "store", "diff", "--closure", a, a)
    assert r.stdout.strip() == "the closures hold the same paths"


def test_names_split_as_nix_splits_them() -> None:
    assert split_name("hello-2.10") == ("hello", "2.10")
    assert split_name("gnu-hello-2.10") == ("gnu-hello", "2.10")
    assert split_name("toolchain") == ("toolchain", "")
    assert split_name("lua-5.4.6-doc") == ("lua", "5.4.6-doc")
    assert split_name("source.tar.gz") == ("source.tar.gz", "")
