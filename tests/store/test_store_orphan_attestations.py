"""Attestations never outlive their path's row: GC removes those left without one (a GC
killed between deleting rows and removing files), and a quarantine takes them along."""

from __future__ import annotations

import os

from storekit import make_tree


def _attest(store, path: str) -> None:
    d = store.root / "attestations" / path.rsplit("/", 1)[1][:32]
    d.mkdir(parents=True, exist_ok=True)
    (d / "provenance.dsse.json").write_text("{}\n")


def test_gc_removes_attestations_without_a_row(store, tmp_path):
    kept = store.add_path(make_tree(tmp_path / "k", {"f": "kept\n"})).path
    store.add_root("k", kept)
    _attest(store, kept)
    orphan = store.root / "attestations" / ("1" * 32)  # a row deleted by a killed GC
    orphan.mkdir(parents=True)
    (orphan / "sbom.dsse.json").write_text("{}\n")
    assert store.gc(dry_run=True).deleted == ()
    assert orphan.exists()  # a dry run changes nothing
    store.gc()
    assert not orphan.exists()
    assert (store.root / "attestations" / kept.rsplit("/", 1)[1][:32] / "provenance.dsse.json").exists()


def test_quarantine_takes_the_attestations_along(store, tmp_path):
    p = store.add_path(make_tree(tmp_path / "q", {"f": "quarantined\n"})).path
    _attest(store, p)
    obj = store.object_path(p)
    os.chmod(obj, 0o644)
    obj.write_bytes(b"not zstd")
    real = store.real_path(p)
    os.chmod(real, 0o755)
    os.chmod(real / "f", 0o644)
    (real / "f").write_text("changed\n")
    r = store.verify(repair=True)
    assert r.quarantined == (p,)
    assert not (store.root / "attestations" / p.rsplit("/", 1)[1][:32]).exists()
    (moved,) = (store.root / "quarantine").iterdir()
    assert (moved / "attestations" / "provenance.dsse.json").exists()
