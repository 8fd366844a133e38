"""``kiln serve --index-key KEY --timestamp-hours N``: every timestamp the server signs
(after a push, and when it re-signs on its own) is valid N hours, as ``kiln registry
publish-index --timestamp-hours N`` makes it; the re-sign period follows N; and a
timestamp valid longer than N (signed by the CLI with a longer lifetime, or by the server
before a restart with a shorter one) is re-signed at once, so the expiry served is N."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from regkit import add_tree, kiln, make_store, request

from kiln.registry import index as ix
from kiln.registry.publish import publish_index, refresh_due
from kiln.registry.storage import open_storage
from kiln.store.signing import SecretKey


def _served_timestamp(url: str) -> dict:
    st, _h, body = request(url + "/index/timestamp.json")
    assert st == 200, body
    return json.loads(body)["signed"]


def _hours_left(signed: dict) -> float:
    return (ix.parse_expiry(signed["expires"]) - ix.utcnow()).total_seconds() / 3600


def _registry(tmp_path: Path) -> tuple[Path, str]:
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    return reg, tok


def test_a_push_publishes_a_timestamp_valid_the_servers_hours(tmp_path, keys, kiln_server) -> None:
    reg, tok = _registry(tmp_path)
    srv = kiln_server(
        *("--dir", str(reg), "--trusted-key", str(keys.pk_file), "--index-key", str(keys.sk_file)),
        *("--timestamp-hours", "3", "--index-refresh", "0"),
    )
    store = make_store(tmp_path / "store")
    p = add_tree(store, tmp_path, "one", "one\n")
    r = kiln(
        *("push", "--store", str(store.root), p, "--to", srv.url, "--token", tok),
        *("--sign-key", str(keys.sk_file)),
    )
    assert r.returncode == 0, r.stderr
    ts = _served_timestamp(srv.url)
    assert 2.95 < _hours_left(ts) <= 3.0, ts
    # the index and snapshot outlive it as for the CLI (30 days at least)
    snap = json.loads((reg / "index/snapshot.json").read_text())["signed"]
    assert (ix.parse_expiry(snap["expires"]) - ix.utcnow()).days >= 29


def test_a_longer_timestamp_is_re_signed_with_the_servers_hours(tmp_path, keys, kiln_server) -> None:
    reg, _tok = _registry(tmp_path)
    r = kiln("registry", "publish-index", "--dir", str(reg), "--key", str(keys.sk_file))  # 24 h
    assert r.returncode == 0, r.stderr
    first = json.loads((reg / "index/timestamp.json").read_text())["signed"]
    assert _hours_left(first) > 23
    # default period for 2 h: a quarter of it; the refresh sees a 24 h timestamp at once
    srv = kiln_server("--dir", str(reg), "--index-key", str(keys.sk_file), "--timestamp-hours", "2")
    deadline = time.monotonic() + 30
    while (ts := _served_timestamp(srv.url))["version"] == first["version"]:
        assert time.monotonic() < deadline, "the 24 h timestamp was never re-signed"
        time.sleep(0.2)
    assert 1.95 < _hours_left(ts) <= 2.0, ts
    # and it verifies for a client that pinned the root
    state = ix.TrustState.pin((reg / "index/root.json").read_bytes())
    ix.verify_timestamp(state, (reg / "index/timestamp.json").read_bytes(), ix.utcnow())


def test_refresh_follows_the_lifetime(tmp_path) -> None:
    reg = open_storage(tmp_path / "reg")
    reg.put_bytes("nix-cache-info", b"StoreDir: /kiln/store\n")
    key = SecretKey.generate("idx-1")
    publish_index(reg, key, timestamp_hours=2)
    now = ix.utcnow()
    half = 1800.0  # every half hour
    assert not refresh_due(reg, half, now, hours=2)
    assert not refresh_due(reg, half, now + dt.timedelta(minutes=29), hours=2)
    assert refresh_due(reg, half, now + dt.timedelta(minutes=31), hours=2)
    # the same 2 h timestamp, judged by a 24 h publisher: signed 22 h "before" — due
    assert refresh_due(reg, 6 * 3600, now)
    publish_index(reg, key, timestamp_hours=24)
    assert refresh_due(reg, half, ix.utcnow(), hours=2)  # valid longer than 2 h: re-sign
    assert not refresh_due(reg, 6 * 3600, ix.utcnow())  # (the default lifetime: not due)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--timestamp-hours", "0"], "expected a whole number from 1 to 1440"),
        (["--timestamp-hours", "1441"], "expected a whole number from 1 to 1440"),
        (["--timestamp-hours", "2", "--index-refresh", "1.6"], "expected hours from 0 to 1.5"),
        (["--timestamp-hours", "1", "--index-refresh", "0.8"], "expected hours from 0 to 0.75"),
        (["--timestamp-hours", "48", "--index-refresh", "47.5"], "expected hours from 0 to 47"),
        (["--index-refresh", "nonsense"], "expected hours from 0 to 23"),
        (["NOKEY", "--timestamp-hours", "2"], "--timestamp-hours is the lifetime of the timestamps"),
    ],
)
def test_serve_timestamp_usage_errors(tmp_path, keys, args, says) -> None:
    d = tmp_path / "reg"
    d.mkdir()
    key = [] if args[0] == "NOKEY" else ["--index-key", str(keys.sk_file)]
    r = kiln("serve", "--dir", str(d), *key, *[a for a in args if a != "NOKEY"])
    assert r.returncode == 2, r.stderr
    assert says in r.stderr, r.stderr
