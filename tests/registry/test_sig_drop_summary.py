"""A copy that drops a signature from every path (after a key rotation, a client that
trusts only the new key) warned once per path: 118 lines for a 118-path copy. The
first ``SHOWN_DROPS`` paths are shown in full, then one line at exit sums up the rest."""

from __future__ import annotations

from pathlib import Path

from regkit import Keys, add_tree, kiln, make_store

from kiln.registry.client import open_client
from kiln.registry.push import push
from kiln.store.pathadmit import SHOWN_DROPS


def test_dropped_signatures_are_summed_up_after_the_first_few(tmp_path: Path) -> None:
    old, new = Keys(tmp_path, "old-1"), Keys(tmp_path, "new-2")
    store = make_store(tmp_path / "src")
    paths = [add_tree(store, tmp_path, f"p{i}", f"content {i}\n") for i in range(SHOWN_DROPS + 5)]
    reg = tmp_path / "reg"
    for k in (old, new):  # both signatures on every narinfo
        push(store, paths, lambda: open_client(f"file://{reg}"), sign_key=k.sk, progress=False)
    store.close()
    r = kiln(
        "copy", "--from", f"file://{reg}", "--to", "store", "--store", str(tmp_path / "dest"),
        "--trusted-key", str(new.pk_file), *paths,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    shown = [ln for ln in r.stderr.splitlines() if "keeping 1 of its 2 signatures" in ln]
    assert len(shown) == SHOWN_DROPS, r.stderr
    assert f"signatures were dropped from {len(paths)} paths in all" in r.stderr
