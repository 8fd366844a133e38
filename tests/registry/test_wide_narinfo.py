"""A path with thousands of references: its narinfo (here ~230 KB) is over the 64 KiB
that kiln's server used to accept, so it could be neither pushed nor substituted. kiln
now has one narinfo limit (``narinfo.MAX_SIZE``, 4 MiB) that the server enforces and
push and copy check before uploading anything; an upload batch's narinfos are capped in
all (``layout.UPLOAD_BATCH_NARINFO_BYTES``) and clients cut their batches to fit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from regkit import Keys, kiln, make_store, request

from kiln.registry import layout
from kiln.registry.client import open_client
from kiln.registry.copy import between
from kiln.registry.push import push
from kiln.store import narinfo as ni
from kiln.store.errors import FormatError

WIDE = 5000


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], str, Keys]:
    """A store with ``WIDE`` leaf paths and one path that refers to all of them."""
    d = tmp_path_factory.mktemp("wide")
    store = make_store(d / "store")
    leaves = [store.add_text(f"leaf-{i}.txt", f"leaf {i}\n".encode(), []).path for i in range(WIDE)]
    top = store.add_text("top.txt", ("\n".join(leaves) + "\n").encode(), leaves).path
    store.close()
    return d / "store", leaves, top, Keys(d, "wide-test-1")


def _registry(tmp: Path, keys: Keys, kiln_server) -> tuple[Path, str, object, Path]:  # noqa: ANN001
    reg, log = tmp / "reg", tmp / "access.log"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file), "--access-log", str(log))
    return reg, tok, srv, log


def _requests(log: Path, what: str) -> int:
    return sum(f' "/{what}" ' in ln for ln in log.read_text().splitlines())


def test_a_path_with_5000_references_is_pushed_and_substituted(wide, tmp_path, kiln_server) -> None:
    root, leaves, top, keys = wide
    reg, tok, srv, _log = _registry(tmp_path, keys, kiln_server)
    push_cmd = ["push", "--store", str(root), top, "--to", srv.url, "--token", tok]
    r = kiln(*push_cmd, "--sign-key", str(keys.sk_file))
    assert r.returncode == 0, r.stderr
    assert f"pushed {WIDE + 1} of {WIDE + 1} paths" in r.stdout
    h = top.rsplit("/", 1)[1][:32]
    status, _, body = request(f"{srv.url}/{h}.narinfo")  # (the fast path answers it)
    assert status == 200 and body == (reg / f"{h}.narinfo").read_bytes()
    assert len(body) > 3 * (64 << 10)
    assert set(ni.parse(body.decode(), "/kiln/store").references) == set(leaves)
    # substituted into a fresh store ...
    dst = tmp_path / "dst"
    copy = ["copy", "--from", srv.url, "--trusted-key", str(keys.pk_file)]
    r = kiln(*copy, "--to", "store", "--store", str(dst), "--store-dir", "/kiln/store", top)
    assert r.returncode == 0, r.stderr
    assert f"copied {WIDE + 1} paths" in r.stdout
    got = make_store(dst).query(top)
    assert got is not None and set(got.references) == set(leaves)
    # ... and relayed to another registry (a directory: the same batch admission)
    r = kiln(*copy, "--to", f"file://{tmp_path / 'reg2'}", top)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "reg2" / f"{h}.narinfo").read_bytes() == body


def test_upload_batches_are_cut_to_the_narinfo_budget(wide, tmp_path, kiln_server, monkeypatch) -> None:
    """With a budget of 100 KB of narinfos per batch the 230 KB one goes alone and the
    leaves' (~200 B each) go in several batches; everything is published."""
    root, leaves, top, keys = wide
    reg, tok, srv, log = _registry(tmp_path, keys, kiln_server)
    monkeypatch.setattr(layout, "UPLOAD_BATCH_NARINFO_BYTES", 100_000)
    store = make_store(root)
    rep = push(store, [top], lambda: open_client(srv.url, tok), sign_key=keys.sk, progress=False)
    assert rep.pushed == WIDE + 1
    assert len(list(reg.glob("*.narinfo"))) == WIDE + 1
    leaf_bytes = sum(len(p) + 400 for p in leaves)  # a leaf's narinfo: its path and ~400 B more
    assert _requests(log, "upload-batch") >= leaf_bytes // 100_000 + 1


def test_push_and_copy_refuse_an_over_limit_narinfo_before_uploading(
    wide, tmp_path, kiln_server, monkeypatch
) -> None:
    """No registry takes a narinfo over ``MAX_SIZE``: push and copy say which path it is
    before they upload anything (here with the limit lowered under the wide path's)."""
    root, _leaves, top, keys = wide
    _reg, tok, srv, log = _registry(tmp_path, keys, kiln_server)
    monkeypatch.setattr(ni, "MAX_SIZE", 100_000)
    store = make_store(root)
    with pytest.raises(FormatError, match=f"the narinfo of {top} is .* over the limit of 100000 bytes"):
        push(store, [top], lambda: open_client(srv.url, tok), sign_key=keys.sk, progress=False)
    assert _requests(log, "upload-batch") == 0 and " PUT " not in log.read_text()
    src = tmp_path / "src"
    r = kiln("copy", "--from", "store", "--store", str(root), "--to", f"file://{src}", top)
    assert r.returncode == 0, r.stderr
    with pytest.raises(FormatError, match=f"the narinfo of {top} is"):
        asyncio.run(between(f"file://{src}", lambda _sd: open_client(srv.url, tok), [top], [], sigs_needed=0))
    assert _requests(log, "upload-batch") == 0 and " PUT " not in log.read_text()


def test_the_server_takes_narinfos_up_to_the_limit_only(tmp_path, keys, kiln_server) -> None:
    """A single PUT over ``MAX_SIZE`` is 413 (under it, the junk is judged: 400), and so
    is an upload batch whose narinfos exceed ``UPLOAD_BATCH_NARINFO_BYTES`` in all."""
    _reg, tok, srv, _log = _registry(tmp_path, keys, kiln_server)
    auth = {"Authorization": f"Bearer {tok}"}
    key = f"{srv.url}/{'0' * 32}.narinfo"
    assert request(key, "PUT", b"x" * (ni.MAX_SIZE + 1), auth)[0] == 413
    status, _, msg = request(key, "PUT", b"x" * (1 << 20), auth)
    assert status == 400, msg
    junk = b"x" * ni.MAX_SIZE
    n = layout.UPLOAD_BATCH_NARINFO_BYTES // ni.MAX_SIZE
    frames = b"".join(f"{len(junk)} 0 {str(k).rjust(32, '0')}\n".encode() + junk for k in range(n))
    body = frames + f"1 0 {'1' * 32}\n".encode() + b"x"
    status, _, msg = request(f"{srv.url}/upload-batch", "POST", body, auth)
    assert status == 413 and b"in all" in msg, msg
    status, _, msg = request(f"{srv.url}/upload-batch", "POST", frames, auth)
    assert status == 200, msg  # (each entry refused on its own: junk)
