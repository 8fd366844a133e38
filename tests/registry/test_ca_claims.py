"""The ``CA:`` field is not covered by a narinfo's signature: a registry (or an uploader
with a write token) can set a well-formed but false one on a genuinely signed path.
Clients refuse to import it, servers refuse to publish it, an honest push repairs one
already published and ``kiln registry verify`` reports it (``registry.admitca``)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

from regkit import add_tree, kiln, make_store, request

from kiln.registry import layout
from kiln.registry.httpclient import HttpClient
from kiln.store import narinfo as ni
from kiln.store.localstore import LocalStore
from kiln.store.signing import sign_info


class Setup:
    """A store with two content-addressed paths pushed (signed) to a served registry."""

    def __init__(self, tmp: Path, keys, kiln_server) -> None:  # noqa: ANN001
        self.tmp, self.keys = tmp, keys
        self.store = make_store(tmp / "store")
        self.a = add_tree(self.store, tmp, "a", "the real content\n")
        self.b = add_tree(self.store, tmp, "b", "other content\n")
        self.reg = tmp / "reg"
        assert kiln("registry", "init", "--dir", str(self.reg)).returncode == 0
        self.tok = kiln(
            "registry", "token", "create", "--scope", "write", "--dir", str(self.reg)
        ).stdout.strip()
        self.srv = kiln_server("--dir", str(self.reg), "--trusted-key", str(keys.pk_file))
        self.url = self.srv.url

    def push(self, *paths: str) -> str:
        r = kiln(
            "push", "--store", str(self.store.root), *paths, "--to", self.url, "--token", self.tok,
            "--sign-key", str(self.keys.sk_file),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout

    def hp(self, p: str) -> str:
        return p.rsplit("/", 1)[1][:32]

    def lie(self) -> str:
        """The CA a hostile party sets on ``a``: well-formed, naming ``b``'s NAR."""
        return f"fixed:r:sha256:{self.store.query(self.b).nar_hash.nix32}"

    def narinfo(self, path: str, ca: str | None) -> bytes:
        """``path``'s narinfo as pushed (genuinely signed) but with ``ca``."""
        info = self.store.query(path)
        info = dataclasses.replace(info, sigs=(sign_info(info, self.keys.sk),), ca=ca)
        return ni.NarInfo.from_pathinfo(info, layout.nar_key(info.file_hash), "zstd").render().encode()

    def plant(self, path: str, ca: str | None) -> None:
        """Write ``path``'s narinfo with ``ca`` straight into the directory (a registry that
        published it before admission checked CAs, or a hostile one)."""
        f = self.reg / f"{self.hp(path)}.narinfo"
        tmp = f.with_suffix(".tmp")
        tmp.write_bytes(self.narinfo(path, ca))
        os.replace(tmp, f)  # a new file: the server's cache sees it at once


def test_a_client_refuses_a_false_ca_from_a_registry(tmp_path, keys, kiln_server) -> None:
    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.a, s.b)
    s.plant(s.a, s.lie())
    d = tmp_path / "d"
    r = kiln(
        "copy", "--store", str(d), "--from", s.url, "--to", "store", s.a, "--trusted-key", str(keys.pk_file)
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "refusing its content address" in r.stderr and "internal error" not in r.stderr, r.stderr
    nar_a, nar_b = s.store.query(s.a).nar_hash.to_nix32(), s.store.query(s.b).nar_hash.to_nix32()
    assert f"expects the NAR's sha256 to be {nar_b}, found {nar_a}" in r.stderr, r.stderr
    with LocalStore.open(d) as other:
        assert not other.is_valid(s.a) and other.verify().ok
    # the same path with its true CA goes in
    s.plant(s.a, s.store.query(s.a).ca)
    r = kiln(
        "copy", "--store", str(d), "--from", s.url, "--to", "store", s.a, "--trusted-key", str(keys.pk_file)
    )
    assert r.returncode == 0, r.stderr
    with LocalStore.open(d) as other:
        assert other.query(s.a).ca == s.store.query(s.a).ca and other.verify().ok


def test_substitution_refuses_a_false_ca(tmp_path, keys, kiln_server) -> None:
    from kiln.registry.substitute import Substituter
    from kiln.store.pathadmit import ContentAddressError

    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.a, s.b)
    s.plant(s.a, s.lie())
    other = make_store(tmp_path / "other")
    with Substituter([(s.url, 0)], [keys.pk]) as sub:
        found = sub.query_many([s.a])
        assert found[s.a].ca == s.lie()  # it is signed: the signature does not cover the CA
        try:
            sub.fetch_many(other, [found[s.a]])
        except ContentAddressError as e:
            assert "expects the NAR's sha256" in str(e)
        else:
            raise AssertionError("a false CA was imported")
    assert not other.is_valid(s.a)


def _put(url: str, key: str, body: bytes, tok: str) -> tuple[int, bytes]:
    st, _, data = request(f"{url}/{key}", "PUT", body, {"Authorization": f"Bearer {tok}"})
    return st, data


def test_the_server_refuses_to_publish_a_false_ca(tmp_path, keys, kiln_server) -> None:
    """A write token without the signing key: a genuinely signed narinfo with a false CA
    is refused (PUT and upload-batch), saying why; nothing is published."""
    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.b)
    info = s.store.query(s.a)
    with open(s.store.object_path(s.a), "rb") as f:
        assert _put(s.url, layout.nar_key(info.file_hash), f.read(), s.tok)[0] == 201
    st, body = _put(s.url, f"{s.hp(s.a)}.narinfo", s.narinfo(s.a, s.lie()), s.tok)
    assert st == 400 and b"refusing its CA" in body and b"expects the NAR's sha256" in body, body
    assert not (s.reg / f"{s.hp(s.a)}.narinfo").exists()

    async def batch() -> list:
        async with HttpClient(s.url, s.tok) as c:
            return await c.upload_batch([(s.hp(s.a), s.narinfo(s.a, s.lie()), None)])

    (res,) = asyncio.run(batch())
    assert res["status"] == 400 and "refusing its CA" in res["message"], res
    assert not (s.reg / f"{s.hp(s.a)}.narinfo").exists()
    # the honest narinfo is published
    assert _put(s.url, f"{s.hp(s.a)}.narinfo", s.narinfo(s.a, info.ca), s.tok)[0] == 201


def test_a_file_url_refuses_a_false_ca_too(tmp_path, keys) -> None:
    from kiln.registry.client import RegistryError
    from kiln.registry.dirclient import DirClient

    store = make_store(tmp_path / "store")
    a = add_tree(store, tmp_path, "a", "x\n")
    b = add_tree(store, tmp_path, "b", "y\n")
    info = store.query(a)
    lie = dataclasses.replace(info, ca=f"fixed:r:sha256:{store.query(b).nar_hash.nix32}")

    async def run() -> None:
        c = DirClient(str(tmp_path / "reg"), store.store_dir)
        await c.put_file(layout.nar_key(info.file_hash), store.object_path(a))
        text = ni.NarInfo.from_pathinfo(lie, layout.nar_key(info.file_hash), "zstd").render().encode()
        try:
            await c.put_bytes(layout.narinfo_key(a.rsplit("/", 1)[1][:32]), text)
        except RegistryError as e:
            assert e.status == 400 and "refusing its CA" in str(e)
        else:
            raise AssertionError("published")

    asyncio.run(run())


def test_an_honest_push_repairs_a_published_false_ca(tmp_path, keys, kiln_server) -> None:
    """A false CA published before admission checked them: ``registry verify`` reports it
    (a content problem of the narinfo), and the next honest push replaces it."""
    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.a, s.b)
    s.plant(s.a, s.lie())
    r = kiln("registry", "verify", "--dir", str(s.reg))
    assert r.returncode == 1 and "refusing its CA" in r.stdout + r.stderr, r.stdout + r.stderr
    out = s.push(s.a)
    assert "pushed 0 of 1" in out, out  # the narinfo was there: sent again for its CA
    served = request(f"{s.url}/{s.hp(s.a)}.narinfo")[2].decode()
    assert f"CA: {s.store.query(s.a).ca}\n" in served and s.lie() not in served, served
    r = kiln("registry", "verify", "--dir", str(s.reg))
    assert r.returncode == 0, r.stdout + r.stderr
    # a narinfo without a CA does not drop a true one
    st, body = _put(s.url, f"{s.hp(s.a)}.narinfo", s.narinfo(s.a, None), s.tok)
    assert st == 200 and b"already published" in body, body
    assert f"CA: {s.store.query(s.a).ca}\n" in request(f"{s.url}/{s.hp(s.a)}.narinfo")[2].decode()
    assert "sent again" not in s.push(s.a)  # settled: nothing to send


def test_a_store_without_a_ca_does_not_resend_forever(tmp_path, keys, kiln_server) -> None:
    """The registry keeps a true CA when a narinfo without one comes; a store without a
    CA for the path must not send its narinfo again on every push."""
    import contextlib
    import sqlite3

    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.a)
    with contextlib.closing(sqlite3.connect(s.store.root / "db.sqlite")) as db, db:
        db.execute("update paths set ca = NULL where path = ?", (s.a,))
    for _ in range(2):
        out = s.push(s.a)
        assert "pushed 0 of 1" in out and "sent again" not in out, out


def test_registry_verify_delete_bad_keeps_the_object_of_a_false_ca(tmp_path, keys, kiln_server) -> None:
    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.a, s.b)
    s.srv.stop()  # (the registry as it is at rest: nothing serves it while it is checked)
    s.plant(s.a, s.lie())
    r = kiln("registry", "verify", "--dir", str(s.reg), "--delete-bad")
    assert r.returncode == 1, r.stdout + r.stderr
    assert not (s.reg / f"{s.hp(s.a)}.narinfo").exists()
    assert (s.reg / layout.nar_key(s.store.query(s.a).file_hash)).exists()  # its bytes were fine
    assert (s.reg / f"{s.hp(s.b)}.narinfo").exists()


def test_an_honest_push_repairs_a_published_unparseable_ca(tmp_path, keys, kiln_server) -> None:
    """A published ``CA:`` line that does not parse at all is repaired by a push the way a
    false but well-formed one is (``admitca.published``): the narinfo is sent
    again for its CA and the registry replaces the line with the checked one."""
    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.a, s.b)
    true_ca = s.store.query(s.a).ca
    for junk in ("fixed:r:sha256:not-a-hash", "sha256:abc", f"{true_ca}\nCA: {s.lie()}"):
        s.plant(s.a, true_ca)
        f = s.reg / f"{s.hp(s.a)}.narinfo"
        f.write_text(f.read_text().replace(f"CA: {true_ca}\n", f"CA: {junk}\n"))
        out = s.push(s.a)
        assert "pushed 0 of 1" in out, out
        served = request(f"{s.url}/{s.hp(s.a)}.narinfo")[2].decode()
        assert served.count("CA: ") == 1 and f"CA: {true_ca}\n" in served, (junk, served)
        ni.parse(served, s.store.store_dir)
    r = kiln("registry", "verify", "--dir", str(s.reg))
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_published_narinfo_broken_beyond_its_ca_fails_only_its_own_batch_entry(
    tmp_path, keys, kiln_server
) -> None:
    """A narinfo already in the registry that does not parse (written by hand, another
    tool): a batch upload meeting it answers 400 for that path alone; the rest of the
    batch is published (the merge's error escaped and failed the whole request)."""
    import json

    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.a, s.b)
    (s.reg / f"{s.hp(s.a)}.narinfo").write_text("StorePath: nonsense\n")
    os.unlink(s.reg / f"{s.hp(s.b)}.narinfo")  # its NAR stays: sent with length 0 below
    body = b""
    for p in (s.a, s.b):
        text = s.narinfo(p, s.store.query(p).ca)
        body += b"%d 0 %s\n" % (len(text), s.hp(p).encode()) + text
    st, _, data = request(f"{s.url}/upload-batch", "POST", body, {"Authorization": f"Bearer {s.tok}"})
    assert st == 200, (st, data)
    results = {r["hash"]: r for r in json.loads(data)["results"]}
    assert results[s.hp(s.a)]["status"] == 400, results
    assert results[s.hp(s.b)]["status"] == 201, results
    assert request(f"{s.url}/{s.hp(s.b)}.narinfo")[0] == 200


def test_a_refused_ca_correction_is_a_warning_not_a_refused_signature(tmp_path, keys, kiln_server) -> None:
    """A narinfo sent again only for its CA (here the store's own CA is the false one) that
    the registry refuses: a warning naming the CA, the push exits 0 (the published path is
    as it was); it was reported as a signature the registry did not trust, and failed."""
    import contextlib
    import sqlite3

    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.a, s.b)
    with contextlib.closing(sqlite3.connect(s.store.root / "db.sqlite")) as db, db:
        db.execute("update paths set ca = ? where path = ?", (s.lie(), s.a))
    r = kiln(
        "push", "--store", str(s.store.root), s.a, "--to", s.url, "--token", s.tok,
        "--sign-key", str(s.keys.sk_file),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"warning: the registry did not take the corrected CA of {s.a}: " in r.stderr, r.stderr
    assert "new signature" not in r.stderr, r.stderr
    served = request(f"{s.url}/{s.hp(s.a)}.narinfo")[2].decode()
    assert s.lie() not in served, served
