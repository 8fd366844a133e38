"""Crafted git trees whose entries lie about their objects (a "file" that is a tree, a
symlink that is a tree) crashed the export with TypeError / AttributeError; entry names
with escape sequences reached errors raw."""

from __future__ import annotations

from pathlib import Path

import pygit2
import pytest
from pygit2.enums import ObjectType

from kiln.store.fetch import fetch_git
from kiln.store.fetchgit import GitFetchError

SIG = pygit2.Signature("kiln test", "test@kiln.invalid", 1700000000, 0)


def crafted(path: Path, entries) -> str:
    """A repository whose root tree lists ``entries`` (mode, name, object id) as given,
    unchecked; returns the commit id."""
    r = pygit2.init_repository(str(path))
    raw = b"".join(mode + b" " + name + b"\0" + oid(r).raw for mode, name, oid in entries)
    tree = r.odb.write(ObjectType.TREE, raw)
    return str(r.create_commit("HEAD", SIG, SIG, "m", pygit2.Oid(raw=bytes(tree.raw)), []))


def subtree(r: pygit2.Repository) -> pygit2.Oid:
    tb = r.TreeBuilder()
    tb.insert("inner", r.create_blob(b"x\n"), pygit2.GIT_FILEMODE_BLOB)
    return tb.write()


def nothing_left(d: Path) -> bool:
    return [p.name for p in d.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(("mode", "name"), [(b"100644", b"file"), (b"100755", b"tool"), (b"120000", b"link")])
def test_an_entry_whose_object_is_a_tree_is_refused_by_name(tmp_path, mode, name):
    rev = crafted(tmp_path / "up", [(mode, name, subtree)])
    with pytest.raises(GitFetchError) as e:
        fetch_git(str(tmp_path / "up"), rev, tmp_path / "src")
    text = str(e.value)
    assert f"entry '{name.decode()}' has mode {mode.decode()}" in text, text
    assert "should be a file or symlink (a blob), but it is a tree" in text
    assert not (tmp_path / "src").exists() and nothing_left(tmp_path)


def test_an_entry_name_with_escape_sequences_is_shown_escaped(tmp_path, monkeypatch):
    evil = b"\x1b]0;OWNED\x07\x1b[2K\rall-good\nerror: fine"
    rev = crafted(tmp_path / "up", [(b"100644", evil, lambda r: r.create_blob(b"x" * 100))])
    monkeypatch.setenv("KILN_GIT_MAX_BLOB", "10")
    with pytest.raises(GitFetchError) as e:
        fetch_git(str(tmp_path / "up"), rev, tmp_path / "src")
    text = str(e.value)
    assert "is 100 bytes, more than 10" in text, text
    assert not any(ord(c) < 32 for c in text), repr(text)
    assert "\\x1b]0;OWNED\\x07" in text and "all-good\\nerror: fine" in text


def test_an_escaped_name_in_the_entry_limit_error(tmp_path, monkeypatch):
    names = [b"a", b"\x1b[31mb"]
    rev = crafted(tmp_path / "up", [(b"100644", n, lambda r: r.create_blob(b"x")) for n in names])
    monkeypatch.setenv("KILN_GIT_MAX_ENTRIES", "1")
    with pytest.raises(GitFetchError, match=r"more than 1 entries \(at '\\x1b\[31mb'"):
        fetch_git(str(tmp_path / "up"), rev, tmp_path / "src")
