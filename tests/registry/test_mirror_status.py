"""``kiln mirror status DIR [--json]``: a mirror's source, last sync, versions, contents
and freshness, after real syncs from a ``kiln serve`` and from a ``file://`` registry;
exit 0 fresh, 1 frozen (its index timestamp expired), 2 not a mirror."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from regkit import kiln

from kiln.registry import index as ix


def _status(d: Path, *extra: str) -> tuple[int, dict]:
    r = kiln("mirror", "status", str(d), "--json", *extra)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def _sync(src: str, dst: Path, root: Path) -> None:
    r = kiln("mirror", "sync", src, str(dst), "--root", str(root))
    assert r.returncode == 0, r.stderr


def test_status_after_a_sync_from_a_server(pushed, tmp_path) -> None:
    _store, _chain, _leaf, reg, _tok, srv = pushed
    dst = tmp_path / "mirror"
    root = reg / "index/1.root.json"
    _sync(srv.url, dst, root)
    rc, doc = _status(dst)
    assert rc == 0 and doc["fresh"] is True and doc["frozen"] is None
    assert doc["source"] == srv.url and doc["directory"] == str(dst)
    synced = ix.parse_expiry(doc["synced_at"])
    assert 0 <= (ix.utcnow() - synced).total_seconds() < 120
    src_ts = json.loads((reg / "index/timestamp.json").read_text())["signed"]
    assert (doc["timestamp_version"], doc["timestamp_expires"]) == (src_ts["version"], src_ts["expires"])
    assert doc["timestamp_seen"] == src_ts["version"] and doc["snapshot_seen"] == 1
    assert doc["root_version"] == 1 and doc["root_sha256"] == hashlib.sha256(root.read_bytes()).hexdigest()
    assert (doc["narinfos"], doc["objects"], doc["index_paths"], doc["stale"]) == (6, 6, 6, 0)

    r = kiln("mirror", "status", str(dst))  # for people
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "fresh", r.stdout
    assert f"source     {srv.url}" in r.stdout and "6 narinfos, 6 objects" in r.stdout

    # the timestamp as a mirror whose syncs stopped a day ago holds it: frozen
    ts = dst / "index/timestamp.json"
    signed = json.loads(ts.read_text())
    signed["signed"]["expires"] = "2001-01-01T00:00:00Z"
    ts.write_text(json.dumps(signed))
    rc, doc = _status(dst)
    assert rc == 1 and doc["fresh"] is False
    assert doc["frozen"] == "its index timestamp expired at 2001-01-01T00:00:00Z"
    r = kiln("mirror", "status", str(dst))
    assert r.returncode == 1 and "FROZEN: its index timestamp expired" in r.stdout


def test_status_after_a_sync_from_a_directory_and_an_older_state(pushed, tmp_path) -> None:
    _store, _chain, _leaf, reg, _tok, _srv = pushed
    dst = tmp_path / "mirror"
    _sync(f"file://{reg}", dst, reg / "index/1.root.json")
    rc, doc = _status(dst)
    assert rc == 0 and doc["source"] == f"file://{reg}" and doc["narinfos"] == 6
    # a state written by an older kiln (no source, no time) still reads
    state = json.loads((dst / ".kiln/mirror-state.json").read_text())
    assert set(state) == {"root", "timestamp", "snapshot", "source", "synced_at"}
    old = {k: state[k] for k in ("root", "timestamp", "snapshot")}
    (dst / ".kiln/mirror-state.json").write_text(json.dumps(old))
    rc, doc = _status(dst)
    assert rc == 0 and doc["source"] is None and doc["synced_at"] is None
    r = kiln("mirror", "status", str(dst))
    assert "(not recorded: last synced by an older kiln)" in r.stdout
    # the next sync reads it (the trust state is all it needs) and records both again
    _sync(f"file://{reg}", dst, reg / "index/1.root.json")
    assert _status(dst)[1]["source"] == f"file://{reg}"


def test_not_a_mirror_is_a_usage_error(pushed, tmp_path) -> None:
    _store, _chain, _leaf, reg, _tok, _srv = pushed
    r = kiln("mirror", "status", str(reg))  # a registry, but never synced into
    assert r.returncode == 2 and "is not a mirror" in r.stderr
    r = kiln("mirror", "status", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "is not a registry" in r.stderr


def test_a_source_url_with_credentials_is_recorded_without_them() -> None:
    from kiln.registry.index import TrustState
    from kiln.registry.mirror import state_record

    state = TrustState({"version": 1}, b"{}", 3, 2)
    doc = json.loads(state_record(state, "https://user:secret@cache.example/x"))
    assert "secret" not in doc["source"] and doc["timestamp"] == 3 and doc["snapshot"] == 2


def test_a_failed_sync_shows_until_one_succeeds(pushed, tmp_path) -> None:
    """A mirror whose cron syncs had failed for days showed as synced and "fresh" (only
    successful syncs left records): the last failure is shown while none succeeded since."""
    from regkit import free_port

    _store, _chain, _leaf, reg, _tok, srv = pushed
    dst = tmp_path / "mirror"
    root = reg / "index/1.root.json"
    _sync(srv.url, dst, root)
    assert _status(dst)[1]["last_failure"] is None
    down = f"http://127.0.0.1:{free_port()}"  # (the source unreachable)
    r = kiln("mirror", "sync", down, str(dst))
    assert r.returncode == 75, r.stderr
    rc, doc = _status(dst)
    assert rc == 0 and doc["fresh"] is True  # (its timestamp still holds)
    fail = doc["last_failure"]
    assert fail["transient"] is True and down in fail["error"] and fail["at"] >= doc["synced_at"], doc
    r = kiln("mirror", "status", str(dst))
    assert "last try   FAILED at " in r.stdout and "a later attempt may succeed" in r.stdout, r.stdout
    _sync(srv.url, dst, root)
    assert _status(dst)[1]["last_failure"] is None
    assert "last try" not in kiln("mirror", "status", str(dst)).stdout
