"""``kiln push`` / ``kiln copy`` into a registry directory that publishes a signed index:
a directory has no index key, so the index is not republished; a push that changed a
narinfo (a new path, a merged signature) said nothing, and every mirror then refused the
changed narinfo ("does not hash to the sha256 its signed index lists"). Now a warning
names the command; a push that changed nothing says nothing."""

from __future__ import annotations

from pathlib import Path

from regkit import Keys, add_built, kiln, make_store


def _push(store, reg: Path, key: Path, *paths: str):  # noqa: ANN001, ANN202
    return kiln("push", "--store", str(store.root), *paths, "--to", f"file://{reg}", "--sign-key", str(key))


def test_a_push_that_changes_a_directory_with_an_index_says_to_publish_it(tmp_path: Path, keys) -> None:
    store = make_store(tmp_path / "store")
    a = add_built(store, tmp_path, "a", "A")
    reg = tmp_path / "reg"
    r = _push(store, reg, keys.sk_file, a)
    assert r.returncode == 0 and "publish-index" not in r.stderr, r.stderr  # (no index yet)
    assert kiln("registry", "publish-index", "--dir", str(reg), "--key", str(keys.sk_file)).returncode == 0
    r = _push(store, reg, keys.sk_file, a)  # nothing changed: nothing to say
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    b = add_built(store, tmp_path, "b", "B")
    r = _push(store, reg, keys.sk_file, b)  # a new path
    assert r.returncode == 0, r.stderr
    assert "publishes a signed index, which does not list what this command changed" in r.stderr, r.stderr
    assert f"kiln registry publish-index --dir {reg} --key INDEX-KEY" in r.stderr, r.stderr
    assert kiln("registry", "publish-index", "--dir", str(reg), "--key", str(keys.sk_file)).returncode == 0
    other = Keys(tmp_path, "rel-2")
    r = _push(store, reg, other.sk_file, a)  # a signature merged into a published narinfo
    assert r.returncode == 0 and "publish-index" in r.stderr, r.stderr
