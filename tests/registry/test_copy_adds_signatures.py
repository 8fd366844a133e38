"""``kiln copy --to store`` of paths the store holds already adds the source's new
signatures (``copy._add_signatures``, ``pathadmit.sigs_to_add``; Nix's ``nix store
copy-sigs``).

Before, after a publisher rotated its key and re-signed, ``kiln copy --trusted-key NEW``
said "copied 0 paths" and the store kept only the old signature, so ``kiln store verify
--trusted-key NEW`` failed until the path was deleted and copied again. Now each valid
path of the requested closures that lacks a valid signature by a trusted key gets the
source's signatures that are valid by a trusted key *for the local path* (never one
made over another NarHash), and the copy says how many it added. Nothing is removed."""

from __future__ import annotations

from pathlib import Path

import pytest
from httpkit import answer, serve
from regkit import add_built, kiln, make_store, push_cli

from kiln.store.signing import valid_signers


@pytest.fixture
def served(tmp_path: Path, keys, other_keys, kiln_server):
    """A served registry (trusting the old key, ``keys``, and the new one, ``other_keys``)
    holding ``app`` and its reference ``lib``, input-addressed, signed by the old key."""
    pub = make_store(tmp_path / "pub")
    lib = add_built(pub, tmp_path, "lib", "lib v1")
    app = add_built(pub, tmp_path, "app", "app v1", (lib,))
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    srv = kiln_server(
        "--dir", str(reg), "--trusted-key", str(keys.pk_file), "--trusted-key", str(other_keys.pk_file)
    )
    r = push_cli(pub, [app], srv.url, tok, keys.sk_file)
    assert r.returncode == 0, r.stderr
    return pub, lib, app, srv.url, tok


def _copy(url: str, store: Path, key: Path, *paths: str):  # noqa: ANN202
    return kiln("copy", "--from", url, "--to", "store", "--store", str(store), "--store-dir", "/kiln/store", "--trusted-key", str(key), *paths)  # fmt: skip


def test_a_copy_adds_the_re_signed_signatures_to_paths_the_store_holds(served, keys, other_keys, tmp_path):
    pub, lib, app, url, tok = served
    client = tmp_path / "client"
    r = _copy(url, client, keys.pk_file, app)
    assert r.returncode == 0 and "copied 2 paths" in r.stdout, r.stderr
    # the publisher rotates: both paths re-signed with the new key (merged at the registry)
    assert push_cli(pub, [app], url, tok, other_keys.sk_file).returncode == 0
    verify = ("store", "verify", "--store", str(client), "--trusted-key", str(other_keys.pk_file))
    assert kiln(*verify).returncode == 1
    r = _copy(url, client, other_keys.pk_file, app)
    assert r.returncode == 0 and "copied 0 paths" in r.stdout, r.stderr
    assert "added 2 signature(s)" in r.stderr and "to 2 path(s)" in r.stderr, r.stderr
    r = kiln(*verify)
    assert r.returncode == 0, r.stdout + r.stderr
    s = make_store(client)
    try:
        for p in (lib, app):  # the old signature is kept: only added, never removed
            assert valid_signers(s.query(p), [keys.pk, other_keys.pk]) == {"kiln-test-1", "intruder-1"}
    finally:
        s.close()
    r = _copy(url, client, other_keys.pk_file, app)  # nothing more to add
    assert r.returncode == 0 and "added" not in r.stderr, r.stderr


def test_a_signature_over_another_build_of_the_path_is_not_added(served, keys, other_keys, tmp_path):
    """The store holds ``lib`` with other content than the source's (another build of
    the same input-addressed path): the source's new signature, over its NarHash, is no
    signature of the local path, and is not added."""
    pub, lib, _app, url, tok = served
    assert push_cli(pub, [lib], url, tok, other_keys.sk_file).returncode == 0
    client = tmp_path / "client"
    s = make_store(client)
    try:
        tree = tmp_path / "other-build"
        tree.mkdir()
        (tree / "data").write_text("lib v1, built elsewhere")
        s.register_built(lib, tree, (), None)
        s.add_signatures(lib, [keys.sk.sign(s.query(lib).fingerprint())])  # the old key's, valid here
    finally:
        s.close()
    r = _copy(url, client, other_keys.pk_file, lib)
    assert r.returncode == 0 and "copied 0 paths" in r.stdout and "added" not in r.stderr, r.stderr
    s = make_store(client)
    try:
        assert valid_signers(s.query(lib), [keys.pk, other_keys.pk]) == {"kiln-test-1"}
        assert len(s.query(lib).sigs) == 1
    finally:
        s.close()


def test_a_failing_signature_query_after_the_copy_is_a_warning(served, keys, other_keys, tmp_path):
    """The copy itself succeeded; asking the source for new signatures of held paths
    then fails (here: a source that answers 500 for one of them, every time): a
    warning, exit 0, the copied path valid."""
    pub, lib, app, url, tok = served
    client = tmp_path / "client"
    assert _copy(url, client, keys.pk_file, app).returncode == 0
    tool = add_built(pub, tmp_path, "tool", "tool v1")
    assert push_cli(pub, [app, tool], url, tok, other_keys.sk_file).returncode == 0
    reg = tmp_path / "reg"
    broken = "/" + lib.split("/")[-1].split("-")[0] + ".narinfo"

    def do_get(h) -> None:  # the registry's files, as a static server gives them
        f = reg / h.path.lstrip("/")
        if h.path == broken:
            answer(h, 500, {}, b"broken")
        elif f.is_file() and reg in f.resolve().parents:
            answer(h, 200, {}, f.read_bytes())
        else:
            answer(h, 404, {}, b"")

    with serve(do_get) as src:
        r = _copy(src, client, other_keys.pk_file, tool, app)
    assert r.returncode == 0 and "copied 1 path" in r.stdout, r.stdout + r.stderr
    assert "warning: could not get new signatures from" in r.stderr and "held already" in r.stderr, r.stderr
    s = make_store(client)
    try:
        assert s.is_valid(tool)
    finally:
        s.close()
