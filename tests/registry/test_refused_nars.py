"""The NAR of a narinfo the registry refuses is not kept: a push signed by a key the
server does not trust left one full NAR per refused path (both names) for ever, which
nothing reported (``batchcommit``: the server admits each narinfo of an upload batch
before it reads the NAR, and links in only the NARs its admitted narinfos name). An
object another narinfo names, or that was there before, stays. (A NAR sent by its own
``PUT`` stays until ``kiln registry verify --delete-unnamed``: test_verify_unnamed.py.)"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from regkit import add_chain, add_tree, kiln, make_store, request

from kiln.registry import layout
from kiln.registry.dirclient import DirClient
from kiln.store import narinfo as ni
from kiln.store.hashes import Hash
from kiln.store.pathinfo import PathInfo
from kiln.store.signing import SecretKey, sign_info


def _objects(reg: Path) -> list[str]:
    return sorted(str(p.relative_to(reg)) for d in ("nar", "blobs") for p in (reg / d).iterdir())


def _hp(path: str) -> str:
    return path.rsplit("/", 1)[1][:32]


def _text(info: PathInfo, sk: SecretKey | None, **change: object) -> bytes:
    """``info``'s narinfo signed by ``sk`` (unsigned if None), with ``change`` applied
    after signing (a ``CA:`` is not covered by the signature)."""
    signed = dataclasses.replace(info, sigs=(sign_info(info, sk),) if sk is not None else (), **change)
    return ni.NarInfo.from_pathinfo(signed, layout.nar_key(info.file_hash), "zstd").render().encode()


def _frame(hp: str, text: bytes, nar: bytes = b"") -> bytes:
    return f"{len(text)} {len(nar)} {hp}\n".encode() + text + nar


def _registry(tmp: Path, keys, kiln_server):  # noqa: ANN001, ANN202
    reg = tmp / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file))
    return reg, tok, srv


def test_a_push_signed_by_an_untrusted_key_leaves_no_object(tmp_path, keys, other_keys, kiln_server) -> None:
    store = make_store(tmp_path / "store")
    chain = add_chain(store, tmp_path, 3)
    reg, tok, srv = _registry(tmp_path, keys, kiln_server)
    push = ["push", "--store", str(store.root), chain[-1], "--to", srv.url, "--token", tok]
    r = kiln(*push, "--sign-key", str(other_keys.sk_file))
    assert r.returncode == 1 and "the registry refused 1 path(s)" in r.stderr, r.stdout + r.stderr
    assert "HTTP 403" in r.stderr and "intruder-1" in r.stderr, r.stderr
    assert _objects(reg) == [] and not list(reg.glob("*.narinfo"))
    r = kiln("registry", "verify", "--dir", str(reg), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["unnamed"] == 0, r.stdout
    r = kiln(*push, "--sign-key", str(keys.sk_file))  # the right key: all of it goes up
    assert r.returncode == 0 and "pushed 3 of 3 paths" in r.stdout, r.stderr
    assert len(_objects(reg)) == 6


def test_an_upload_batch_keeps_only_the_nars_admitted_narinfos_name(
    tmp_path, keys, other_keys, kiln_server
) -> None:
    """Per entry: untrusted (403), junk (400), a false ``CA:`` (400, judged on the NAR
    as staged: its sha1 is read from it) and a twin of an untrusted one whose NAR is the
    same object (201: that object stays); only what a published narinfo names is kept."""
    store = make_store(tmp_path / "store")
    good, untrusted, junk, lying = (add_tree(store, tmp_path, n, f"{n}\n") for n in ("a", "b", "c", "d"))
    twin1, twin2 = (add_tree(store, tmp_path, n, "same\n") for n in ("twin1", "twin2"))
    assert store.query(twin1).file_hash == store.query(twin2).file_hash
    reg, tok, srv = _registry(tmp_path, keys, kiln_server)
    nar = {p: store.object_path(p).read_bytes() for p in (good, untrusted, junk, lying, twin1)}
    sha1 = Hash("sha1", hashlib.sha1(b"".join(store.nar(lying))).digest())
    wrong = Hash("sha1", bytes(20)).to_nix32()
    body = b"".join(
        [
            _frame(_hp(untrusted), _text(store.query(untrusted), other_keys.sk), nar[untrusted]),
            _frame(_hp(good), _text(store.query(good), keys.sk), nar[good]),
            _frame(_hp(junk), b"StorePath: nonsense\n", nar[junk]),
            _frame(_hp(lying), _text(store.query(lying), keys.sk, ca=f"fixed:r:{wrong}"), nar[lying]),
            _frame(_hp(twin1), _text(store.query(twin1), None), nar[twin1]),  # unsigned
            _frame(_hp(twin2), _text(store.query(twin2), keys.sk), nar[twin1]),
        ]
    )
    s, _, out = request(f"{srv.url}/upload-batch", "POST", body, {"Authorization": f"Bearer {tok}"})
    res = json.loads(out)["results"]
    assert s == 200 and [r["status"] for r in res] == [403, 201, 400, 400, 403, 201], res
    assert f"found {sha1.to_nix32()}" in res[3]["message"], res[3]
    kept = {store.query(p).file_hash for p in (good, twin2)}
    assert _objects(reg) == sorted(k for h in kept for k in (layout.blob_key(h), layout.nar_key(h)))
    assert list((reg / ".kiln" / "tmp").iterdir()) == []
    r = kiln("registry", "verify", "--dir", str(reg), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["unnamed"] == 0, r.stdout


def test_a_push_to_a_directory_keeps_no_nar_of_a_refused_narinfo(tmp_path) -> None:
    """``commit_batch`` without a server: the directory client stages each NAR before
    the narinfo is admitted, and a refused one's NAR is not linked in."""
    store = make_store(tmp_path / "store")
    a, b = add_tree(store, tmp_path, "a", "a\n"), add_tree(store, tmp_path, "b", "b\n")
    client = DirClient(str(tmp_path / "reg"), store.store_dir)
    frames = [
        (_hp(a), _text(store.query(b), None), store.object_path(a)),  # b's narinfo under a's name
        (_hp(b), _text(store.query(b), None), store.object_path(b)),
    ]
    res = client.upload_batch_sync(frames)
    assert [r["status"] for r in res] == [400, 201], res
    fh = store.query(b).file_hash
    assert _objects(tmp_path / "reg") == sorted([layout.blob_key(fh), layout.nar_key(fh)])
