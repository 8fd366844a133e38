"""``kiln copy --from store --to DIR`` (and ``kiln push --to DIR``) where DIR is another
kiln store's root: a directory registry made there would hold the paths while the store
itself stayed without them, and the command reported success. It is refused, naming
the command that copies into a store, and nothing is written into DIR."""

from __future__ import annotations

from pathlib import Path

from regkit import kiln


def test_a_store_root_is_not_made_a_registry(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for s in (a, b):
        assert kiln("store", "init", "--store", str(s)).returncode == 0
    (tmp_path / "f").write_text("hello\n")
    path = kiln("store", "add", "--store", str(a), str(tmp_path / "f")).stdout.strip()
    before = sorted(p.name for p in b.iterdir())
    for cmd in (
        ["copy", "--store", str(a), "--from", "store", "--to", str(b), path],
        ["push", "--store", str(a), "--to", f"file://{b}", path],
    ):
        r = kiln(*cmd)
        assert r.returncode == 1, r.stderr
        assert f"{b} is a kiln store, not a registry" in r.stderr
        assert f"--to store --store {b}" in r.stderr
        assert sorted(p.name for p in b.iterdir()) == before  # no nix-cache-info, nar/, ...
    # an empty directory still becomes a registry, as before
    r = kiln("copy", "--store", str(a), "--from", "store", "--to", str(tmp_path / "reg"), path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "reg" / "nix-cache-info").is_file()
