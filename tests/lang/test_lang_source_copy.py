"""``sources.filtered_copy`` (a ``path`` source that needs filtering: a ``.git``, a
``.kilnignore``) holds only what a store path may hold, read where it lies.

It copied with ``shutil.copy2``, which refuses only FIFOs: a character device was read
(``/dev/zero``: until the disk was full), ``/dev/null`` became an empty file, while
``kiln build`` (the store's ingest, no copy) refuses both. Now it refuses what is not a
regular file, directory or symlink with the store's own message, and opens every entry
without following a link or waiting, checking it is the entry it listed.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
from pathlib import Path

import pytest
from clikit import outcome_within
from fskit import bind_socket

from kiln.lang import evaluate_file
from kiln.lang.errors import BadValue
from kiln.lang.sources import filtered_copy

_ONLY = "a store path may contain only regular files, directories and symlinks"


def _tree(tmp_path: Path) -> Path:
    """A source that needs filtering (a ``.git``), holding a file, an executable, a link."""
    src = tmp_path / "src"
    (src / ".git").mkdir(parents=True)
    (src / "sub").mkdir()
    (src / "sub" / "f").write_text("data\n")
    (src / "x").write_text("#!/bin/sh\n")
    os.chmod(src / "x", 0o755)
    os.symlink("sub/f", src / "link")
    return src


def test_a_filtered_copy_keeps_files_modes_and_links(tmp_path):
    src = _tree(tmp_path)
    copy = filtered_copy(src, tmp_path)
    try:
        assert sorted(p.name for p in copy.iterdir()) == ["link", "sub", "x"]
        assert (copy / "sub" / "f").read_text() == "data\n"
        assert os.stat(copy / "x").st_mode & 0o111
        assert os.readlink(copy / "link") == "sub/f"
    finally:
        shutil.rmtree(copy.parent)


def _special(kind: str, at: Path) -> str:
    """Make a ``kind`` entry at ``at``; the word the store's message uses for it."""
    if kind == "character device":
        os.mknod(at, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null: copied as an empty file
    elif kind == "fifo":
        os.mkfifo(at)
    else:
        s = socket.socket(socket.AF_UNIX)
        bind_socket(s, at)
        s.close()
    return kind


@pytest.mark.parametrize("kind", ["character device", "fifo", "socket"])
def test_special_files_are_refused_as_the_store_refuses_them(tmp_path, kind):
    """Evaluating the source (hashed from a filtered copy) fails, located at the ``path``,
    with the message ``kiln build`` gives for the same tree, and leaves no copy behind."""
    src = _tree(tmp_path)
    _special(kind, src / "sub" / "odd")
    (tmp_path / "r.recipe").write_text('package p {\n  src = path "./src"\n  build = "${src}"\n}\n')
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    got = outcome_within(30, lambda: filtered_copy(src, scratch), "filtered copy")
    assert isinstance(got, BadValue), got
    assert str(got) == f"{src / 'sub' / 'odd'}: is a {kind}; {_ONLY}"
    assert list(scratch.iterdir()) == []
    with pytest.raises(BadValue) as info:
        evaluate_file(tmp_path / "r.recipe").attributes()
    assert str(info.value).startswith(
        f"{tmp_path / 'r.recipe'}:2:14: cannot add path './src' to the store: {src / 'sub' / 'odd'}: is a {kind}"
    )


def test_an_entry_swapped_after_listing_is_not_read(tmp_path):
    """A file replaced, between listing and copying, by a FIFO (which would block a plain
    open), a symlink (which would be followed out of the tree) or another file is refused;
    nothing waits."""
    from kiln.lang.sources import _open_listed

    d = tmp_path / "d"
    d.mkdir()
    (d / "f").write_text("x")
    (tmp_path / "other").write_text("y")  # (made now: a freed inode number may be reused)
    listed = os.lstat(d / "f")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.unlink(d / "f")
        os.mkfifo(d / "f")
        got = outcome_within(30, lambda: _open_listed("f", fd, os.O_RDONLY, listed, d / "f"), "open")
        assert isinstance(got, BadValue) and str(got) == f"{d / 'f'}: is a fifo; {_ONLY}", got

        os.unlink(d / "f")
        os.symlink("/etc/passwd", d / "f")
        with pytest.raises(BadValue, match="the source changed while it was being copied"):
            _open_listed("f", fd, os.O_RDONLY, listed, d / "f")

        os.unlink(d / "f")
        os.link(tmp_path / "other", d / "f")  # a regular file, but not the one listed
        with pytest.raises(BadValue, match="another entry when opened than when listed"):
            _open_listed("f", fd, os.O_RDONLY, listed, d / "f")
    finally:
        os.close(fd)


def test_a_directory_swapped_for_a_link_is_not_followed(tmp_path):
    """A directory replaced by a symlink to one outside the tree is not listed through."""
    from kiln.lang.sources import _open_listed

    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    listed = os.lstat(d / "sub")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(d / "sub")
        os.symlink(tmp_path / "outside", d / "sub")
        with pytest.raises(BadValue, match="the source changed while it was being copied"):
            _open_listed("sub", fd, os.O_RDONLY | os.O_DIRECTORY, listed, d / "sub")
    finally:
        os.close(fd)


def test_a_deep_tree_is_copied_with_few_descriptors(tmp_path: Path) -> None:
    """The copy held a descriptor per directory level: a tree 1,100 deep failed with
    "Too many open files" under ``ulimit -n 1024``; one directory is open at a time."""
    import subprocess
    import sys

    top = tmp_path / "deep"
    top.mkdir()
    d = top
    for _ in range(1100):  # (level by level: Path.mkdir(parents=True) recurses per level)
        d = d / "d"
        d.mkdir()
    (d / "leaf").write_text("deep\n")
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n"
        "from pathlib import Path\n"
        "from kiln.lang.sources import filtered_copy\n"
        "out = filtered_copy(Path(sys.argv[1]), Path(sys.argv[2]))\n"
        "print(out)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(top), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    copy = Path(r.stdout.strip())
    try:
        assert (copy / ("d/" * 1100) / "leaf").read_text() == "deep\n"
    finally:
        # (level by level: shutil.rmtree recurses per level too, and pytest's clean-up of
        # old tmp dirs in a later session would die of it)
        for chain in (top, copy):
            _remove_chain(chain, 1100)
        copy.parent.rmdir()


def _remove_chain(top: Path, depth: int) -> None:
    """Remove ``top``, a chain of ``depth`` directories ``d`` holding one file ``leaf``."""
    d = top / ("d/" * depth)
    (d / "leaf").unlink()
    while d != top:
        d.rmdir()
        d = d.parent
    top.rmdir()
