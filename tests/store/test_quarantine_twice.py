"""Two quarantines of one path within one second (the directory name carries the time in
whole seconds) each keep their own directory and record: the second must neither
overwrite the first's ``info.txt`` nor fail moving its tree into the first's directory."""

from __future__ import annotations

from storekit import corrupt_file, corrupt_object, make_tree

from kiln.store import repair
from kiln.store.quarantine import recorded_closure_edges


def test_two_quarantines_of_one_path_in_one_second_keep_both_records(store, tmp_path, monkeypatch):
    monkeypatch.setattr(repair.time, "time", lambda: 1_700_000_000.5)
    dep = store.add_path(make_tree(tmp_path / "dep", {"lib": "l" * 3000}))
    drvs = []
    for round_ in range(2):
        # the same output, built by two derivations (so each record says which)
        drvs.append(store.add_text("built.drv", f"derive {round_}".encode(), [dep.path]))
        out = f"{store.store_dir}/{'3' * 32}-built"
        built = store.register_built(
            out, make_tree(tmp_path / f"build{round_}", {"f": "x" * 3000}), [dep.path], drvs[-1].path
        )
        corrupt_object(store, built.path)
        corrupt_file(store.real_path(built.path) / "f")
        r = store.verify(repair=True)
        assert r.quarantined == (built.path,), r.problems
    dirs = sorted(p.name for p in (store.root / "quarantine").iterdir())
    assert len(dirs) == 2 and all(d.startswith(f"{'3' * 32}-built-1700000000") for d in dirs), dirs
    for d in dirs:
        assert (store.root / "quarantine" / d / "tree").is_dir()
    edges, unread = recorded_closure_edges(store.root)
    assert unread == []
    assert edges[built.path] == {dep.path, drvs[0].path, drvs[1].path}
