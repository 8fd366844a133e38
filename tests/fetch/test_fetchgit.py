"""fetch_git against a real git repository made with pygit2 in a temporary directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pygit2
import pytest

from kiln.store import nar
from kiln.store.fetch import fetch_git
from kiln.store.fetchgit import GitFetchError

SIG = pygit2.Signature("kiln test", "test@kiln.invalid", 1700000000, 0)


def commit(repo: pygit2.Repository, files: dict[str, tuple[bytes, int]], message: str) -> str:
    """Commit exactly ``files`` ({path: (content, filemode)}) on top of HEAD."""
    builder: dict = {}
    for path, (data, mode) in files.items():
        builder[path] = (repo.create_blob(data), mode)

    def tree_of(prefix: str) -> pygit2.Oid:
        tb = repo.TreeBuilder()
        children = {p[len(prefix) :].split("/", 1)[0] for p in builder if p.startswith(prefix)}
        for child in sorted(children):
            full = prefix + child
            if full in builder:
                tb.insert(child, *builder[full])
            else:
                tb.insert(child, tree_of(full + "/"), pygit2.GIT_FILEMODE_TREE)
        return tb.write()

    parents = [] if repo.head_is_unborn else [repo.head.target]
    return str(repo.create_commit("HEAD", SIG, SIG, message, tree_of(""), parents))


@pytest.fixture
def repo(tmp_path):
    r = pygit2.init_repository(str(tmp_path / "upstream"))
    c1 = commit(
        r,
        {
            "README": (b"hello\n", pygit2.GIT_FILEMODE_BLOB),
            "bin/run.sh": (b"#!/bin/sh\necho hi\n", pygit2.GIT_FILEMODE_BLOB_EXECUTABLE),
            "link": (b"README", pygit2.GIT_FILEMODE_LINK),
            "src/deep/x.c": (b"int x;\n", pygit2.GIT_FILEMODE_BLOB),
        },
        "first",
    )
    r.create_reference("refs/tags/v1", c1)
    c2 = commit(r, {"README": (b"changed\n", pygit2.GIT_FILEMODE_BLOB)}, "second")
    return tmp_path / "upstream", c1, c2


def tree(d: Path) -> dict[str, tuple[str, int, bytes | str]]:
    out = {}
    for p in sorted(d.rglob("*")):
        st = os.lstat(p)
        rel = str(p.relative_to(d))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("l", 0, os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("d", stat.S_IMODE(st.st_mode), b"")
        else:
            out[rel] = ("f", stat.S_IMODE(st.st_mode), p.read_bytes())
    return out


def test_exports_tree_at_rev(repo, tmp_path):
    path, c1, _ = repo
    dest = tmp_path / "out"
    old = os.umask(0o077)  # modes must not depend on the caller's umask
    try:
        fetch_git(str(path), c1, dest)
    finally:
        os.umask(old)
    assert tree(dest) == {
        "README": ("f", 0o644, b"hello\n"),
        "bin": ("d", 0o755, b""),
        "bin/run.sh": ("f", 0o755, b"#!/bin/sh\necho hi\n"),
        "link": ("l", 0, "README"),
        "src": ("d", 0o755, b""),
        "src/deep": ("d", 0o755, b""),
        "src/deep/x.c": ("f", 0o644, b"int x;\n"),
    }
    assert not (dest / ".git").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_same_rev_same_nar_hash_any_url_form(repo, tmp_path):
    path, c1, c2 = repo
    fetch_git(str(path), c1, tmp_path / "a")
    fetch_git(f"file://{path}", c1, tmp_path / "b")
    fetch_git(str(path), "v1", tmp_path / "c")  # a tag name resolves too
    fetch_git(str(path), c2, tmp_path / "d")
    hashes = [nar.hash_path(tmp_path / n)[0] for n in "abcd"]
    assert hashes[0] == hashes[1] == hashes[2] != hashes[3]
    assert (tmp_path / "d" / "README").read_bytes() == b"changed\n"


def test_unknown_rev(repo, tmp_path):
    path, _, _ = repo
    with pytest.raises(GitFetchError, match="not found"):
        fetch_git(str(path), "0" * 40, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_bad_url(tmp_path):
    with pytest.raises(GitFetchError):
        fetch_git(str(tmp_path / "no-such-repo"), "0" * 40, tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_dest_must_not_exist(repo, tmp_path):
    path, c1, _ = repo
    (tmp_path / "x").mkdir()
    with pytest.raises(GitFetchError, match="already exists"):
        fetch_git(str(path), c1, tmp_path / "x")


def test_mirrored_tree_is_used_before_the_url(repo, tmp_path):
    from kiln.store.fetch import put_tree_in_mirror

    path, c1, _ = repo
    fetch_git(str(path), c1, tmp_path / "first")
    expected = nar.hash_path(tmp_path / "first")[0]
    mirror = tmp_path / "mirror"
    put_tree_in_mirror(tmp_path / "first", mirror, expected)
    # the NAR file's flat sha256 is the tree's NAR hash
    assert (mirror / "sha256" / expected.hex).is_file()
    # offline: the URL does not exist, the mirror has the tree
    fetch_git("file:///nonexistent/repo", c1, tmp_path / "again", expected=expected, mirrors=[str(mirror)])
    assert nar.hash_path(tmp_path / "again")[0] == expected
    assert tree(tmp_path / "again") == tree(tmp_path / "first")


def test_a_flat_file_under_the_expected_hash_is_skipped_not_fatal(repo, tmp_path, capsys):
    """A recipe that gives fetchgit a tarball's sha256 while the mirror holds that
    tarball: the entry is not a NAR, so it is skipped with a warning saying why, and the
    git URL is tried (whose tree the builtin then reports with the usual expected/got
    message)."""
    import hashlib

    from kiln.store.fetch import copy_to_mirror
    from kiln.store.hashes import Hash

    path, c1, _ = repo
    tarball = tmp_path / "hello.tar.gz"
    tarball.write_bytes(b"\x1f\x8b not really a tarball" * 100)
    mirror = tmp_path / "mirror"
    copy_to_mirror(tarball, mirror)
    expected = Hash("sha256", hashlib.sha256(tarball.read_bytes()).digest())
    fetch_git(str(path), c1, tmp_path / "t", expected=expected, mirrors=[str(mirror)])
    err = capsys.readouterr().err
    assert f"mirror entry for {expected.to_hex()} is not a NAR" in err
    # fetched from git instead (the builtin then reports that tree's hash as found)
    assert tree(tmp_path / "t") and nar.hash_path(tmp_path / "t")[0] != expected


def test_put_tree_in_mirror_refuses_wrong_hash(repo, tmp_path):
    from kiln.store.errors import HashMismatch
    from kiln.store.fetch import put_tree_in_mirror
    from kiln.store.hashes import Hash

    path, c1, _ = repo
    fetch_git(str(path), c1, tmp_path / "t")
    with pytest.raises(HashMismatch):
        put_tree_in_mirror(tmp_path / "t", tmp_path / "m", Hash("sha256", b"\0" * 32))
    assert list((tmp_path / "m" / "sha256").iterdir()) == []


def test_a_symlink_target_with_a_nul_byte_is_refused(tmp_path):
    r = pygit2.init_repository(str(tmp_path / "up"))
    c = commit(r, {"l": (b"a\0b", pygit2.GIT_FILEMODE_LINK)}, "bad link")
    with pytest.raises(GitFetchError, match="refusing symlink 'l'"):
        fetch_git(str(tmp_path / "up"), c, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_tree_hash_mismatch_reads_like_a_file_one(tmp_path):
    """Expected and found are written the same way for trees (fetchgit) as for files
    (fetchurl): ``sha256:<hex>``, the form recipes use."""
    from kiln.store.builtins import _check_recursive
    from kiln.store.errors import HashMismatch
    from kiln.store.hashes import Hash

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "f").write_text("x")
    expected = Hash("sha256", b"\1" * 32)
    got = nar.hash_path(tmp_path / "t")[0]
    with pytest.raises(HashMismatch) as e:
        _check_recursive(tmp_path / "t", expected, "fetchgit")
    assert (e.value.expected, e.value.got) == (expected.to_hex(), got.to_hex())
