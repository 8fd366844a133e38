"""A recursive (NAR-hashed) fetchurl tries every source, as a flat one does: it accepted
the first URL that downloaded and checked the NAR hash afterwards, so a wrong first
source hid a right second one."""

from __future__ import annotations

import hashlib

import pytest

from kiln.store import nar
from kiln.store.errors import HashMismatch
from kiln.store.fetch import fetch_url
from kiln.store.hashes import Hash

RIGHT = b"the right file\n" * 100
WRONG = b"a different file\n" * 100


def nar_hash(data: bytes) -> Hash:
    return Hash("sha256", hashlib.sha256(nar.file_nar(data)).digest())


def test_a_wrong_first_source_is_passed_over(server, tmp_path):
    server.add("wrong", WRONG)
    server.add("right", RIGHT)
    dest = tmp_path / "out"
    urls = [server.url("file/wrong"), server.url("file/right")]
    fetch_url(urls, nar_hash(RIGHT), dest, mirrors=[], progress=False, recursive=True)
    assert dest.read_bytes() == RIGHT
    assert nar.hash_path(dest)[0] == nar_hash(RIGHT)
    assert [p for _, p, _ in server.log] == ["/file/wrong", "/file/right"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_when_no_source_is_right_the_error_lists_each(server, tmp_path):
    server.add("wrong", WRONG)
    server.add("other", WRONG + b"!")
    urls = [server.url("file/wrong"), server.url("file/missing"), server.url("file/other")]
    with pytest.raises(HashMismatch) as e:
        fetch_url(urls, nar_hash(RIGHT), tmp_path / "out", mirrors=[], progress=False, recursive=True)
    text = str(e.value)
    assert nar_hash(RIGHT).to_hex() in text
    for url, got in [(urls[0], nar_hash(WRONG)), (urls[2], nar_hash(WRONG + b"!"))]:
        assert f"{url}: content has NAR hash {got.to_hex()}" in text, text
    assert f"{urls[1]}: HTTP 404" in text
    assert list(tmp_path.iterdir()) == []


def test_a_flat_mismatch_lists_every_source_too(server, tmp_path):
    server.add("wrong", WRONG)
    urls = [server.url("file/missing"), server.url("file/wrong")]
    want = Hash("sha256", hashlib.sha256(RIGHT).digest())
    with pytest.raises(HashMismatch) as e:
        fetch_url(urls, want, tmp_path / "out", mirrors=[], progress=False)
    assert f"{urls[0]}: HTTP 404" in str(e.value) and f"{urls[1]}: content has hash" in str(e.value)


def test_mirror_sources_of_a_recursive_fetchurl_tries_the_next_url(server, tmp_path):
    """``kiln mirror-sources`` fetched a recursive fetchurl from its first URL only."""
    from kiln.cmd_fetch import _MIRRORABLE

    server.add("wrong", WRONG)
    server.add("right", RIGHT)
    want = nar_hash(RIGHT)
    env = {"urls": f"{server.url('file/wrong')} {server.url('file/right')}", "url": server.url("file/wrong")}
    _MIRRORABLE["fetchurl:r:sha256"](env, want, tmp_path / "mirror")
    assert (tmp_path / "mirror" / "sha256" / want.hex).read_bytes() == nar.file_nar(RIGHT)


def test_the_fetchurl_builtin_passes_a_wrong_first_source_over(server, tmp_path):
    """What ``kiln build`` runs for a recursive fetchurl derivation."""
    from kiln.store.builtins import run_builtin
    from kiln.store.derivation import Derivation, Output

    server.add("wrong", WRONG)
    server.add("right", RIGHT)
    want = nar_hash(RIGHT)
    urls = f"{server.url('file/wrong')} {server.url('file/right')}"
    drv = Derivation.make(
        "src",
        outputs={"out": Output(hash_algo="r:sha256", hash=want.hex)},
        builder="builtin:fetchurl",
        env={"urls": urls, "url": server.url("file/wrong"), "out": ""},
    )
    run_builtin(None, drv, tmp_path / "out", mirrors=[], progress=False)  # (fetchurl needs no store)
    assert (tmp_path / "out").read_bytes() == RIGHT
