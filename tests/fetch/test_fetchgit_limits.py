"""fetch_git against hostile remotes and crafted repositories: silent and trickling
servers, oversized packs, git bombs, huge blobs, deep and malformed trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pygit2
import pytest

from kiln.store import fetchhttp
from kiln.store.fetch import fetch_git
from kiln.store.fetchgit import GitFetchError

SIG = pygit2.Signature("kiln test", "test@kiln.invalid", 1700000000, 0)


def commit_tree(repo: pygit2.Repository, tree: pygit2.Oid) -> str:
    return str(repo.create_commit("HEAD", SIG, SIG, "m", tree, []))


def bomb(path: Path, depth: int, fanout: int, blob: bytes) -> str:
    """A repository whose tree lists one subtree ``fanout`` times per level: a handful of
    objects describing fanout**depth files."""
    r = pygit2.init_repository(str(path))
    tb = r.TreeBuilder()
    tb.insert("f", r.create_blob(blob), pygit2.GIT_FILEMODE_BLOB)
    tree = tb.write()
    for _ in range(depth):
        tb = r.TreeBuilder()
        for i in range(fanout):
            tb.insert(f"d{i}", tree, pygit2.GIT_FILEMODE_TREE)
        tree = tb.write()
    return commit_tree(r, tree)


def nothing_left(d: Path) -> bool:
    return [p.name for p in d.iterdir() if p.name.startswith(".")] == []


def test_a_silent_git_server_times_out(server, tmp_path, monkeypatch):
    """The server reads the request and never answers: libgit2's read timeout (from
    KILN_FETCH_TIMEOUT) ends it, and the error names the URL."""
    monkeypatch.setenv("KILN_FETCH_TIMEOUT", "1")
    url = server.url("stallmirror/repo.git")
    t0 = time.monotonic()
    with pytest.raises(GitFetchError, match=rf"cannot fetch {url}:.*timed out"):
        fetch_git(url, "0" * 40, tmp_path / "src")
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "src").exists() and nothing_left(tmp_path)


def test_a_trickling_git_server_falls_under_the_stall_rule(server, tmp_path, monkeypatch):
    """A byte every 50 ms is never silent for libgit2's timeout; the parent's pace rule
    (here a 1.5 s grace) kills the fetch."""
    monkeypatch.setenv("KILN_FETCH_TIMEOUT", "5")
    monkeypatch.setattr(fetchhttp, "PACE_GRACE", 1.5)
    url = server.url("tricklehead/repo.git")
    t0 = time.monotonic()
    with pytest.raises(GitFetchError, match=rf"cannot fetch {url}: too slow"):
        fetch_git(url, "0" * 40, tmp_path / "src")
    assert time.monotonic() - t0 < 5
    assert not (tmp_path / "src").exists() and nothing_left(tmp_path)


def test_a_pack_over_the_fetch_limit_is_stopped(tmp_path, monkeypatch):
    r = pygit2.init_repository(str(tmp_path / "up"))
    tb = r.TreeBuilder()
    tb.insert("noise", r.create_blob(os.urandom(1 << 20)), pygit2.GIT_FILEMODE_BLOB)
    rev = commit_tree(r, tb.write())
    monkeypatch.setenv("KILN_GIT_MAX_FETCH", str(100_000))
    with pytest.raises(GitFetchError, match="more than 100000 bytes.*KILN_GIT_MAX_FETCH"):
        fetch_git(str(tmp_path / "up"), rev, tmp_path / "src")
    assert not (tmp_path / "src").exists()


def test_a_git_bomb_is_refused_at_the_entry_limit(tmp_path, monkeypatch):
    """6 levels of fan-out 10 would be a million files from a few KB of objects; with
    the limit at 5000 entries the export stops early and removes what it wrote."""
    rev = bomb(tmp_path / "up", depth=6, fanout=10, blob=b"x")
    monkeypatch.setenv("KILN_GIT_MAX_ENTRIES", "5000")
    t0 = time.monotonic()
    with pytest.raises(GitFetchError, match="more than 5000 entries.*KILN_GIT_MAX_ENTRIES"):
        fetch_git(str(tmp_path / "up"), rev, tmp_path / "src")
    assert time.monotonic() - t0 < 20
    assert not (tmp_path / "src").exists() and nothing_left(tmp_path)


def test_a_git_bomb_is_refused_at_the_byte_limit(tmp_path, monkeypatch):
    rev = bomb(tmp_path / "up", depth=3, fanout=10, blob=b"\0" * (64 << 10))  # 64 MiB out
    monkeypatch.setenv("KILN_GIT_MAX_BYTES", str(4 << 20))
    with pytest.raises(GitFetchError, match=r"more than 4194304 bytes.*KILN_GIT_MAX_BYTES"):
        fetch_git(str(tmp_path / "up"), rev, tmp_path / "src")
    assert not (tmp_path / "src").exists() and nothing_left(tmp_path)


def test_the_default_limits_export_an_ordinary_tree(tmp_path):
    rev = bomb(tmp_path / "up", depth=2, fanout=10, blob=b"data\n")
    fetch_git(str(tmp_path / "up"), rev, tmp_path / "src")
    assert (tmp_path / "src" / "d9" / "d9" / "f").read_bytes() == b"data\n"


def test_a_blob_over_the_blob_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    r = pygit2.init_repository(str(tmp_path / "up"))
    tb = r.TreeBuilder()
    tb.insert("big", r.create_blob(b"\0" * (8 << 20)), pygit2.GIT_FILEMODE_BLOB)
    rev = commit_tree(r, tb.write())
    monkeypatch.setenv("KILN_GIT_MAX_BLOB", str(1 << 20))
    with pytest.raises(GitFetchError, match=r"'big' is 8388608 bytes.*KILN_GIT_MAX_BLOB"):
        fetch_git(str(tmp_path / "up"), rev, tmp_path / "src")


_MEASURE = """
import json, resource, sys
from pathlib import Path
from kiln.store.fetch import fetch_git
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
fetch_git(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before": before, "after": after}))
"""


def test_a_large_blob_is_written_without_copies(tmp_path):
    """A 192 MiB blob (a few hundred KB in git): the exporting process peaks at about one
    copy of it (libgit2's), where ``.data`` and a write of it cost three."""
    size = 192 << 20
    r = pygit2.init_repository(str(tmp_path / "up"))
    zeros = tmp_path / "zeros"
    with open(zeros, "wb") as f:
        f.truncate(size)
    tb = r.TreeBuilder()
    tb.insert("big", r.create_blob_fromdisk(str(zeros)), pygit2.GIT_FILEMODE_BLOB)
    zeros.unlink()
    rev = commit_tree(r, tb.write())
    del r
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tmp_path / "up"), rev, str(tmp_path / "src")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    rss = json.loads(out.stdout)
    grew_mib = (rss["after"] - rss["before"]) / 1024
    assert (tmp_path / "src" / "big").stat().st_size == size
    assert grew_mib < 1.5 * (size >> 20), f"peak RSS grew by {grew_mib:.0f} MiB"


def test_a_deep_tree_is_refused_cleanly(tmp_path):
    """1100 nested directories (RecursionError before): a GitFetchError, nothing left."""
    r = pygit2.init_repository(str(tmp_path / "up"))
    tb = r.TreeBuilder()
    tb.insert("f", r.create_blob(b"x"), pygit2.GIT_FILEMODE_BLOB)
    tree = tb.write()
    for _ in range(1100):
        tb = r.TreeBuilder()
        tb.insert("a", tree, pygit2.GIT_FILEMODE_TREE)
        tree = tb.write()
    rev = commit_tree(r, tree)
    with pytest.raises(GitFetchError, match="nested more than 256 deep.*KILN_GIT_MAX_DEPTH"):
        fetch_git(str(tmp_path / "up"), rev, tmp_path / "src")
    assert not (tmp_path / "src").exists() and nothing_left(tmp_path)


def test_duplicate_names_in_a_crafted_tree_are_refused(tmp_path):
    r = pygit2.init_repository(str(tmp_path / "up"))
    blob = r.create_blob(b"x")
    sub = r.TreeBuilder().write()
    # a tree object listing "a" twice, as a file and as a directory (git sorts "a" < "a/")
    raw = b"100644 a\0" + blob.raw + b"40000 a\0" + sub.raw
    tree = r.odb.write(pygit2.enums.ObjectType.TREE, raw)
    rev = commit_tree(r, pygit2.Oid(raw=bytes(tree.raw)))
    with pytest.raises(GitFetchError, match="refusing tree of"):
        fetch_git(str(tmp_path / "up"), rev, tmp_path / "src")
    assert not (tmp_path / "src").exists() and nothing_left(tmp_path)
