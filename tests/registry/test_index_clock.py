"""A wrong clock on either side of the signed index (``registry/indexclock``). Before:
a publisher whose clock was behind signed metadata already expired (``kiln serve`` in
1970 even replaced a good timestamp with one, /healthz ok); one whose clock was ahead
signed metadata that a reader accepted months later; a reader in 1970 accepted metadata
long expired; two publishers 10 minutes apart re-signed after each other. Real CLI and
server processes run under libfaketime; the pure functions take ``now``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from clikit import line_within
from test_copy_index_root import Media

from kiln.registry import index as ix
from kiln.registry.publish import publish_index, refresh_due
from kiln.registry.storage import open_storage
from kiln.store.errors import KilnError
from kiln.store.signing import SecretKey

needs_faketime = pytest.mark.skipif(shutil.which("faketime") is None, reason="libfaketime not installed")
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
KILN = [sys.executable, "-m", "kiln"]
DAY = dt.timedelta(days=1)


@pytest.fixture
def reg(tmp_path: Path):  # noqa: ANN201 - a FileStorage
    s = open_storage(tmp_path / "reg")
    s.put_bytes("nix-cache-info", b"StoreDir: /kiln/store\n")
    return s


def _update(reg, state, now):  # noqa: ANN001, ANN202
    async def fetch(k: str) -> bytes | None:
        return reg.read(k)

    return asyncio.run(ix.update(fetch, state, now))


def _ts(path: Path) -> dict:
    return json.loads((path / "index/timestamp.json").read_bytes())["signed"]


@needs_faketime
def test_a_publisher_whose_clock_is_behind_signs_nothing(tmp_path: Path) -> None:
    m = Media(tmp_path)
    before = (m.reg / "index/timestamp.json").read_bytes()
    for fake in (["-f", "-2d"], ["1970-01-02 00:00:00"]):
        r = subprocess.run(
            [
                "faketime",
                *fake,
                *KILN,
                "registry",
                "publish-index",
                "--dir",
                str(m.reg),
                "--key",
                str(m.idx.sk_file),
            ],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 1, r.stderr
        assert "cannot sign the index: this machine's clock reads" in r.stderr, r.stderr
        assert "before the index root v1 was signed" in r.stderr and "nothing was signed" in r.stderr
        assert (m.reg / "index/timestamp.json").read_bytes() == before
    assert sorted(p.name for p in (m.reg / "index").glob("*root*")) == ["1.root.json", "root.json"]


def test_a_clock_that_went_back_on_an_old_registry_is_refused(reg) -> None:
    """The root signed 200 days ago says nothing about a clock 2 days back: the current
    timestamp's signing time does."""
    key, now = SecretKey.generate("idx-1"), ix.utcnow()
    publish_index(reg, key, now=now - 200 * DAY)
    publish_index(reg, key, now=now)
    with pytest.raises(KilnError, match="before the current index timestamp .version 2. was signed"):
        publish_index(reg, key, now=now - 2 * DAY)
    assert publish_index(reg, key, now=now - dt.timedelta(minutes=10)).timestamp_version == 3  # (skew)


def test_a_timestamp_further_ahead_than_any_publisher_signs_stops_the_publisher(reg) -> None:
    """A timestamp signed before ``signed_at`` existed, expiring 400 days from now."""
    key, now = SecretKey.generate("idx-1"), ix.utcnow()
    publish_index(reg, key, now=now - 10 * DAY)
    doc = json.loads(reg.read("index/timestamp.json"))
    del doc["signed"]["signed_at"]
    doc["signed"]["expires"] = ix.expiry(now, days=400)
    reg.put_bytes("index/timestamp.json", ix.sign_envelope(doc["signed"], [key]))
    assert not refresh_due(reg, 3600, now)  # not a "shortened lifetime" to re-sign for
    with pytest.raises(KilnError, match="further ahead than any publisher signs"):
        publish_index(reg, key, now=now)


def test_two_publishers_ten_minutes_apart_do_not_re_sign_after_each_other(reg) -> None:
    key, now = SecretKey.generate("idx-1"), ix.utcnow()
    publish_index(reg, key, now=now)  # publisher A
    behind = now - dt.timedelta(minutes=10)  # publisher B, same lifetime and refresh period
    assert not refresh_due(reg, 6 * 3600, behind)
    assert refresh_due(reg, 6 * 3600, now, hours=12)  # (a lifetime changed is still followed)


def test_a_reader_whose_clock_is_behind_refuses(reg) -> None:
    key = SecretKey.generate("idx-1")
    publish_index(reg, key, timestamp_hours=1)
    state = ix.TrustState.pin(reg.read("index/root.json"))
    with pytest.raises(ix.ClockError, match=r"this machine's clock is behind .* set it \(NTP\)"):
        _update(reg, state, dt.datetime(1970, 1, 2, tzinfo=dt.UTC))
    assert state.timestamp_version == 0


def test_metadata_signed_by_a_clock_ahead_is_refused_later(reg) -> None:
    """One publish with the clock 400 days ahead (timestamp valid until then, root
    renewed); a fresh reader 300 days later must not take that copy."""
    key, now = SecretKey.generate("idx-1"), ix.utcnow()
    publish_index(reg, key, now=now)
    pinned = reg.read("index/root.json")
    publish_index(reg, key, now=now + 400 * DAY)
    assert json.loads(reg.read("index/root.json"))["signed"]["version"] == 2
    state = ix.TrustState.pin(pinned)
    with pytest.raises(
        ix.ClockError, match="further ahead than any publisher signs .*: the publisher's clock is ahead"
    ):
        _update(reg, state, now + 300 * DAY)
    fresh = ix.TrustState.pin(pinned)
    _update(reg, fresh, now + 400 * DAY)  # (when that time comes, it is fine)


@needs_faketime
def test_kiln_copy_with_its_clock_in_1970_refuses(tmp_path: Path) -> None:
    m = Media(tmp_path)
    m.publish("--timestamp-hours", "1")
    r = m.copy(tmp_path / "offline", pre=("faketime", "1970-01-02 00:00:00"))
    assert r.returncode == 1, r.stderr
    assert "this machine's clock is behind" in r.stderr, r.stderr


def _health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=10) as h:
            return h.status, json.loads(h.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.skipif(not Path(LIBFAKETIME).exists(), reason="libfaketime not installed")
def test_kiln_serve_in_1970_keeps_the_good_timestamp_and_says_so(tmp_path: Path) -> None:
    m = Media(tmp_path)
    good = (m.reg / "index/timestamp.json").read_bytes()
    # libfaketime preloaded into the server itself (the faketime script would be the
    # process signalled): its clock starts at 1970-01-02 and runs on
    env = {**os.environ, "LD_PRELOAD": LIBFAKETIME, "FAKETIME": "@1970-01-02 00:00:00"}
    args = ["--dir", str(m.reg), "--index-key", str(m.idx.sk_file), "--index-refresh", "0.0005"]
    p = subprocess.Popen(
        [*KILN, "serve", *args, "--listen", "127.0.0.1:0"],  # (a free port: the line names it)
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = line_within(p.stdout, 60)
        assert "listening on http://127.0.0.1:" in line, line
        time.sleep(4)  # several refresh wake-ups (every 1 s)
        st, doc = _health(line.split("listening on ", 1)[1].strip())
        assert st == 503 and doc["status"] == "unavailable" and doc["clock"] == "wrong", doc
        assert "does not re-sign the index: this machine's clock reads 1970" in doc["problems"][0], doc
    finally:
        p.terminate()
        try:
            _out, err = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
    assert (m.reg / "index/timestamp.json").read_bytes() == good
    assert err.count("not re-signing the index timestamp") == 1, err
