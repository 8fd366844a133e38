"""A push of what the registry already has reads the closure and its infos from the
store database in one query (``store.closurequery``), not several per path: counted
with SQLite's statement trace on the store's connection, for a real store and a real
``kiln serve``. The infos and order it reads are the per-path calls' exactly."""

from __future__ import annotations

import pytest
from regkit import add_chain, kiln, make_store

from kiln.registry.client import open_client
from kiln.registry.push import prepare, push
from kiln.store.closurequery import closure_infos
from kiln.store.errors import StoreError

N = 300


def test_a_no_op_push_reads_the_store_database_a_bounded_number_of_times(tmp_path, keys, kiln_server) -> None:
    store = make_store(tmp_path / "store")
    chain = add_chain(store, tmp_path, N)
    wide = [store.add_text(f"w{i}.txt", f"{i} {chain[-1]}".encode(), [chain[-1]]).path for i in range(50)]
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file))
    first = push(store, wide, lambda: open_client(srv.url, tok), sign_key=keys.sk, progress=False)
    assert first.pushed == N + 50
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    try:
        again = push(store, wide, lambda: open_client(srv.url, tok), sign_key=keys.sk, progress=False)
    finally:
        store.conn.set_trace_callback(None)
    assert again.closure == N + 50 and again.pushed == 0 and again.nars_uploaded == 0
    assert len(statements) <= 10, statements[:20]  # was about 8 per path (2,800)


def test_the_batched_closure_is_the_per_path_one(tmp_path) -> None:
    store = make_store(tmp_path / "store")
    chain = add_chain(store, tmp_path, 20)
    side = add_chain(store, tmp_path, 5, tag="side")
    top = store.add_text("top.txt", b"top", [chain[-1], side[-1], chain[3]]).path
    order, holes = store.closure_with_holes([top, side[2]])
    got_order, infos, got_holes = closure_infos(store.conn, [side[2], top, top])
    assert got_order == order and got_holes == holes == {}
    assert infos == {p: store.query(p) for p in order}
    # an invalid start path: the usual error, as before
    with pytest.raises(StoreError, match="is not valid"):
        prepare(store, [top, top[:-3] + "zzz"])
