"""The signed timestamp's lifetime: 24 h unless ``kiln registry publish-index
--timestamp-hours N`` (1 .. 1440) says otherwise, so media written today still syncs on an
offline machine days later. The reader takes the expiry from the signed timestamp (no
setting on its side), and nothing the timestamp names (index, snapshot) expires first.
The sync "days later" runs under libfaketime: a real ``kiln mirror sync`` process whose
clock is ahead, against a registry published with the real clock."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from regkit import add_tree, make_store

from kiln.registry import index as ix
from kiln.registry import indexbuild
from kiln.registry.client import open_client
from kiln.registry.push import push
from kiln.store.signing import SecretKey

KILN = [sys.executable, "-m", "kiln"]


def _signed(files: dict[str, bytes], key: str) -> dict:
    return json.loads(files[key])["signed"]


def test_the_lifetime_is_signed_and_nothing_it_names_expires_first() -> None:
    key = SecretKey.generate("idx-1")
    now = ix.utcnow()
    most = indexbuild.MAX_TIMESTAMP_HOURS
    first = indexbuild.build_metadata(
        {}, "/kiln/store", key, prev_timestamp=None, prev_index_paths=None, now=now, timestamp_hours=most
    )
    files = dict(first.files)
    ts = _signed(files, "index/timestamp.json")
    assert ts["expires"] == ix.expiry(now, hours=most)
    idx_expires = _signed(files, "index/1.index.json")["expires"]
    assert idx_expires == _signed(files, "index/1.snapshot.json")["expires"] == ix.expiry(now, hours=2 * most)

    def again(at: dt.datetime) -> indexbuild.Published:
        return indexbuild.build_metadata(
            {},
            "/kiln/store",
            key,
            prev_timestamp=ts,
            prev_index_paths={},
            now=at,
            prev_index_expires=idx_expires,
            timestamp_hours=most,
        )

    # up to half the index's lifetime only the timestamp is new, and it expires no later
    # than the index it names; past that the index is renewed
    keep = again(now + dt.timedelta(hours=most - 1))
    assert keep.index_version == 1
    assert _signed(dict(keep.files), "index/timestamp.json")["expires"] <= idx_expires
    assert again(now + dt.timedelta(hours=most + 1)).index_version == 2
    # the default is 24 h
    plain = indexbuild.build_metadata(
        {}, "/kiln/store", key, prev_timestamp=None, prev_index_paths=None, now=now
    )
    assert _signed(dict(plain.files), "index/timestamp.json")["expires"] == ix.expiry(now, hours=24)
    for bad in (0, most + 1):
        with pytest.raises(ValueError, match="timestamp lifetime"):
            indexbuild.build_metadata(
                {},
                "/kiln/store",
                key,
                prev_timestamp=None,
                prev_index_paths=None,
                now=now,
                timestamp_hours=bad,
            )


def _media(tmp_path: Path, keys, name: str, *hours: str) -> Path:  # noqa: ANN001 - a regkit.Keys
    """A registry directory holding one signed path, its index published by the CLI."""
    store = make_store(tmp_path / f"store-{name}")
    p = add_tree(store, tmp_path / name, "fw", "firmware\n")
    reg = tmp_path / name / "reg"
    push(store, [p], lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    r = subprocess.run(
        [*KILN, "registry", "publish-index", "--dir", str(reg), "--key", str(keys.sk_file), *hours],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return reg


def _sync_later(reg: Path, dst: Path, keys, days: int) -> subprocess.CompletedProcess:  # noqa: ANN001
    cmd = ["mirror", "sync", f"file://{reg}", str(dst), "--root", str(reg / "index/1.root.json")]
    return subprocess.run(
        ["faketime", "-f", f"+{days}d", *KILN, *cmd, "--trusted-key", str(keys.pk_file)],
        capture_output=True,
        text=True,
    )


@pytest.mark.skipif(shutil.which("faketime") is None, reason="libfaketime (faketime) not installed")
def test_a_sync_two_days_later_needs_a_longer_timestamp(tmp_path, keys) -> None:
    short = _media(tmp_path, keys, "short")
    long = _media(tmp_path, keys, "long", "--timestamp-hours", "72")
    r = _sync_later(short, tmp_path / "m-short", keys, 2)
    assert r.returncode == 1 and "timestamp expired" in r.stderr and "frozen" in r.stderr, r.stderr
    r = _sync_later(long, tmp_path / "m-long", keys, 2)
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "m-long").glob("*.narinfo"))
    # and the freeze check still holds for it, past its 72 h
    r = _sync_later(long, tmp_path / "m-late", keys, 4)
    assert r.returncode == 1 and "timestamp expired" in r.stderr, r.stderr


def test_the_lifetime_is_bounded(tmp_path, keys) -> None:
    reg = tmp_path / "reg"
    assert subprocess.run([*KILN, "registry", "init", "--dir", str(reg)], capture_output=True).returncode == 0
    for bad in ("0", str(indexbuild.MAX_TIMESTAMP_HOURS + 1), "1.5"):
        r = subprocess.run(
            [
                *KILN,
                "registry",
                "publish-index",
                "--dir",
                str(reg),
                "--key",
                str(keys.sk_file),
                "--timestamp-hours",
                bad,
            ],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2 and "--timestamp-hours" in r.stderr, r.stderr
    assert not (reg / "index/timestamp.json").exists()  # nothing published
