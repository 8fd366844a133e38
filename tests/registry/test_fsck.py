"""``kiln registry verify --dir``: a registry directory's narinfos and blobs checked
byte for byte, corruption named per path, and ``--delete-bad`` unpublishing what failed
so the next push (or mirror sync) restores it, verified."""

from __future__ import annotations

import asyncio
import json

from regkit import add_built, kiln, push_cli, request

from kiln.registry import layout
from kiln.registry.backends import DirSource
from kiln.registry.fsck import verify_dir
from kiln.store import narinfo as ni


def _blob(reg, store, path) -> str:
    """The ``blobs/`` file of ``path`` in registry directory ``reg``."""
    info = ni.parse((reg / layout.narinfo_key(path.rsplit("/", 1)[1][:32])).read_text(), store.store_dir)
    return str(reg / layout.blob_key(info.file_hash))


def _verify(reg, *extra: str) -> tuple[int, dict]:
    r = kiln("registry", "verify", "--dir", str(reg), "--json", *extra)
    return r.returncode, json.loads(r.stdout)


def test_a_clean_registry_verifies(pushed, keys) -> None:
    store, chain, leaf, reg, tok, srv = pushed
    rc, doc = _verify(reg)
    assert rc == 0 and doc == {
        "ok": True, "checked": 6, "problems": [], "removed": [], "unnamed": 0, "unnamed_bytes": 0,
    }  # fmt: skip
    rc, doc = _verify(reg, "--trusted-key", str(keys.pk_file))  # signed by the pushing key
    assert rc == 0 and doc["problems"] == []


def test_corruption_is_named_per_path_and_repaired(pushed, keys) -> None:
    store, chain, leaf, reg, tok, srv = pushed
    flipped = _blob(reg, store, leaf)
    with open(flipped, "r+b") as f:  # in place: every link to the blob sees it
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0x40  # same size: a mirror sync would not notice
        f.seek(0)
        f.write(data)
    truncated = _blob(reg, store, chain[1])
    with open(truncated, "r+b") as f:
        f.truncate(5)
    (reg / layout.narinfo_key(chain[2].rsplit("/", 1)[1][:32])).write_text("StorePath: nonsense\n")

    rc, doc = _verify(reg)
    assert rc == 1 and doc["checked"] == 6
    by_path: dict[str, list[str]] = {}
    for p in doc["problems"]:
        by_path.setdefault(p["path"], []).append(p["problem"])
    assert set(by_path) == {leaf, chain[1], layout.narinfo_key(chain[2].rsplit("/", 1)[1][:32])}
    assert all("compressed file" in w for w in by_path[leaf]), by_path[leaf]
    assert all("compressed file" in w for w in by_path[chain[1]]), by_path[chain[1]]
    assert doc["removed"] == []  # reporting changes nothing

    # (beside the running server: tests/registry/test_fsck_beside_server.py)
    rc, doc = _verify(reg, "--delete-bad")
    assert rc == 1 and len(doc["removed"]) >= 3
    assert not (reg / layout.narinfo_key(leaf.rsplit("/", 1)[1][:32])).exists()
    rc, doc = _verify(reg)  # what is left is sound, but chain[3] lost its reference
    assert doc["checked"] == 3 and rc == 1
    assert [(p["path"], p["problem"]) for p in doc["problems"]] == [
        (chain[3], f"its reference {chain[2]} is not published")
    ]

    # the registry no longer claims the bad paths, so a push uploads them again
    r = kiln(
        "push", "--store", str(store.root), chain[-1], leaf, "--to", f"file://{reg}",
        "--sign-key", str(keys.sk_file),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rc, doc = _verify(reg)
    assert rc == 0 and doc["checked"] == 6


def test_signatures_by_other_keys_are_problems(pushed, keys, other_keys, tmp_path) -> None:
    """Of an input-addressed path; a content-addressed one is proved by its content (its
    CA judged against the object), as clients take it (``caclaim``)."""
    store, chain, leaf, reg, tok, srv = pushed
    built = add_built(store, tmp_path, "built", "a build's output")
    assert push_cli(store, [built], srv.url, tok, keys.sk_file).returncode == 0
    rep = verify_dir(DirSource(reg), trusted=[other_keys.pk], sigs_needed=1, progress=False)
    assert rep.checked == 7 and [p.path for p in rep.problems] == [built], rep.problems
    assert "signature" in rep.problems[0].what


def test_a_missing_blob_is_a_problem(pushed) -> None:
    store, chain, leaf, reg, tok, srv = pushed
    info = ni.parse((reg / layout.narinfo_key(leaf.rsplit("/", 1)[1][:32])).read_text(), store.store_dir)
    for key in (layout.blob_key(info.file_hash), layout.nar_key(info.file_hash)):
        (reg / key).unlink(missing_ok=True)
    rep = verify_dir(DirSource(reg), progress=False)
    assert [(p.path, "missing" in p.what) for p in rep.problems] == [(leaf, True)]


def test_an_incomplete_closure_is_reported_and_refused_on_upload(pushed, keys) -> None:
    """A published path whose reference is not published (its narinfo deleted by hand,
    or a directory written by other tools) is a problem ``registry verify`` names, and
    the server refuses to publish such a narinfo in the first place."""
    store, chain, leaf, reg, tok, srv = pushed
    body0 = (reg / layout.narinfo_key(_hp(chain[0]))).read_bytes()
    (reg / layout.narinfo_key(_hp(chain[0]))).unlink()
    rep = verify_dir(DirSource(reg), progress=False)
    assert [(p.path, p.what, p.content) for p in rep.problems] == [
        (chain[1], f"its reference {chain[0]} is not published", False)
    ]
    body = (reg / layout.narinfo_key(_hp(chain[1]))).read_bytes()
    (reg / layout.narinfo_key(_hp(chain[1]))).unlink()
    url = f"{srv.url}/{layout.narinfo_key(_hp(chain[1]))}"
    status, _, text = request(url, "PUT", body, {"Authorization": f"Bearer {tok}"})
    assert status == 409 and f"refers to {chain[0]}, which is not published here" in text.decode()
    # ... and in a POST /upload-batch as for a PUT, unless the reference comes earlier in it
    from kiln.registry.httpclient import HttpClient

    async def batch(frames):  # noqa: ANN001, ANN202
        c = HttpClient(srv.url, tok)
        try:
            return await c.upload_batch(frames)
        finally:
            await c.close()

    [res] = asyncio.run(batch([(_hp(chain[1]), body, None)]))
    assert res["status"] == 409 and f"refers to {chain[0]}" in res["message"]
    assert not (reg / layout.narinfo_key(_hp(chain[1]))).exists()
    both = asyncio.run(batch([(_hp(chain[0]), body0, None), (_hp(chain[1]), body, None)]))
    assert [r["status"] for r in both] == [201, 201]


def _hp(path: str) -> str:
    return path.rsplit("/", 1)[1][:32]


def test_a_shared_blob_is_judged_against_each_narinfo(pushed) -> None:
    """Two narinfos name one object; one lies about its NarSize. Whichever sorts first,
    only the liar is reported, and --delete-bad leaves the object and the good one."""
    store, chain, leaf, reg, tok, srv = pushed
    srv.stop()
    text = (reg / layout.narinfo_key(_hp(leaf))).read_text()
    info = ni.parse(text, store.store_dir)
    base = info.path.rsplit("/", 1)[1]
    for fake_hp in ("0" * 32, "z" * 32):
        fake_path = info.path[: -len(base)] + fake_hp + base[32:]
        liar = text.replace(info.path, fake_path).replace(
            f"NarSize: {info.nar_size}", f"NarSize: {info.nar_size + 1}"
        )
        (reg / layout.narinfo_key(fake_hp)).write_text(liar)
        rep = verify_dir(DirSource(reg), delete_bad=True, progress=False)
        assert {p.path for p in rep.problems} == {fake_path}, rep.problems
        assert rep.removed == (layout.narinfo_key(fake_hp),)
        assert verify_dir(DirSource(reg), progress=False).problems == ()


def test_policy_problems_are_reported_never_deleted(pushed, keys, other_keys, tmp_path) -> None:
    """Signatures by other keys and a non-zstd narinfo are not corruption: --delete-bad
    must not empty a registry because of a mistyped --trusted-key."""
    store, chain, leaf, reg, tok, srv = pushed
    built = add_built(store, tmp_path, "built", "a build's output")
    assert push_cli(store, [built], srv.url, tok, keys.sk_file).returncode == 0
    srv.stop()
    key = reg / layout.narinfo_key(_hp(leaf))
    key.write_text(key.read_text().replace("Compression: zstd", "Compression: xz"))
    rep = verify_dir(DirSource(reg), trusted=[other_keys.pk], sigs_needed=1, delete_bad=True, progress=False)
    assert rep.checked == 7 and len(rep.problems) >= 2 and rep.removed == ()
    assert any("xz" in p.what for p in rep.problems if p.path == leaf)
    assert any("signature" in p.what for p in rep.problems if p.path == built)
    assert all("signature" in p.what or "xz" in p.what for p in rep.problems)


def test_verify_of_a_directory_that_is_no_registry_changes_nothing(tmp_path) -> None:
    r = kiln("registry", "verify", "--dir", str(tmp_path / "typo"))
    assert r.returncode != 0 and "not a registry directory" in r.stderr
    assert not (tmp_path / "typo").exists()


def test_an_object_cut_at_a_block_boundary_is_a_problem(pushed) -> None:
    """A blob whose recorded FileHash was taken over a cut stream (the digests agree, the
    NAR inside is whole) is still not a complete zstd stream: Nix and ``zstd -t`` refuse it."""
    import zstandard

    from kiln.store.hashes import Hash

    store, chain, leaf, reg, tok, srv = pushed
    key = layout.narinfo_key(leaf.rsplit("/", 1)[1][:32])
    info = ni.parse((reg / key).read_text(), store.store_dir)
    nar = b"".join(store.nar(leaf))
    cut = zstandard.ZstdCompressor(write_checksum=True).compress(nar)[:-4]
    fh = Hash.sha256_of(cut)
    (reg / layout.blob_key(fh)).write_bytes(cut)
    (reg / layout.nar_key(fh)).write_bytes(cut)
    text = (reg / key).read_text()
    text = (
        text.replace(info.file_hash.to_nix32(), fh.to_nix32())
        .replace(f"URL: {info.url}", f"URL: {layout.nar_key(fh)}")
        .replace(f"FileSize: {info.file_size}", f"FileSize: {len(cut)}")
    )
    (reg / key).write_text(text)
    rc, doc = _verify(reg)
    assert rc == 1 and {p["path"] for p in doc["problems"]} == {leaf}, doc
    assert all("truncated" in p["problem"] for p in doc["problems"]), doc


def test_a_missing_url_is_reported_not_deleted(pushed) -> None:
    """kiln serve answers a narinfo's URL from blobs/, but nginx (or Nix reading the
    directory) fetches nar/<nix32>.nar.zst itself: with only the blobs/ link left, verify
    said 0 problems while a static server answered 404."""
    store, chain, leaf, reg, tok, srv = pushed
    info = ni.parse((reg / layout.narinfo_key(leaf.rsplit("/", 1)[1][:32])).read_text(), store.store_dir)
    (reg / info.url).unlink()
    rc, doc = _verify(reg, "--delete-bad")
    assert rc == 1 and [p["path"] for p in doc["problems"]] == [leaf], doc
    assert f"its URL {info.url} is missing" in doc["problems"][0]["problem"]
    assert doc["removed"] == []  # (the content is sound: relinking fixes it)
    blob = layout.blob_key(info.file_hash)
    assert f"ln {blob} {info.url}" in doc["problems"][0]["problem"]
    (reg / info.url).hardlink_to(reg / blob)
    assert _verify(reg)[0] == 0
