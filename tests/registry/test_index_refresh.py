"""Keeping a registry's signed index fresh without pushes: the timestamp (valid 24 h)
is re-signed by ``kiln serve --index-key`` every ``--index-refresh`` hours, and an index
whose paths did not change is renewed before it expires (re-signing only the timestamp
would let the snapshot and index it names expire)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.registry import index as ix
from kiln.registry import indexbuild
from kiln.registry.publish import publish_index, refresh_due
from kiln.registry.storage import open_storage
from kiln.store.signing import SecretKey


@pytest.fixture
def reg(tmp_path: Path):  # noqa: ANN201 - a FileStorage
    s = open_storage(tmp_path / "reg")
    s.put_bytes("nix-cache-info", b"StoreDir: /kiln/store\n")
    return s


def _signed(reg, key: str) -> dict:  # noqa: ANN001
    return json.loads(reg.read(key))["signed"]


def test_an_unchanged_index_is_renewed_before_it_expires(reg) -> None:
    key = SecretKey.generate("idx-1")
    now = ix.utcnow()
    pub = indexbuild.build_metadata(
        {}, "/kiln/store", key, prev_timestamp=None, prev_index_paths=None, now=now
    )
    ts = json.loads(dict(pub.files)["index/timestamp.json"])["signed"]
    expires = json.loads(dict(pub.files)["index/1.index.json"])["signed"]["expires"]

    def again(at: dt.datetime) -> indexbuild.Published:
        return indexbuild.build_metadata(
            {}, "/kiln/store", key, prev_timestamp=ts, prev_index_paths={}, now=at, prev_index_expires=expires
        )

    soon = again(now + dt.timedelta(days=1))
    assert soon.index_version == 1 and soon.timestamp_version == 2  # only the timestamp
    late = again(now + dt.timedelta(days=indexbuild.INDEX_DAYS / 2 + 1))
    assert late.index_version == 2  # renewed: it would expire within half its lifetime
    idx = json.loads(dict(late.files)["index/2.index.json"])["signed"]
    assert idx["expires"] > expires


def test_refresh_is_due_once_the_timestamp_is_that_old(reg) -> None:
    assert not refresh_due(reg, 6 * 3600)  # no index yet: a server does not create one
    publish_index(reg, SecretKey.generate("idx-1"))
    now = ix.utcnow()
    assert not refresh_due(reg, 6 * 3600, now + dt.timedelta(hours=5))
    assert refresh_due(reg, 6 * 3600, now + dt.timedelta(hours=6, minutes=1))
    reg.put_bytes("index/timestamp.json", b'{"signed": {"expires": "garbage"}}')
    assert refresh_due(reg, 6 * 3600)  # an unreadable expiry: re-sign


def test_kiln_serve_re_signs_the_timestamp_without_pushes(tmp_path, keys, other_keys, kiln_server) -> None:
    d = tmp_path / "reg"
    kiln = [sys.executable, "-m", "kiln"]
    assert subprocess.run([*kiln, "registry", "init", "--dir", str(d)], capture_output=True).returncode == 0
    r = subprocess.run(
        [*kiln, "registry", "publish-index", "--dir", str(d), "--key", str(keys.sk_file)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    storage = open_storage(d)
    first = _signed(storage, "index/timestamp.json")["version"]
    # 0.0005 h = 1.8 s
    # (an --attester-key given as key text, as every key option takes it)
    kiln_server(
        *("--dir", str(d), "--index-key", str(keys.sk_file), "--index-refresh", "0.0005"),
        *("--attester-key", str(other_keys.pk)),
    )
    deadline = time.monotonic() + 30
    while _signed(storage, "index/timestamp.json")["version"] == first:
        assert time.monotonic() < deadline, "the timestamp was never re-signed"
        time.sleep(0.2)
    state = ix.TrustState.pin(storage.read("index/root.json"))
    assert state.root["version"] == 1 and _signed(storage, "index/timestamp.json")["version"] > first


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--index-refresh", "24"], "expected hours from 0 to 23"),
        (["--index-refresh", "-1"], "expected hours from 0 to 23"),
        (["--sign-key", "k.sec"], "--sign-key signs the narinfos of a --store"),
        (["--private"], None),
        (["--workers", "100000"], "expected a whole number from 1 to 256"),
    ],
)
def test_serve_usage_errors(tmp_path, args, says) -> None:
    d = tmp_path / "reg"
    d.mkdir()
    src = ["--store", str(d)] if args == ["--private"] else ["--dir", str(d)]
    r = subprocess.run([sys.executable, "-m", "kiln", "serve", *src, *args], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert (says or "--private needs --dir") in r.stderr


def test_a_root_about_to_expire_is_renewed_by_its_publisher(reg) -> None:
    """The root lasts a year; a publisher whose key alone may sign roots renews it (v+1,
    same keys) when it expires within 60 days, and clients walk to it as to a rotation."""
    from kiln.registry.publish import renew_root

    key = SecretKey.generate("idx-1")
    publish_index(reg, key)
    state = ix.TrustState.pin(reg.read("index/root.json"))
    root = _signed(reg, "index/root.json")
    assert renew_root(reg, root, key, ix.utcnow()) is root  # not due
    late = ix.utcnow() + dt.timedelta(days=indexbuild.ROOT_DAYS - 30)
    new = renew_root(reg, root, key, late)
    assert new["version"] == 2 and new["keys"] == root["keys"] and new["expires"] > root["expires"]
    assert _signed(reg, "index/root.json")["version"] == 2
    publish_index(reg, key, now=late)  # (a clock that read "now" would be refused: behind the root)
    import asyncio

    async def fetch(k):  # noqa: ANN001, ANN202
        return reg.read(k)

    asyncio.run(ix.update(fetch, state, late))
    assert state.root["version"] == 2
    # another publisher's key may not renew it alone
    assert renew_root(reg, new, SecretKey.generate("idx-1"), late + dt.timedelta(days=400)) is new
