"""A path's ``Sig:`` lines are not covered by its signature: whoever writes them first
(a hostile registry, an uploader with a write token) must not be able to crowd a
genuine signature out of the ``MAX_SIGS`` an importer keeps by listing junk before it.
Over the limit, signatures valid by a key known here (the store's own keys,
``$KILN_HOME/keys``) are kept first (``pathadmit.keep_sigs``)."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest
from regkit import add_tree, make_store

from kiln.registry import layout
from kiln.registry.client import open_client
from kiln.registry.copy import to_store
from kiln.registry.push import push
from kiln.store import narinfo as ni
from kiln.store.keyfiles import write_public_key
from kiln.store.pathadmit import MAX_SIGS, keep_sigs
from kiln.store.pathinfo import PathInfo
from kiln.store.signing import SecretKey, sign_info


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``$KILN_HOME`` (its ``keys/`` are keys known here): the runner's own
    keys must not decide what these tests keep."""
    home = tmp_path / "home"
    monkeypatch.setenv("KILN_HOME", str(home))
    return home


def _junk(n: int, name: str = "junk") -> list[str]:
    """``n`` well-formed signatures by ``name-<i>`` that no key made."""
    return [f"{name}-{i}:{base64.b64encode(i.to_bytes(64, 'big')).decode()}" for i in range(n)]


def _know(d: Path, key: SecretKey) -> None:
    d.mkdir(parents=True, exist_ok=True)
    write_public_key(d / f"{key.name}.pub", key.public())


def _with_sigs(info: PathInfo, sigs: list[str]) -> PathInfo:
    return dataclasses.replace(info, sigs=tuple(sigs))


def test_a_signature_by_a_known_key_survives_junk_listed_before_it(tmp_path, _home) -> None:
    store = make_store(tmp_path / "store")
    a = store.query(add_tree(store, tmp_path, "a", "a\n"))
    key = SecretKey.generate("ours-1")
    forged = f"ours-1:{base64.b64encode(bytes(64)).decode()}"  # under our key's name
    genuine = sign_info(a, key)
    sigs = [*_junk(MAX_SIGS + 10), forged, genuine]
    # no key known here: the signatures cannot be told apart, first come first kept
    kept, why = keep_sigs(_with_sigs(a, sigs))
    assert genuine not in kept.sigs and len(kept.sigs) == MAX_SIGS and "over the limit" in why
    # the key in the store's keys/: valid by it first, then the unjudgeable in their
    # order; one forged under a known name goes before any of them
    _know(tmp_path / "store" / "keys", key)
    kept, why = keep_sigs(_with_sigs(a, sigs), store_root=tmp_path / "store")
    assert kept.sigs == (*_junk(MAX_SIGS - 1), genuine), why
    assert f"keeping {MAX_SIGS} of its {len(sigs)} signatures" in why
    # or in $KILN_HOME/keys (what every importer consults, given no store)
    _know(_home / "keys", key)
    assert keep_sigs(_with_sigs(a, sigs))[0].sigs == (*_junk(MAX_SIGS - 1), genuine)
    # under the limit nothing is judged or reordered
    few = [forged, *_junk(3), genuine]
    assert keep_sigs(_with_sigs(a, few))[0].sigs == tuple(few)


def test_with_trusted_keys_only_theirs_are_kept_whatever_comes_first(tmp_path) -> None:
    store = make_store(tmp_path / "store")
    a = store.query(add_tree(store, tmp_path, "a", "a\n"))
    key = SecretKey.generate("cache-1")
    genuine = sign_info(a, key)
    kept, why = keep_sigs(_with_sigs(a, [*_junk(200), *_junk(200, "cache-1"), genuine]), [key.public()])
    assert kept.sigs == (genuine,) and "(400 not by a trusted key dropped)" in why, why


def test_an_import_keeps_the_signature_a_known_key_made(tmp_path, _home) -> None:
    """``import_object`` (no trusted keys, no store root given to the filter) still finds
    the keys in ``$KILN_HOME/keys``."""
    src = make_store(tmp_path / "src")
    a = src.query(add_tree(src, tmp_path, "a", "a\n"))
    key = SecretKey.generate("home-1")
    _know(_home / "keys", key)
    dst = make_store(tmp_path / "dst")
    with open(src.object_path(a.path), "rb") as f:
        got = dst.import_object(_with_sigs(a, [*_junk(MAX_SIGS + 1), sign_info(a, key)]), f)
    assert sign_info(a, key) in got.sigs and sign_info(a, key) in dst.query(a.path).sigs


def test_an_import_consults_the_destination_store_s_own_keys(tmp_path) -> None:
    """A store opened with ``--store DIR`` signs with ``DIR/keys``: ``import_object``
    must count those as known (it looked only in ``$KILN_HOME/keys``)."""
    src = make_store(tmp_path / "src")
    a = src.query(add_tree(src, tmp_path, "a", "a\n"))
    key = SecretKey.generate("store-1")
    dst = make_store(tmp_path / "dst")
    _know(tmp_path / "dst" / "keys", key)
    with open(src.object_path(a.path), "rb") as f:
        got = dst.import_object(_with_sigs(a, [*_junk(MAX_SIGS + 1), sign_info(a, key)]), f)
    assert sign_info(a, key) in got.sigs


def test_copy_from_a_registry_keeps_the_stores_own_signature(tmp_path, kiln_server) -> None:
    """A registry serves a path whose narinfo lists 70 junk signatures before a genuine
    one by a key of the destination store's own (its ``keys/``): ``kiln copy`` without
    trusted keys keeps the genuine one."""
    src = make_store(tmp_path / "src")
    p = add_tree(src, tmp_path, "a", "a\n")
    reg = tmp_path / "reg"
    push(src, [p], lambda: open_client(f"file://{reg}", store_dir=src.store_dir))
    info = src.query(p)
    key = SecretKey.generate("builder-1")
    genuine = sign_info(info, key)
    text = ni.NarInfo.from_pathinfo(
        _with_sigs(info, [*_junk(70), genuine]), layout.nar_key(info.file_hash), "zstd"
    ).render()
    (reg / layout.narinfo_key(p.rsplit("/", 1)[1][:32])).write_text(text)
    url = kiln_server("--dir", str(reg)).url
    dst = make_store(tmp_path / "dst")
    _know(tmp_path / "dst" / "keys", key)
    assert to_store(url, dst, [p], trusted=[], sigs_needed=0) == 1
    sigs = dst.query(p).sigs
    assert genuine in sigs and len(sigs) == MAX_SIGS, sigs
