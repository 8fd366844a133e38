"""``kiln registry verify --delete-bad`` deletes only what it judged: a bad object that a
mirror sync (or push) replaced with good bytes while the verify ran is kept, and so is
the narinfo judged bad by it; what is still the bad file goes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from regkit import kiln, verify_waiting_for_a_sync

from kiln.registry import layout
from kiln.store import narinfo as ni


def _info(reg: Path, store, path: str) -> ni.NarInfo:
    return ni.parse((reg / layout.narinfo_key(path.rsplit("/", 1)[1][:32])).read_text(), store.store_dir)


def _flip(f: Path) -> None:
    with open(f, "r+b") as fh:  # in place: both links (blobs/, nar/) see it
        data = bytearray(fh.read())
        data[len(data) // 2] ^= 0x40
        fh.seek(0)
        fh.write(data)


def test_delete_bad_spares_an_object_replaced_while_it_was_checked(pushed) -> None:
    store, chain, leaf, reg, tok, srv = pushed
    fixed, rotten = _info(reg, store, leaf), _info(reg, store, chain[1])
    fixed_files = [reg / layout.blob_key(fixed.file_hash), reg / layout.nar_key(fixed.file_hash)]
    good = fixed_files[0].read_bytes()
    _flip(fixed_files[0])
    _flip(reg / layout.blob_key(rotten.file_hash))

    # a mirror sync holds the directory: the deleting verify checks everything, then waits
    with verify_waiting_for_a_sync(reg, "--delete-bad") as p:
        # ... meanwhile the sync puts the good bytes back (a new file renamed over each name)
        for dest in fixed_files:
            tmp = dest.with_name(dest.name + ".new")
            tmp.write_bytes(good)
            os.replace(tmp, dest)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1, err  # (problems were found)
    doc = json.loads(out)

    fixed_np = layout.narinfo_key(leaf.rsplit("/", 1)[1][:32])
    rotten_np = layout.narinfo_key(chain[1].rsplit("/", 1)[1][:32])
    # the replaced object and its narinfo are kept, and said to be so
    assert all(f.read_bytes() == good for f in fixed_files)
    assert (reg / fixed_np).exists()
    spared = {q["path"] for q in doc["problems"] if "replaced while being checked" in q["problem"]}
    assert {leaf, *(str(f.relative_to(reg)) for f in fixed_files)} <= spared, doc["problems"]
    assert not {fixed_np, *(str(f.relative_to(reg)) for f in fixed_files)} & set(doc["removed"])
    # the object still bad when the lock came is deleted, with its narinfo
    assert {rotten_np, layout.blob_key(rotten.file_hash)} <= set(doc["removed"])
    assert not (reg / rotten_np).exists()

    # what is left verifies (apart from the hole the deletion made in chain[1]'s users)
    r = kiln("registry", "verify", "--dir", str(reg), "--json")
    left = json.loads(r.stdout)["problems"]
    assert all("is not published" in q["problem"] for q in left), left
