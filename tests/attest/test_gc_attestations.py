"""GC deletes a dead path's attestations with it and keeps a live path's."""

from __future__ import annotations

from kiln.store import attestations, intoto
from kiln.store.dsse import Ed25519Signer
from kiln.store.localstore import LocalStore
from kiln.store.paths import StorePath
from kiln.store.signing import SecretKey


def _attest(store, path: str, key: SecretKey) -> None:  # noqa: ANN001
    info = store.query(path)
    st = intoto.statement(
        [intoto.subject(StorePath.parse(path).base, info.nar_hash.hex)], intoto.VSA_TYPE, {}
    )
    attestations.write(store, path, "vsa-test", attestations.sign(st, [Ed25519Signer(key.key)]))


def test_gc_removes_attestations_of_dead_paths(built) -> None:
    store, key = built.store, SecretKey.generate("rebuilder")
    for p in (built.hello, built.zlib):
        _attest(store, p, key)
    store.add_root("keep-zlib", built.zlib)
    store.close()  # drops this process's temp roots on what it registered
    store = LocalStore.open(built.store.root)
    att_dir = store.root / "attestations" / StorePath.parse(built.hello).hash_part
    assert att_dir.is_dir()
    assert store.gc(dry_run=True).deleted and att_dir.is_dir()  # a dry run deletes nothing
    report = store.gc()
    assert built.hello in report.deleted and built.zlib not in report.deleted
    assert not att_dir.exists()
    assert attestations.list(store, built.hello) == []
    assert attestations.list(store, built.zlib) == ["vsa-test"]
    store.close()
