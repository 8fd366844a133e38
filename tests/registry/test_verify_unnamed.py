"""``kiln registry verify`` counts the object files no narinfo names (a refused or killed
push's), with their bytes, without calling them problems ("checked 0 narinfos: 0
problem(s)" said nothing of them); ``--delete-unnamed`` removes those written over an
hour ago (``unnamedobjects.sweep``, as ``kiln mirror sync --prune``), holding the
mirror and narinfo locks and reading the narinfos under them."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from regkit import add_chain, add_tree, kiln, make_store, verify_waiting_for_a_sync

from kiln.registry import layout
from kiln.registry.unnamedobjects import YOUNG
from kiln.store import narinfo as ni
from kiln.store.signing import sign_info


def _plant(reg: Path, store, path: str) -> list[Path]:  # noqa: ANN001
    """``path``'s object put in the registry under both names (one file), as a push
    leaves it before its narinfo."""
    fh = store.query(path).file_hash
    blob, nar = reg / layout.blob_key(fh), reg / layout.nar_key(fh)
    blob.write_bytes(store.object_path(path).read_bytes())
    os.link(blob, nar)
    return [blob, nar]


def _age(files: list[Path], seconds: float = 2 * YOUNG) -> None:
    then = time.time() - seconds
    for f in files:
        os.utime(f, (then, then))


def _verify(reg: Path, *extra: str) -> tuple[int, dict]:
    r = kiln("registry", "verify", "--dir", str(reg), "--json", *extra)
    return r.returncode, json.loads(r.stdout)


def _keys(files: list[Path], reg: Path) -> list[str]:
    return [str(f.relative_to(reg)) for f in files]


def _setup(tmp_path: Path, keys):  # noqa: ANN001, ANN202
    store = make_store(tmp_path / "store")
    chain = add_chain(store, tmp_path, 2)
    old, young = add_tree(store, tmp_path, "old", "old\n" * 100), add_tree(store, tmp_path, "young", "y\n")
    reg = tmp_path / "reg"
    r = kiln(
        "push", "--store", str(store.root), chain[-1], "--to", f"file://{reg}", "--sign-key", str(keys.sk_file)
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return store, chain, old, young, reg


def test_unnamed_objects_are_counted_and_the_old_ones_deleted(tmp_path, keys) -> None:
    store, chain, old, young, reg = _setup(tmp_path, keys)
    published = sorted((reg / "blobs").iterdir()) + sorted((reg / "nar").iterdir())
    stale, fresh = _plant(reg, store, old), _plant(reg, store, young)
    _age(stale)
    size = stale[0].stat().st_size + fresh[0].stat().st_size  # (each file once: two names each)
    rc, doc = _verify(reg)
    assert rc == 0 and doc["ok"] and doc["problems"] == [] and doc["removed"] == [], doc
    assert (doc["unnamed"], doc["unnamed_bytes"]) == (4, size), doc
    r = kiln("registry", "verify", "--dir", str(reg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"checked 2 narinfos: 0 problem(s); 4 unnamed object file(s) ({size} bytes)" in r.stdout, r.stdout
    assert "--delete-unnamed" in r.stdout and all(f.exists() for f in [*stale, *fresh])
    rc, doc = _verify(reg, "--delete-unnamed")
    assert rc == 0 and doc["unnamed"] == 4 and doc["unnamed_young"] == 2 and doc["unnamed_kept"] == "", doc
    assert sorted(doc["removed"]) == sorted(_keys(stale, reg)), doc
    assert not any(f.exists() for f in stale) and all(f.exists() for f in [*fresh, *published])
    rc, doc = _verify(reg)
    assert rc == 0 and (doc["checked"], doc["unnamed"]) == (2, 2), doc
    # a narinfo that names nothing might name any object: none is deleted
    _age(fresh)
    (reg / f"{'0' * 32}.narinfo").write_text("StorePath: nonsense\n")
    r = kiln("registry", "verify", "--dir", str(reg), "--json", "--delete-unnamed")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["removed"] == [] and "names no object" in doc["unnamed_kept"], doc
    assert "note: " in r.stderr and all(f.exists() for f in fresh)


def test_delete_unnamed_waits_for_a_mirror_sync_and_spares_what_it_published(tmp_path, keys) -> None:
    store, chain, old, _young, reg = _setup(tmp_path, keys)
    stale = _plant(reg, store, old)
    _age(stale)
    with verify_waiting_for_a_sync(reg, "--delete-unnamed") as p:
        # ... meanwhile the sync publishes the path whose object it had fetched first
        info = store.query(old)
        signed = dataclasses.replace(info, sigs=(sign_info(info, keys.sk),))
        text = ni.NarInfo.from_pathinfo(signed, layout.nar_key(info.file_hash), "zstd").render()
        (reg / f"{old.rsplit('/', 1)[1][:32]}.narinfo").write_text(text)
    out, err = p.communicate(timeout=120)
    doc = json.loads(out)
    assert p.returncode == 0 and doc["removed"] == [] and doc["unnamed"] == 2, (doc, err)
    assert all(f.exists() for f in stale)
    rc, doc = _verify(reg)
    assert rc == 0 and (doc["checked"], doc["unnamed"]) == (3, 0), doc


def test_a_narinfo_published_during_the_sweep_keeps_its_object(tmp_path, keys, monkeypatch) -> None:
    """The narinfos are read once, then listed again just before the unlinks: one
    published in between (an upload that found the object present) names its object."""
    from kiln.registry import unnamedobjects
    from kiln.registry.storage import open_storage

    store, _chain, old, young, reg = _setup(tmp_path, keys)
    late, gone = _plant(reg, store, old), _plant(reg, store, young)
    _age([*late, *gone])
    info = store.query(old)
    signed = dataclasses.replace(info, sigs=(sign_info(info, keys.sk),))
    text = ni.NarInfo.from_pathinfo(signed, layout.nar_key(info.file_hash), "zstd").render()
    first = unnamedobjects.unnamed

    def then_published(storage, named):  # noqa: ANN001, ANN202
        out = first(storage, named)
        (reg / f"{old.rsplit('/', 1)[1][:32]}.narinfo").write_text(text)
        return out

    monkeypatch.setattr(unnamedobjects, "unnamed", then_published)
    res = unnamedobjects.sweep(open_storage(reg))
    assert sorted(res.deleted) == sorted(_keys(gone, reg)) and res.kept == "", res
    assert all(f.exists() for f in late) and not any(f.exists() for f in gone)
