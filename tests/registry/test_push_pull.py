"""Push a closure, pull it back (kiln copy / Substituter), and every way that must fail:
tampered blob, wrong signature, unreachable registry; plus ``kiln serve --store``."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from regkit import Keys, add_built, add_chain, add_tree, free_port, kiln, make_store, push_cli

from kiln.registry import layout
from kiln.registry.client import open_client
from kiln.registry.copy import to_store
from kiln.registry.push import PushReport, prepare, push, push_prepared
from kiln.registry.substitute import Substituter
from kiln.store.errors import HashMismatch, KilnError
from kiln.store.hashes import Hash


def test_push_skips_what_registry_has(pushed, keys, kiln_server) -> None:
    store, chain, leaf, reg, tok, srv = pushed
    rep = push(store, [chain[-1]], lambda: open_client(srv.url, tok), sign_key=keys.sk)
    assert (rep.closure, rep.pushed, rep.nars_uploaded) == (5, 0, 0)
    # resume after an interruption that left NARs but no narinfos: only narinfos go up
    for p in chain[2:]:
        (reg / f"{p.split('/')[-1][:32]}.narinfo").unlink()
    srv2 = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file))  # no narinfo cache yet
    rep = push(store, [chain[-1]], lambda: open_client(srv2.url, tok))
    assert (rep.pushed, rep.nars_uploaded) == (3, 0)


def test_push_sends_new_signatures_of_published_paths(pushed, keys, tmp_path, kiln_server) -> None:
    """After a key rotation (``kiln key rotate --resign``) the store holds a second
    signature for published paths: a push sends their narinfos again, the registry merges
    the signatures it trusts, and a client trusting only the new key substitutes."""
    from kiln.store.signing import SecretKey, sign_info

    store, chain, leaf, reg, tok, srv = pushed
    (tmp_path / "new").mkdir()
    new = Keys(tmp_path / "new", "kiln-test-2")
    srv.stop()  # the registry now trusts both keys
    srv2 = kiln_server(
        "--dir", str(reg), "--trusted-key", str(keys.pk_file), "--trusted-key", str(new.pk_file),
        "--index-key", str(keys.sk_file),
    )  # fmt: skip
    rep = push(store, [chain[-1]], lambda: open_client(srv2.url, tok), sign_key=new.sk)
    assert (rep.pushed, rep.nars_uploaded, rep.signatures_updated) == (0, 0, 5)
    for p in chain:
        text = (reg / f"{p.split('/')[-1][:32]}.narinfo").read_text()
        assert "Sig: kiln-test-1:" in text and "Sig: kiln-test-2:" in text
    r = kiln(
        "copy",
        "--from",
        srv2.url,
        "--to",
        str(tmp_path / "dest"),
        "--trusted-key",
        str(new.pk_file),
        chain[-1],
    )
    assert r.returncode == 0, r.stderr
    # nothing more to send: a re-run sends no narinfo
    rep = push(store, [chain[-1]], lambda: open_client(srv2.url, tok))
    assert (rep.pushed, rep.signatures_updated) == (0, 0)
    # a signature by a key of another family (a local build key) is never re-sent: the
    # registry would never merge it, and every push would send it again
    local = SecretKey.generate("local-build-1")
    for p in chain:
        store.add_signatures(p, [sign_info(store.query(p), local)])
    rep = push(store, [chain[-1]], lambda: open_client(srv2.url, tok))
    assert (rep.signatures_updated, rep.signatures_refused) == (0, ())
    # this push's own key is sent; where the registry does not trust it, a warning
    untrusted = SecretKey.generate("elsewhere-1")
    rep = push(store, [chain[-1]], lambda: open_client(srv2.url, tok), sign_key=untrusted)
    assert rep.signatures_updated == 0 and len(rep.signatures_refused) == 5


def test_a_push_whose_signature_the_registry_drops_exits_1(pushed, keys, tmp_path) -> None:
    """``--sign-key`` with a key the registry does not trust: the push publishes what is
    new (the narinfo keeps every signature it came with) but fails, naming each published
    path whose new signature the registry did not merge."""
    from kiln.store.signing import sign_info

    store, chain, _leaf, reg, tok, srv = pushed
    (tmp_path / "other").mkdir()
    other = Keys(tmp_path / "other", "elsewhere-1")
    new = add_tree(store, tmp_path, "fresh", "fresh\n")
    store.add_signatures(new, [sign_info(store.query(new), keys.sk)])
    r = kiln("push", "--store", str(store.root), chain[0], new, "--to", srv.url, "--token", tok,
             "--sign-key", str(other.sk_file))  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "pushed 1 of 2 paths" in r.stdout
    assert f"error: the registry did not take the new signature of {chain[0]}: not kept" in r.stderr
    assert "did not keep 1 signature(s)" in r.stderr and "--trusted-key" in r.stderr
    assert "elsewhere-1" not in (reg / f"{chain[0].split('/')[-1][:32]}.narinfo").read_text()
    assert "Sig: elsewhere-1:" in (reg / f"{new.split('/')[-1][:32]}.narinfo").read_text()


def test_a_push_cut_off_before_publishing_publishes_on_the_rerun(pushed, keys, tmp_path) -> None:
    """Uploads that landed without the index publication (the connection dropped after
    them): the re-run has nothing to upload but still publishes, so the signed index lists
    the path and mirrors see it."""
    store, _chain, _leaf, reg, tok, srv = pushed
    extra = add_tree(store, tmp_path, "extra", "extra\n")

    async def cut_off() -> PushReport:
        async with open_client(srv.url, tok) as client:
            client.publish_index = _no_publication  # type: ignore[method-assign]
            return await push_prepared(prepare(store, [extra], keys.sk), client)

    rep = asyncio.run(cut_off())
    hp = extra.split("/")[-1][:32]
    assert rep.pushed == 1 and hp not in _indexed(reg)
    rep = push(store, [extra], lambda: open_client(srv.url, tok))
    assert rep.pushed == 0 and rep.index and hp in _indexed(reg)


async def _no_publication() -> None:
    return None


def _indexed(reg: Path) -> set[str]:
    ts = json.loads((reg / "index/timestamp.json").read_text())["signed"]
    v = ts["meta"]["snapshot.json"]["version"]
    return set(json.loads((reg / f"index/{v}.index.json").read_text())["signed"]["paths"])


def test_copy_roundtrip(pushed, keys, tmp_path) -> None:
    _store, chain, leaf, _reg, _tok, srv = pushed
    dest = tmp_path / "dest"
    r = kiln(
        "copy",
        "--store",
        str(dest),
        "--from",
        srv.url,
        "--to",
        "store",
        chain[-1],
        leaf,
        "--trusted-key",
        str(keys.pk_file),
    )
    assert r.returncode == 0, r.stderr
    assert "copied 6 paths" in r.stdout
    d = make_store(dest)
    assert all(d.is_valid(p) for p in [*chain, leaf])
    assert (d.real_path(leaf) / "file").read_text() == "leaf\n"
    r = kiln(
        "copy",
        "--store",
        str(dest),
        "--from",
        srv.url,
        "--to",
        "store",
        chain[-1],
        "--trusted-key",
        str(keys.pk_file),
    )
    assert "copied 0 paths" in r.stdout


def test_registry_to_registry_copy(pushed, keys, tmp_path) -> None:
    _store, chain, _leaf, _reg, _tok, srv = pushed
    dst = tmp_path / "reg2"
    r = kiln(
        "copy", "--from", srv.url, "--to", f"file://{dst}", chain[-1], "--trusted-key", str(keys.pk_file)
    )
    assert r.returncode == 0, r.stderr
    assert "copied 5 paths" in r.stdout and len(list(dst.glob("*.narinfo"))) == 5


def test_registry_to_registry_copy_takes_only_the_path_asked_for(pushed, keys, tmp_path) -> None:
    """A source answering for a path's hash part with a narinfo for another name (same
    hash part, validly signed) is refused: the copy does not publish a path nobody asked
    for in its place."""
    _store, chain, _leaf, reg, _tok, _srv = pushed
    base = chain[0].rsplit("/", 1)[1]
    other = chain[0][: -len(base)] + base[:33] + "impostor"
    dst = tmp_path / "reg2"
    r = kiln("copy", "--from", f"file://{reg}", "--to", f"file://{dst}", other, "--trusted-key", str(keys.pk_file))  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert f"the narinfo for {other} is for {chain[0]}" in r.stderr
    assert not list(dst.glob("*.narinfo"))
    # nor is the destination's narinfo for the other name taken for the asked path
    copy = ["copy", "--from", f"file://{reg}", "--to", f"file://{dst}", "--trusted-key", str(keys.pk_file)]
    assert kiln(*copy, chain[0]).returncode == 0
    r = kiln(*copy, other)
    assert r.returncode == 1 and f"holds {chain[0]} under the hash part of {other}" in r.stderr, r.stderr


def test_registry_to_registry_copy_is_batched_and_verified(pushed, keys, tmp_path, kiln_server) -> None:
    """Between two kiln servers, small objects come a few hundred per ``blob_batch``
    and go with their narinfos in ``upload_batch`` requests, not a GET and two PUTs per
    path; a tampered object stops the copy before its path is published."""
    from kiln.registry.copy import between
    from kiln.registry.httpclient import HttpClient

    store, chain, _leaf, reg, tok, srv = pushed
    more = [add_tree(store, tmp_path, f"small{i}", f"{i}\n") for i in range(40)]
    # paths of the same contents share one object: it must reach the destination before
    # any of their narinfos, whichever upload request arrives first
    more += [add_tree(store, tmp_path, f"same{i}", "same\n") for i in range(20)]
    push(store, more, lambda: open_client(srv.url, tok), sign_key=keys.sk)
    reg2 = tmp_path / "reg2"
    assert kiln("registry", "init", "--dir", str(reg2)).returncode == 0
    tok2 = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg2)).stdout.strip()
    srv2 = kiln_server("--dir", str(reg2), "--trusted-key", str(keys.pk_file))
    calls = {"download": 0, "blob_batch": 0, "upload_batch": 0, "put_file": 0, "put_bytes": 0}

    def count(name: str):  # noqa: ANN202
        real = getattr(HttpClient, name)

        def counted(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            calls[name] += 1
            return real(self, *a, **kw)

        return counted

    with pytest.MonkeyPatch.context() as mp:
        for name in calls:
            mp.setattr(HttpClient, name, count(name))
        n = asyncio.run(
            between(srv.url, lambda _sd: open_client(srv2.url, tok2), [chain[-1], *more], [keys.pk])
        )
    assert n.paths == 65
    assert calls["download"] == calls["put_file"] == calls["put_bytes"] == 0
    # one group (the closure in one topological order, <= 500 paths): one blob batch, and
    # its upload spread over about -j requests, not a batch and -j requests per level
    assert calls["blob_batch"] == 1 and calls["upload_batch"] <= 16 + 1, calls
    for p in [*chain, *more]:
        h = p.split("/")[-1][:32]
        assert (reg2 / f"{h}.narinfo").exists()
    # tampered at the source: refused, and the path is not published at the destination
    extra = add_tree(store, tmp_path, "extra", "extra content\n" * 100)
    push(store, [extra], lambda: open_client(srv.url, tok), sign_key=keys.sk)
    info = store.query(extra)
    blob = reg / layout.blob_key(info.file_hash)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x55
    blob.write_bytes(bytes(data))
    with pytest.raises(HashMismatch):
        asyncio.run(between(srv.url, lambda _sd: open_client(srv2.url, tok2), [extra], [keys.pk]))
    assert not (reg2 / f"{extra.split('/')[-1][:32]}.narinfo").exists()


def test_counts_are_checked_before_anything_runs(pushed, tmp_path) -> None:
    """``-j 0`` hung, ``-j -3`` was an internal error, ``--sigs-needed -1`` silently
    checked nothing: all are usage errors now; ``--sigs-needed 0`` works but warns."""
    store, chain, _leaf, reg, _tok, srv = pushed
    d = str(tmp_path / "d")
    for bad in (["-j", "0"], ["-j", "-3"], ["--sigs-needed", "-1"]):
        r = kiln("copy", "--store", d, "--from", srv.url, "--to", "store", chain[0], *bad)
        assert r.returncode == 2 and "expected a whole number" in r.stderr, (bad, r.stderr)
    r = kiln("push", "--store", str(store.root), chain[0], "--to", f"file://{tmp_path / 'r2'}", "-j", "0")
    assert r.returncode == 2 and "expected a whole number >= 1" in r.stderr
    r = kiln("copy", "--store", d, "--from", srv.url, "--to", "store", chain[0], "--sigs-needed", "0")
    assert r.returncode == 0 and "warning: --sigs-needed 0" in r.stderr, r.stderr


def test_push_holds_what_it_sends_and_commands_leave_no_temp_roots(pushed, keys, tmp_path) -> None:
    """A push makes its paths temp roots before reading them (a GC meanwhile deleted the
    objects being uploaded), and ``copy``/``push`` leave no ``temproots/<pid>`` behind."""
    import subprocess
    import sys

    from kiln.store.localstore import LocalStore

    root = tmp_path / "s2"
    with LocalStore.open(root) as adder:  # registered, then no longer held by anyone
        leaf = add_tree(adder, tmp_path, "unrooted", "data\n")
    with LocalStore.open(root) as store:
        infos = prepare(store, [leaf])
        with LocalStore.open(root) as other:
            other.gc()
        assert store.is_valid(leaf) and infos[0][1].exists()
    _src, chain, _leaf, _reg, _tok, srv = pushed
    d = tmp_path / "d"
    r = kiln("copy", "--store", str(d), "--from", srv.url, "--to", "store", chain[0], "--trusted-key", str(keys.pk_file))  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = kiln("push", "--store", str(d), chain[0], "--to", f"file://{tmp_path / 'r3'}")
    assert r.returncode == 0, r.stderr
    assert os.listdir(d / "temproots") == []
    # a process that never closes its store (any library user) leaves no file either
    code = f"from kiln.store.localstore import LocalStore; s = LocalStore.open({str(d)!r}); s.keep([{chain[0]!r}])"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert os.listdir(d / "temproots") == []


def test_copy_into_a_store_can_root_what_it_copied(pushed, keys, tmp_path) -> None:
    """``--add-root NAME`` roots each PATH (NAME, NAME-2, ...) before the store is let go,
    so a GC right after the command keeps the copies; bad uses fail before any copy."""
    from kiln.store.localstore import LocalStore

    _src, chain, _leaf, _reg, _tok, srv = pushed
    d = tmp_path / "d"
    base = ["copy", "--store", str(d), "--from", srv.url, "--trusted-key", str(keys.pk_file)]
    r = kiln(*base, "--to", "store", chain[0], "--add-root", "bad/name")
    assert r.returncode == 1 and "invalid GC root name 'bad/name'" in r.stderr, r.stderr
    r = kiln(*base, "--to", f"file://{tmp_path / 'r'}", chain[0], "--add-root", "x")
    assert r.returncode == 2 and "--add-root needs --to store" in r.stderr, r.stderr
    assert not d.exists() and not (tmp_path / "r").exists()
    r = kiln(*base, "--to", "store", chain[0], chain[1], "--add-root", "dep")
    assert r.returncode == 0, r.stderr
    with LocalStore.open(d) as store:
        assert sorted(os.listdir(d / "gcroots")) == ["dep", "dep-2"]
        assert os.path.realpath(d / "gcroots" / "dep") == str(store.real_path(chain[0]))
        assert os.path.realpath(d / "gcroots" / "dep-2") == str(store.real_path(chain[1]))
        store.gc()
        assert store.is_valid(chain[0]) and store.is_valid(chain[1])


def test_wrong_key_rejected(pushed, keys, other_keys, tmp_path) -> None:
    """An input-addressed path needs a signature by a trusted key (a content-addressed one
    is proved by its content: ``test_unsigned_ca``)."""
    store, chain, _leaf, _reg, tok, srv = pushed
    built = add_built(store, tmp_path, "built", "a build's output")
    assert push_cli(store, [built], srv.url, tok, keys.sk_file).returncode == 0
    d = str(tmp_path / "d")
    r = kiln(
        "copy",
        "--store",
        d,
        "--from",
        srv.url,
        "--to",
        "store",
        built,
        "--trusted-key",
        str(other_keys.pk_file),
    )
    assert r.returncode == 1 and "signature" in r.stderr
    r = kiln("copy", "--store", d, "--from", srv.url, "--to", "store", built)
    assert r.returncode == 1 and "0 valid signature" in r.stderr
    r = kiln("copy", "--store", d, "--from", srv.url, "--to", "store", chain[0])
    assert r.returncode == 0, r.stderr  # (content-addressed: no key needed)


def test_serve_admits_uploads_by_its_own_flags_only(tmp_path, keys, kiln_server, monkeypatch) -> None:
    """``$KILN_TRUSTED_KEYS`` (the builders' and copiers' trust) does not make ``kiln
    serve`` accept pushes: upload admission is ``--trusted-key`` (and ``--index-key``)."""
    store = make_store(tmp_path / "store")
    leaf = add_tree(store, tmp_path, "leaf", "leaf\n")
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    monkeypatch.setenv("KILN_TRUSTED_KEYS", keys.pk.to_text())
    srv = kiln_server("--dir", str(reg))
    monkeypatch.delenv("KILN_TRUSTED_KEYS")
    push = ["push", "--store", str(store.root), leaf, "--token", tok, "--sign-key", str(keys.sk_file)]
    r = kiln(*push, "--to", srv.url)
    assert r.returncode == 1 and "pushed 1 of 1" not in r.stdout, r.stdout + r.stderr
    srv2 = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file))
    r = kiln(*push, "--to", srv2.url)
    assert r.returncode == 0 and "pushed 1 of 1" in r.stdout, r.stderr


def test_a_registry_without_a_priority_in_its_url_has_its_nix_cache_info_one(pushed, keys, tmp_path) -> None:
    """As Nix orders substituters: ``Priority:`` in ``nix-cache-info`` (lower first) unless
    ``?priority=`` overrides it. It was ignored: the order given won."""
    import shutil

    _store, chain, _leaf, reg, _tok, _srv = pushed
    low, high = tmp_path / "low", tmp_path / "high"
    for d, prio in ((high, 90), (low, 10)):
        shutil.copytree(reg, d, symlinks=True)
        info = d / "nix-cache-info"
        info.write_text(
            "".join(
                f"Priority: {prio}\n" if ln.startswith("Priority:") else ln
                for ln in info.read_text().splitlines(True)
            )
        )
    regs = [(f"file://{high}", None), (f"file://{low}", None)]
    with Substituter(regs, [keys.pk]) as sub:
        assert sub.query_many([chain[0]]) and sub.source_of(chain[0]) == f"file://{low}"
    with Substituter([(f"file://{high}", 5), (f"file://{low}", None)], [keys.pk]) as sub:
        assert sub.query_many([chain[0]]) and sub.source_of(chain[0]) == f"file://{high}"


def test_tampered_blob_rejected(pushed, keys, tmp_path) -> None:
    store, _chain, leaf, reg, _tok, srv = pushed
    info = store.query(leaf)
    blob = reg / layout.blob_key(info.file_hash)  # same inode as nar/...
    data = bytearray(blob.read_bytes())
    data[-3] ^= 0xFF
    blob.write_bytes(bytes(data))
    dest = make_store(tmp_path / "dest")
    with pytest.raises(HashMismatch) as e:
        to_store(srv.url, dest, [leaf], [keys.pk])
    assert not dest.is_valid(leaf)
    # what was expected and what was found, in one form (nix32, as the narinfo has it)
    got = Hash.sha256_of(bytes(data)).to_nix32()
    assert e.value.expected == f"{info.file_hash.to_nix32()} ({info.file_size} bytes)"
    assert e.value.got == f"{got} ({len(data)} bytes)", str(e.value)


def test_substituter_priorities_and_unreachable(pushed, keys, tmp_path) -> None:
    _store, chain, leaf, _reg, _tok, srv = pushed
    dead = f"http://127.0.0.1:{free_port()}"
    dest = make_store(tmp_path / "dest")
    with Substituter([(srv.url, 50), (dead, 10)], [keys.pk]) as sub:
        infos = sub.query_many([chain[0], "/kiln/store/" + "0" * 32 + "-missing"])
        assert list(infos) == [chain[0]]
        assert dead in sub.down  # a miss for this run, not a failure
        got = sub.fetch(dest, infos[chain[0]])
        assert got.path == chain[0] and dest.is_valid(chain[0])
    with Substituter([(dead, 10)], [keys.pk]) as sub:
        assert sub.query_many([leaf]) == {}


def test_serve_store_directly(tmp_path: Path, keys, kiln_server) -> None:
    store = make_store(tmp_path / "store")
    chain = add_chain(store, tmp_path, 3)
    built = add_built(store, tmp_path, "built", "input-addressed", (chain[-1],))
    srv = kiln_server("--store", str(store.root), "--sign-key", str(keys.sk_file))
    dest = make_store(tmp_path / "dest")
    assert to_store(srv.url, dest, [built], [keys.pk]) == 4
    unsigned = kiln_server("--store", str(store.root))
    with pytest.raises(KilnError, match="signature"):
        to_store(unsigned.url, make_store(tmp_path / "dest2"), [built], [keys.pk])


def test_parse_registries() -> None:
    from kiln.registry.substitute import parse_registries

    assert parse_registries("http://a:1?priority=10 file:///x") == [("http://a:1", 10), ("file:///x", None)]


def test_every_trusted_key_option_takes_a_file_or_the_key_itself(pushed, keys, tmp_path) -> None:
    """``--trusted-key`` is read one way by every command: a file if one has that name,
    else ``name:base64`` (copy and serve took only files, store verify ignored
    ``$KILN_TRUSTED_KEYS``); a name that is neither says so."""
    _src, chain, _leaf, _reg, _tok, srv = pushed
    text = keys.pk_file.read_text().strip()
    r = kiln("copy", "--store", str(tmp_path / "d"), "--from", srv.url, "--to", "store", chain[0], "--trusted-key", text)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = kiln("copy", "--store", str(tmp_path / "d"), "--from", srv.url, "--to", "store", chain[0], "--trusted-key", str(tmp_path / "nope.pub"))  # fmt: skip
    assert r.returncode == 1 and f"{tmp_path / 'nope.pub'}: no such public key file" in r.stderr, r.stderr
    r = kiln("copy", "--store", str(tmp_path / "d"), "--from", srv.url, "--to", "store", chain[0], "--trusted-key", "k:short")  # fmt: skip
    assert r.returncode == 1 and "'k:short' is neither a public key file nor a public key" in r.stderr, (
        r.stderr
    )
    from regkit import add_built

    with make_store(tmp_path / "s3") as s3:  # an input-addressed path: it needs a signature
        add_built(s3, tmp_path, "built", "x")
    assert (
        kiln("store", "sign", "--store", str(tmp_path / "s3"), "--all", "--key", str(keys.sk_file)).returncode
        == 0
    )
    verify = ["store", "verify", "--store", str(tmp_path / "s3"), "--sigs-needed", "1"]
    assert kiln(*verify).returncode == 1  # no trusted key: the signature counts for nothing
    assert kiln(*verify, "--trusted-key", text).returncode == 0
    assert kiln(*verify, env={"KILN_TRUSTED_KEYS": text}).returncode == 0


def test_blob_batch_client_against_kiln_serve(pushed) -> None:
    """``HttpClient.blob_batch``: one request, every object back byte for byte, a
    missing one reported as None; the copy path uses it (one request per 256 objects)."""
    import asyncio

    from kiln.registry.client import open_client
    from kiln.store.hashes import Hash

    store, chain, leaf, _reg, _tok, srv = pushed
    infos = [store.query(p) for p in [*chain[:3], leaf]]
    missing = Hash.sha256_of(b"not there")
    got: dict[str, bytes | None] = {}

    async def go() -> bool:
        async with open_client(srv.url) as c:
            return await c.blob_batch(
                [i.file_hash for i in infos] + [missing], lambda h, data: got.__setitem__(h.hex, data)
            )

    assert asyncio.run(go()) is True
    assert got.pop(missing.hex) is None
    assert got == {i.file_hash.hex: store.object_path(i.path).read_bytes() for i in infos}


def test_ctrl_c_during_a_stalled_download_lets_the_substituter_close(pushed, keys, tmp_path) -> None:
    """A registry that answers narinfos but never sends the objects; Ctrl-C during the
    fetch must leave nothing waiting: ``close()`` returns (it used to wait forever for
    the importer thread, itself waiting for downloads nobody would finish)."""
    import asyncio
    import signal
    import threading

    _store, chain, _leaf, reg, _tok, _srv = pushed
    ready = threading.Event()
    port: list[int] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        line = (await r.readline()).decode()
        length = 0
        while (h := await r.readline()) not in (b"\r\n", b""):
            if h.lower().startswith(b"content-length:"):
                length = int(h.split(b":")[1])
        await r.readexactly(length)  # a request body (narinfo-batch), unanswered: 404
        method, target = line.split()[:2]
        key = target.lstrip("/")
        if method == "GET" and not key.startswith("nar/") and (reg / key).is_file():
            body = (reg / key).read_bytes()
            w.write(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
        elif method == "GET" and key.startswith("nar/"):
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")  # ...and nothing more
            await w.drain()
            await asyncio.sleep(3600)
        else:
            w.write(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        await w.drain()
        w.close()

    def serve() -> None:
        async def main() -> None:
            srv = await asyncio.start_server(handle, "127.0.0.1", 0)
            port.append(srv.sockets[0].getsockname()[1])
            ready.set()
            await asyncio.sleep(3600)

        asyncio.run(main())

    threading.Thread(target=serve, daemon=True).start()
    assert ready.wait(10)
    dest = make_store(tmp_path / "dest")
    sub = Substituter([(f"http://127.0.0.1:{port[0]}", 10)], [keys.pk])
    infos = sub.query_many([chain[0]])
    assert list(infos) == [chain[0]], (sub.down, sub.rejected, sorted(p.name for p in reg.iterdir()))
    main = threading.main_thread().ident
    assert main is not None
    threading.Timer(1.0, signal.pthread_kill, (main, signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        sub.fetch_many(dest, list(infos.values()))
    closer = threading.Thread(target=sub.close, daemon=True)
    closer.start()
    closer.join(20)
    assert not closer.is_alive(), "Substituter.close() hung after an interrupted fetch"
    assert not dest.is_valid(chain[0])


def test_a_gc_between_the_check_and_the_import_keeps_what_the_copy_counts_on(pushed, keys, tmp_path) -> None:
    """``to_store`` skips references the store already has; a GC running right after
    that check (the path valid but rooted by nobody) must not collect them before the
    import that refers to them: they are temp roots from before the check."""
    from kiln.store import gc
    from kiln.store.localstore import LocalStore

    _store, chain, _leaf, _reg, _tok, srv = pushed
    dest = make_store(tmp_path / "dest")
    assert to_store(srv.url, dest, [chain[1]], [keys.pk]) == 2  # chain[0] and chain[1], no root
    dest.close()
    dest = LocalStore.open(tmp_path / "dest")
    check = dest.is_valid
    collected: list[int] = []

    def is_valid_then_gc(p: str) -> bool:  # a GC by another process, right after the check
        valid = check(p)
        if valid and not collected:
            other = LocalStore.open(tmp_path / "dest")
            collected.append(len(gc.collect(other).deleted))
            other.close()
        return valid

    dest.is_valid = is_valid_then_gc  # type: ignore[method-assign]
    assert to_store(srv.url, dest, [chain[-1]], [keys.pk]) == 3
    assert collected == [0] and all(check(p) for p in chain)


def test_a_full_registry_disk_is_a_507_naming_it(keys, tmp_path) -> None:
    """A registry whose storage cannot take a file (ENOSPC, EDQUOT, or EFBIG as here)
    answers 507 with the reason, not a bare 500; nothing half-written is published, and
    the push succeeds once there is room."""
    from regkit import start_kiln

    store = make_store(tmp_path / "store")
    big = add_tree(store, tmp_path, "big", "".join(f"{i:08x}" for i in range(400_000)))  # ~1.3 MiB zstd
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    args = ["--dir", str(reg), "--trusted-key", str(keys.pk_file)]
    srv = start_kiln(args, max_file_bytes=64 << 10)
    try:
        with pytest.raises(KilnError, match="HTTP 507: the registry cannot store this: File too large"):
            push(store, [big], lambda: open_client(srv.url, tok), sign_key=keys.sk)
    finally:
        srv.stop()
    assert not list(reg.glob("*.narinfo"))
    srv = start_kiln(args)
    try:
        assert push(store, [big], lambda: open_client(srv.url, tok)).pushed == 1
    finally:
        srv.stop()


def test_levels_refuses_a_reference_cycle() -> None:
    """No real store holds a reference cycle, but a narinfo from a hostile registry can
    claim one: ``levels`` (used by push, copy and substitution) says so instead of
    looping for ever; diamonds and chains still come out dependencies first."""
    from kiln.registry.push import levels
    from kiln.store.hashes import Hash
    from kiln.store.pathinfo import PathInfo

    a, b, c, d = (f"/kiln/store/{x * 32}-{x}" for x in "abcd")

    def infos(refs: dict[str, list[str]]) -> dict[str, PathInfo]:
        return {p: PathInfo(p, Hash.sha256_of(p.encode()), 1, references=tuple(r)) for p, r in refs.items()}

    assert levels(infos({a: [b, c], b: [d], c: [b, d], d: []})) == [[d], [b], [c], [a]]
    with pytest.raises(KilnError, match="reference cycle"):
        levels(infos({a: [b], b: [c], c: [a]}))


def test_only_objects_of_known_digest_and_small_size_are_batched(pushed) -> None:
    """``fits_batch``: the rule ``batchable`` (copy, mirror) and the substituter share:
    an object whose size or digest the narinfo does not give goes alone."""
    from dataclasses import replace

    from kiln.registry.substitute import BATCH_OBJECT_MAX, batchable, fits_batch
    from kiln.store import narinfo as ni

    store, chain, _leaf, reg, _tok, _srv = pushed
    h = chain[0].rsplit("/", 1)[1][:32]
    info = ni.parse((reg / f"{h}.narinfo").read_text(), store.store_dir)
    assert fits_batch(info)
    unsized, undigested = replace(info, file_size=None), replace(info, file_hash=None)
    big = replace(info, file_size=BATCH_OBJECT_MAX + 1)
    assert not any(fits_batch(i) for i in (unsized, undigested, big))
    assert batchable([info, unsized, big, undigested]) == ([info], [unsized, big, undigested])


def test_push_refuses_a_closure_with_a_hole(tmp_path) -> None:
    """A path whose dependency ``verify --repair`` quarantined is not pushed: a registry
    does not check references, so it would publish the path without what it needs."""
    store = make_store(tmp_path / "store")
    chain = add_chain(store, tmp_path, 3)
    obj = store.object_path(chain[0])
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x55
    os.chmod(obj, 0o644)
    obj.write_bytes(bytes(data))
    tree = store.real_path(chain[0])
    mode = tree.parent.stat().st_mode & 0o7777
    os.chmod(tree.parent, 0o755)
    os.chmod(tree, 0o644)
    tree.write_text("tampered\n")
    os.chmod(tree.parent, mode)
    assert store.verify(repair=True).quarantined == (chain[0],)
    r = kiln("push", "--store", str(store.root), chain[-1], "--to", f"file://{tmp_path / 'reg'}")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"cannot push {chain[-1]}: its closure is incomplete" in r.stderr, r.stderr
    assert f"{chain[0]} (referenced by {chain[1]})" in r.stderr, r.stderr
    assert not list((tmp_path / "reg").glob("*.narinfo"))


def test_a_registry_busy_for_blob_batches_is_read_one_object_at_a_time(
    pushed, keys, tmp_path, monkeypatch
) -> None:
    """``kiln serve`` bounds its blob batches (503 when all are taken, and slow clients
    can hold them): once the client's retries are spent, the objects come by plain
    downloads instead of the copy failing. (The 503 is put in the client's place here:
    making a real server busy for every retry would take minutes.)"""
    from kiln.registry.client import RegistryError
    from kiln.registry.httpclient import HttpClient

    _store, chain, leaf, _reg, _tok, srv = pushed
    asked = []

    async def busy(self, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        asked.append(args[0])
        raise RegistryError(f"POST {self.url}/blob-batch: HTTP 503: busy", 503)

    monkeypatch.setattr(HttpClient, "blob_batch", busy)
    dest = make_store(tmp_path / "dest")
    assert to_store(srv.url, dest, [chain[-1], leaf], [keys.pk]) == 6
    assert asked and all(dest.is_valid(p) for p in [*chain, leaf])
