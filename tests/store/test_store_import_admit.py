"""What an import takes from unsigned metadata (``store.pathadmit``): a ``ca`` must be true
of the content and give the path, else the path is refused and nothing is registered;
junk, repeated or excess signatures are dropped with a warning."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from storekit import make_tree

from kiln.store import db, nar
from kiln.store.hashes import Hash
from kiln.store.localstore import LocalStore
from kiln.store.pathadmit import MAX_SIGS, ContentAddressError, FlatHasher, keep_sigs, reset_drop_warnings
from kiln.store.pathinfo import PathInfo
from kiln.store.paths import make_fixed_output_path, make_output_path
from kiln.store.signing import SecretKey, sign_info


def _import(how: str, dst: LocalStore, src: LocalStore, info: PathInfo) -> PathInfo:
    """Import ``info`` (content: ``src``'s object for ``info.path``) the way ``how`` says."""
    if how == "nar":
        return dst.import_nar(dataclasses.replace(info, file_hash=None, file_size=None), src.nar(info.path))
    with open(src.object_path(info.path), "rb") as f:
        if how == "object":
            return dst.import_object(info, f)
        return dst.import_objects([(info, f)])[0]


def _nothing_registered(store: LocalStore, path: str) -> None:
    assert not store.is_valid(path)
    assert db.all_infos(store.conn) == []
    assert not store.real_path(path).exists()


HOWS = ["nar", "object", "objects", "objects-big"]


@pytest.fixture(autouse=True)
def _every_drop_shown() -> None:
    """These tests read each path's warning: earlier imports in this process must not
    have used up the ones shown in full (``pathadmit.SHOWN_DROPS``)."""
    reset_drop_warnings()


@pytest.fixture(params=HOWS)
def how(request, monkeypatch) -> str:
    if request.param == "objects-big":  # the streaming stage (not the in-memory one)
        from kiln.store import importbatch

        monkeypatch.setattr(importbatch, "SMALL", 0)
        return "objects"
    return request.param


def test_a_false_recursive_ca_is_refused(store, tmp_path, how) -> None:
    """``fixed:r:sha256:`` naming another NAR's hash (what a hostile registry can set on a
    genuinely signed path): refused, saying what it expected and what it found."""
    a = store.add_path(make_tree(tmp_path / "a", {"x": "real"}))
    b = store.add_path(make_tree(tmp_path / "b", {"x": "other"}))
    other = LocalStore.open(tmp_path / "other")
    lie = dataclasses.replace(a, ca=f"fixed:r:sha256:{b.nar_hash.nix32}")
    with pytest.raises(ContentAddressError) as e:
        _import(how, other, store, lie)
    assert f"expects the NAR's sha256 to be {b.nar_hash.to_nix32()}, found {a.nar_hash.to_nix32()}" in str(
        e.value
    )
    _nothing_registered(other, a.path)
    assert _import(how, other, store, a).ca == a.ca  # the true claim goes in
    assert other.verify().ok


def test_a_true_hash_for_another_path_is_refused(store, tmp_path, how) -> None:
    """A CA whose hash is the content's but which implies another store path (here an
    input-addressed path's: its signature then seems unnecessary) is refused."""
    tree = make_tree(tmp_path / "t", {"x": "built"})
    path = str(make_output_path(Hash.sha256_of(b"drv"), "out", "built", store.store_dir))
    info = store.register_built(path, tree, (), None)
    other = LocalStore.open(tmp_path / "other")
    lie = dataclasses.replace(info, ca=f"fixed:r:sha256:{info.nar_hash.nix32}")
    with pytest.raises(ContentAddressError, match=r"gives path /kiln/store/\S+-built, not " + path):
        _import(how, other, store, lie)
    _nothing_registered(other, path)


def test_flat_and_text_claims_are_checked_against_the_file(store, tmp_path, how) -> None:
    txt = store.add_text("note.txt", b"hello\n", [])
    other = LocalStore.open(tmp_path / "other")
    wrong = Hash.sha256_of(b"bye\n")
    with pytest.raises(ContentAddressError, match=f"the file's sha256 to be {wrong.to_nix32()}, found"):
        _import(how, other, store, dataclasses.replace(txt, ca=f"text:sha256:{wrong.nix32}"))
    _nothing_registered(other, txt.path)
    # a flat fixed output (fetchurl): its path is computed from the claimed hash
    data = b"tarball bytes"
    right = Hash.sha256_of(data)
    flat = str(make_fixed_output_path("src.tar", right, False, store.store_dir))
    elsewhere = str(make_fixed_output_path("src.tar", wrong, False, store.store_dir))
    for p in (flat, elsewhere):
        leaf = tmp_path / "leaf"
        leaf.write_bytes(data)
        store.register_built(p, leaf, (), None)
    got, moved = store.query(flat), store.query(elsewhere)
    with pytest.raises(ContentAddressError, match=f"the file's sha256 to be {wrong.to_nix32()}"):
        _import(how, other, store, dataclasses.replace(moved, ca=f"fixed:sha256:{wrong.nix32}"))
    with pytest.raises(ContentAddressError, match=f"gives path {flat}, not {elsewhere}"):
        _import(how, other, store, dataclasses.replace(moved, ca=f"fixed:sha256:{right.nix32}"))
    _nothing_registered(other, elsewhere)
    assert _import(how, other, store, txt).ca == txt.ca
    ok = _import(how, other, store, dataclasses.replace(got, ca=f"fixed:sha256:{right.nix32}"))
    assert ok.ca and other.verify().ok


def test_flat_hasher_follows_the_nar_of_one_plain_file(tmp_path) -> None:
    """The registry's streaming flat hash agrees with the tree's, in any chunking, and
    refuses every other shape."""
    for data in (b"", b"x", b"12345678", b"a" * 1000):
        arch = nar.file_nar(data)
        for step in (1, 3, 8, len(arch)):
            h = FlatHasher()
            for k in range(0, len(arch), step):
                h.update(arch[k : k + step])
            assert h.result() == Hash.sha256_of(data), (data, step)
    for arch in (
        nar.file_nar(b"x", executable=True),
        nar.file_nar(b"x") + b"\0",
        nar.dump_bytes(make_tree(tmp_path / "d", {"f": "x"})),
    ):
        h = FlatHasher()
        h.update(arch)
        assert h.result() is None


def _junk_sigs(info: PathInfo, key: SecretKey) -> tuple[str, ...]:
    good = sign_info(info, key)
    fake = [f"junk-{i}:{base64.b64encode(i.to_bytes(64, 'big')).decode()}" for i in range(200)]
    return (good, good, "no-colon", "x:not base64!", "short:" + base64.b64encode(b"12").decode(), *fake)


def test_junk_signatures_are_not_stored(store, tmp_path, how, capfd) -> None:
    """Malformed and repeated signatures are dropped, at most ``MAX_SIGS`` kept (the first,
    so the genuine one survives), with one warning saying so."""
    key = SecretKey.generate("cache-1")
    a = store.add_path(make_tree(tmp_path / "a", {"x": "1"}))
    other = LocalStore.open(tmp_path / "other")
    got = _import(how, other, store, dataclasses.replace(a, sigs=_junk_sigs(a, key)))
    assert len(got.sigs) == MAX_SIGS and got.sigs[0] == sign_info(a, key)
    assert sorted(other.query(a.path).sigs) == sorted(got.sigs)
    err = capfd.readouterr().err
    assert f"keeping {MAX_SIGS} of its 205 signatures" in err and "malformed or repeated" in err
    assert f"over the limit of {MAX_SIGS}" in err


def test_keep_sigs_with_trusted_keys_keeps_only_theirs(store, tmp_path) -> None:
    key, stranger = SecretKey.generate("cache-1"), SecretKey.generate("cache-1")  # same name
    a = store.add_path(make_tree(tmp_path / "a", {"x": "1"}))
    mine, theirs = sign_info(a, key), sign_info(a, stranger)
    kept, why = keep_sigs(dataclasses.replace(a, sigs=(theirs, *_junk_sigs(a, key), mine)), [key.public()])
    # told apart: signatures by keys not trusted here, and one in the trusted key's name that
    # does not verify (the stranger's)
    assert kept.sigs == (mine,), why
    assert "200 not by a trusted key, 1 in a trusted key's name but not valid by it dropped" in why, why
    same, why = keep_sigs(dataclasses.replace(a, sigs=(mine,)), [key.public()])
    assert same.sigs == (mine,) and why == ""


def test_store_verify_reports_the_same_problem_for_a_stored_false_ca(store, tmp_path) -> None:
    """A false CA already in a store (imported before imports checked it) is what
    ``store verify`` reports, with the same judge and wording."""
    a = store.add_path(make_tree(tmp_path / "a", {"x": "real"}))
    b = store.add_path(make_tree(tmp_path / "b", {"x": "other"}))
    with store.conn:
        store.conn.execute(
            "UPDATE paths SET ca=? WHERE path=?", (f"fixed:r:sha256:{b.nar_hash.nix32}", a.path)
        )
    r = store.verify()
    assert [(p.path, p.kind) for p in r.problems] == [(a.path, "ca-mismatch")]
    assert f"found {a.nar_hash.to_nix32()}" in r.problems[0].detail


def test_other_hash_algorithms_are_checked_too(store, tmp_path) -> None:
    """An old Nix ``fixed:r:sha1:`` claim is recomputed (here from the tree, and from the
    NAR as a registry does), not waved through."""
    import hashlib

    from kiln.store.pathadmit import ca_problem, nar_content

    tree = make_tree(tmp_path / "t", {"x": "old fetch"})
    sha1 = Hash("sha1", hashlib.sha1(nar.dump_bytes(tree)).digest())
    path = str(make_fixed_output_path("old", sha1, True, store.store_dir))
    info = store.register_built(path, tree, (), None)
    other = LocalStore.open(tmp_path / "other")
    bad = Hash("sha1", hashlib.sha1(b"else").digest())
    lie = dataclasses.replace(info, ca=f"fixed:r:sha1:{bad.nix32}")
    with pytest.raises(
        ContentAddressError, match=f"NAR's sha1 to be {bad.to_nix32()}, found {sha1.to_nix32()}"
    ):
        _import("object", other, store, lie)
    truth = dataclasses.replace(info, ca=f"fixed:r:sha1:{sha1.nix32}")
    assert _import("object", other, store, truth).ca == truth.ca
    data = b"".join(store.nar(path))
    assert ca_problem(truth, nar_content(info.nar_hash, None, lambda: [data])) == ""
    assert "found" in ca_problem(lie, nar_content(info.nar_hash, None, lambda: [data]))
