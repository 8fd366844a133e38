"""``kiln store info`` on a closure a concurrent ``kiln store verify --repair`` changes.

``verify --repair`` quarantines a bad path holding the GC lock shared, as ``store info``
does, so a member of the closure ``info`` just walked may be gone when it asks for its
size. It is then no longer valid: not counted, and never an internal error.
"""

from __future__ import annotations

import argparse
import json

from kiln.store.localstore import LocalStore
from kiln.storeread import info


def test_info_survives_a_closure_member_quarantined_meanwhile(tmp_path, monkeypatch, capsys):
    root = tmp_path / "store"
    with LocalStore.open(root, create=True) as s:
        dep = s.add_text("dep", b"a dependency", []).path
        top = s.add_text("top", f"uses {dep}".encode(), [dep]).path
        dep_size = s.query(dep).nar_size
        top_size = s.query(top).nar_size

    walked = []
    closure_with_holes = LocalStore.closure_with_holes
    query = LocalStore.query

    def walk(self, paths):  # the closure as it was, then ``dep`` is quarantined
        result = closure_with_holes(self, paths)
        walked.append(True)
        return result

    def query_after(self, path):
        return None if walked and path == dep else query(self, path)

    monkeypatch.setattr(LocalStore, "closure_with_holes", walk)
    monkeypatch.setattr(LocalStore, "query", query_after)
    args = argparse.Namespace(store=root, path=top, json=True)
    assert info(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert walked
    assert doc["closureSize"] == top_size != dep_size + top_size  # (dep is gone: not counted)
    assert doc["closurePaths"] == 1  # (counted alike)
