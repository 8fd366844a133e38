"""``kiln store verify`` reads each object and each tree once. A content-addressed path
(``text:``, flat ``fixed:``: what ``kiln store add`` and fetches make) had its tree read
a second time for the ``ca`` check; the flat file hash now comes from the object's NAR
stream, which matched the row's NAR hash as the tree did. Counted with the kernel's
per-process read counter (``/proc/self/io``: ``rchar``, every thread's reads), and
the ``ca`` check still judges: a false claim is found with a good object or a bad one."""

from __future__ import annotations

import os

from storekit import corrupt_object

from kiln.store.hashes import Hash

SIZE = 8 << 20


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("rchar:"))


def test_store_verify_reads_each_object_and_tree_once(store) -> None:
    paths = [store.add_text(f"big{i}.bin", os.urandom(SIZE), []).path for i in range(2)]  # (incompressible)
    assert all(store.query(p).ca.startswith("text:sha256:") for p in paths)
    before = _bytes_read()
    r = store.verify()
    read = _bytes_read() - before
    assert r.ok and r.checked == 2, r.problems
    # each path: its object (~SIZE) and its tree (SIZE) once; was three times SIZE
    assert 2 * 2 * SIZE <= read < 2 * 2.5 * SIZE, read / SIZE


def test_a_false_text_claim_is_found_with_a_good_or_a_bad_object(store) -> None:
    good = store.add_text("good.txt", b"good\n", []).path
    bad = store.add_text("bad.txt", b"bad\n", []).path
    corrupt_object(store, bad)
    false = f"text:sha256:{Hash.sha256_of(b'other').nix32}"
    with store.conn:
        store.conn.execute("UPDATE paths SET ca=? WHERE path IN (?, ?)", (false, good, bad))
    found = {(p.path, p.kind): p.detail for p in store.verify().problems}
    # the flat hash from the (good) object's NAR, and from the tree where the object is bad
    assert f"found {Hash.sha256_of(b'good' + bytes([10])).to_nix32()}" in found[(good, "ca-mismatch")], found
    assert (bad, "object-corrupt") in found, found
    assert f"found {Hash.sha256_of(b'bad' + bytes([10])).to_nix32()}" in found[(bad, "ca-mismatch")], found
