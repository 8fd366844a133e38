"""A mirror carries the source's root metadata from the root it pinned on: ``index/root.json``
and ``index/<v>.root.json`` of the first root as of each rotated one, so the mirror is
itself a verifiable registry a client can pin and walk (``mirrorplan.update``)."""

from __future__ import annotations

from pathlib import Path

from regkit import Keys, add_chain, make_store, request

from kiln.registry.client import open_client
from kiln.registry.mirror import sync
from kiln.registry.publish import publish_index, rotate_root
from kiln.registry.push import push
from kiln.registry.storage import open_storage


def test_the_mirror_serves_the_root_chain_from_its_pinned_root(tmp_path: Path, keys, kiln_server) -> None:
    store = make_store(tmp_path / "store")
    paths = add_chain(store, tmp_path, 2)
    reg = tmp_path / "src"
    push(store, paths, lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    publish_index(open_storage(reg), keys.sk)
    url = kiln_server("--dir", str(reg)).url
    dst = tmp_path / "mirror"
    sync(url, dst, root=(reg / "index/root.json").read_bytes())
    first = (reg / "index/1.root.json").read_bytes()
    assert (dst / "index/1.root.json").read_bytes() == first
    assert (dst / "index/root.json").read_bytes() == first
    served = kiln_server("--dir", str(dst)).url
    for name in ("root.json", "1.root.json"):
        status, _, body = request(f"{served}/index/{name}")
        assert (status, body) == (200, first)
    # the source rotates its root: the mirror carries the new one, and the chain
    new = Keys(tmp_path, "kiln-test-2")
    rotate_root(open_storage(reg), keys.sk, new.sk)
    publish_index(open_storage(reg), new.sk)
    sync(url, dst)
    second = (reg / "index/2.root.json").read_bytes()
    assert (dst / "index/1.root.json").read_bytes() == first
    assert (dst / "index/2.root.json").read_bytes() == second
    assert (dst / "index/root.json").read_bytes() == second
    # a client that pinned the first root verifies the mirror itself, through the rotation
    rep = sync(f"file://{dst}", tmp_path / "m2", root=(dst / "index/1.root.json").read_bytes())
    assert (rep.paths, rep.blobs_fetched) == (2, 2)
    assert (tmp_path / "m2/index/root.json").read_bytes() == second
