"""NAR writer and reader without Nix: golden bytes, round trips over the corpus,
streaming/chunking, entries/cat/ls, and what dump refuses."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
from pathlib import Path

import pytest
from fmtkit import assert_nothing_left, nar, nar_dir, nar_file, nar_link, rmtree, s, tree_signature
from fskit import bind_socket

from kiln.store import nar as narmod
from kiln.store.errors import FormatError
from kiln.store.hashes import Hash

GOLDEN = Path(__file__).parent / "golden"


def make_small(root: Path) -> Path:
    """The tree behind golden/small.nar (written by ``nix-store --dump``)."""
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello\n")
    (root / "run").write_bytes(b"#!/bin/sh\nexit 0\n")
    (root / "run").chmod(0o755)
    (root / "empty").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub" / "B").write_bytes(b"upper")
    (root / "sub" / "a").write_bytes(b"lower")
    (root / "nothing").mkdir()
    os.symlink("hello.txt", root / "link")
    return root


def test_golden_small_nar(tmp_path: Path) -> None:
    root = make_small(tmp_path / "small")
    want = (GOLDEN / "small.nar").read_bytes()
    assert narmod.dump_bytes(root) == want
    h, n = narmod.hash_path(root)
    assert n == len(want)
    assert h.to_nix32() == (GOLDEN / "small.nar.sha256").read_text().strip()


def test_golden_single_file_bytes(tmp_path: Path) -> None:
    # Spelled out by hand from the grammar: every string is u64 length + bytes + padding.
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert narmod.dump_bytes(p) == nar(nar_file(b"abc"))
    p.chmod(0o755)
    assert narmod.dump_bytes(p) == nar(nar_file(b"abc", executable=True))
    os.unlink(p)
    os.symlink("t", p)
    assert narmod.dump_bytes(p) == nar(nar_link(b"t"))


def test_entries_sorted_as_bytes(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    for raw in (b"a", b"B", b"\xff", "\ue000".encode(), b"_"):
        with open(os.path.join(os.fsencode(d), raw), "wb"):
            pass
    names = [os.fsencode(e.path) for e in narmod.entries([narmod.dump_bytes(d)]) if e.path]
    assert names == sorted(names) == [b"B", b"_", b"a", "\ue000".encode(), b"\xff"]


@pytest.mark.parametrize(
    "name",
    [
        "regular-file",
        "exec-file",
        "empty-file",
        "root-symlink",
        "empty-dir",
        "mixed",
        "deep",
        "large",
        "many-files",
    ],
)
def test_roundtrip_corpus(corpus: dict[str, Path], tmp_path: Path, name: str) -> None:
    src = corpus[name]
    data = narmod.dump_bytes(src)
    # hash_path agrees with hashing the dump
    assert narmod.hash_path(src) == (Hash.sha256_of(data), len(data))
    try:
        # restore from a file object and from an iterable of awkward chunk sizes
        narmod.restore(io.BytesIO(data), tmp_path / "a")
        narmod.restore((data[i : i + 13] for i in range(0, len(data), 13)), tmp_path / "b")
        for out in ("a", "b"):
            assert narmod.dump_bytes(tmp_path / out) == data
        if name != "root-symlink":
            assert tree_signature(tmp_path / "a") == tree_signature(src)
    finally:
        rmtree(tmp_path / "a")
        rmtree(tmp_path / "b")


@pytest.mark.parametrize("chunk_size", [1, 7, 8, 4096, 1 << 20, 1 << 24])
def test_dump_chunking_is_transparent(corpus: dict[str, Path], chunk_size: int) -> None:
    tree = corpus["large" if chunk_size >= 4096 else "mixed"]
    want = narmod.dump_bytes(tree)
    chunks = list(narmod.dump(tree, chunk_size=chunk_size))
    assert b"".join(chunks) == want
    assert all(isinstance(c, bytes) for c in chunks)
    if chunk_size >= 4096:
        # bounded memory: no chunk is much bigger than asked for (headers only)
        assert max(map(len, chunks)) <= chunk_size + 512


def test_hash_path_matches_sha256_of_dump(corpus: dict[str, Path]) -> None:
    for name in ("mixed", "many-files"):
        h = hashlib.sha256()
        n = 0
        for c in narmod.dump(corpus[name]):
            h.update(c)
            n += len(c)
        want = (Hash("sha256", h.digest()), n)
        # inline path (one batch) and reader-thread path (many small batches) agree
        assert narmod.hash_path(corpus[name]) == want
        assert narmod.hash_path(corpus[name], chunk_size=100) == want


@pytest.mark.parametrize("first", [1_000_000, (1 << 20) - (1 << 16) - 200, (1 << 20) - 300, 1 << 20, 3 << 19])
def test_hash_path_when_a_short_batch_is_not_the_last(tmp_path: Path, first: int) -> None:
    # The walk flushes a short batch before a file rather than make a small read, so a
    # batch under chunk_size is not necessarily the last. A hash that stopped there
    # would miss the rest of the tree (and two different trees would collide).
    root = tmp_path / "t"
    root.mkdir()
    (root / "a").write_bytes(os.urandom(first))
    (root / "b").write_bytes(b"0123456789")
    (root / "c").mkdir()
    (root / "c" / "d").write_bytes(b"x" * 70_000)
    want = Hash.sha256_of(narmod.dump_bytes(root))
    assert narmod.hash_path(root)[0] == want
    (root / "b").write_bytes(b"9876543210")  # same length, other bytes: another hash
    assert narmod.hash_path(root)[0] == Hash.sha256_of(narmod.dump_bytes(root)) != want


def test_dump_rejects_fifo_and_socket(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    os.mkfifo(d / "pipe")
    with pytest.raises(FormatError, match=r"d/pipe: is a fifo; a store path may contain only"):
        narmod.dump_bytes(d)
    with pytest.raises(FormatError, match="is a fifo"):
        narmod.hash_path(d)
    os.unlink(d / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    try:
        bind_socket(sock, d / "sock")
        with pytest.raises(FormatError, match=r"d/sock: is a socket; a store path may contain only"):
            narmod.dump_bytes(d)
    finally:
        sock.close()


def test_dump_rejects_device(tmp_path: Path) -> None:
    try:
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("cannot create device nodes here")
    with pytest.raises(FormatError, match=r"null: is a character device; a store path may contain only"):
        narmod.dump_bytes(tmp_path)


def test_dump_detects_file_shrinking(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x" * (1 << 20))
    it = narmod.dump(p, chunk_size=4096)
    next(it)
    os.truncate(p, 10)
    with pytest.raises(FormatError, match="shrank"):
        list(it)


def test_entries_types_and_offsets(corpus: dict[str, Path]) -> None:
    data = narmod.dump_bytes(corpus["mixed"])
    es = {e.path: e for e in narmod.entries(io.BytesIO(data))}
    assert es[""].type == "directory"
    assert es["script"].type == "executable"
    assert es["ownerx-only"].type == "executable"
    assert es["groupx-only"].type == "regular"
    assert es["dangling-abs"] == narmod.NarEntry("dangling-abs", "symlink", 0, "/nonexistent/absolute/target")
    assert es["sub/rel-link"].target == "../plain"
    assert es["emptydir"].type == "directory"
    assert es["sub/deeper/f"].name == "f"
    assert os.fsencode(es[os.fsdecode(b"\xff")].path) == b"\xff"
    for e in es.values():
        if e.type in ("regular", "executable"):
            start = e.contents_offset
            assert start is not None and start % 8 == 0
            with open(os.path.join(os.fsencode(corpus["mixed"]), os.fsencode(e.path)), "rb") as f:
                assert data[start : start + e.size] == f.read()
        else:
            assert e.contents_offset is None and e.size == 0


def test_cat_and_ls(corpus: dict[str, Path]) -> None:
    data = narmod.dump_bytes(corpus["mixed"])
    assert narmod.cat([data], "sub/deeper/f") == b"deep\n"
    assert narmod.cat(io.BytesIO(data), "/plain") == b"hello world\n"
    assert narmod.cat([data], "empty") == b""
    assert narmod.cat([data], "日本語") == b"nihongo"
    assert [e.name for e in narmod.ls([data], "sub")] == ["deeper", "rel-link"]
    assert [e.path for e in narmod.ls([data], "sub", recursive=True)] == [
        "sub/deeper",
        "sub/deeper/f",
        "sub/rel-link",
    ]
    assert narmod.ls([data], "plain") == [
        narmod.NarEntry("plain", "regular", 12, None, narmod.ls([data], "plain")[0].contents_offset)
    ]
    top = [e.name for e in narmod.ls([data])]
    assert top == sorted(top, key=os.fsencode) and "sub" in top and "deeper" not in top
    with pytest.raises(narmod.NarPathError, match="does not exist"):
        narmod.cat([data], "nope")
    with pytest.raises(narmod.NarPathError, match="is a directory"):
        narmod.cat([data], "sub")
    with pytest.raises(narmod.NarPathError, match="symlink to '../plain'"):
        narmod.cat([data], "sub/rel-link")
    with pytest.raises(narmod.NarPathError, match=r"'\.\.'"):
        narmod.ls([data], "sub/../plain")
    # a single-file NAR: the root is the file
    single = narmod.dump_bytes(corpus["regular-file"])
    assert narmod.cat([single], "") == b"just a file\n"
    assert [e.path for e in narmod.ls([single])] == [""]


def test_listing(tmp_path: Path) -> None:
    data = (GOLDEN / "small.nar").read_bytes()
    tree = narmod.listing([data])
    es = {e.path: e for e in narmod.entries([data])}
    assert tree["type"] == "directory" and list(tree["entries"]) == [
        "empty",
        "hello.txt",
        "link",
        "nothing",
        "run",
        "sub",
    ]
    assert tree["entries"]["run"] == {
        "type": "regular",
        "size": 17,
        "executable": True,
        "narOffset": es["run"].contents_offset,
    }
    assert tree["entries"]["hello.txt"] == {
        "type": "regular",
        "size": 6,
        "narOffset": es["hello.txt"].contents_offset,
    }
    assert tree["entries"]["link"] == {"type": "symlink", "target": "hello.txt"}
    assert tree["entries"]["nothing"] == {"type": "directory", "entries": {}}
    assert list(tree["entries"]["sub"]["entries"]) == ["B", "a"]
    assert narmod.listing_json([data]).startswith(
        b'{"version":1,"root":{"type":"directory","entries":{"empty":'
    )
    assert narmod.listing([narmod.dump_bytes(make_small(tmp_path / "s") / "run")])["executable"] is True
    # control characters are written as Nix writes them: \u0008 and \u000c, not \b and
    # \f (a literal backslash before b stays an escaped backslash); golden from Nix 2.8
    weird = tmp_path / "weird"
    weird.mkdir()
    os.symlink("a\bb\fc\\b\n", weird / "l")
    assert narmod.listing_json([narmod.dump_bytes(weird)]) == (
        b'{"version":1,"root":{"type":"directory","entries":{"l":{"type":"symlink",'
        b'"target":"a\\u0008b\\u000cc\\\\b\\n"}}}}'
    )
    with pytest.raises(FormatError, match="trailing data"):
        narmod.listing([data + b"x"])


def test_cat_validates_whole_archive(corpus: dict[str, Path]) -> None:
    data = narmod.dump_bytes(corpus["mixed"]) + b"junk"
    with pytest.raises(FormatError, match="trailing data"):
        narmod.cat([data], "plain")


def test_restore_refuses_existing_dest(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(FileExistsError):
        narmod.restore([nar(nar_file(b"a"))], tmp_path / "x")
    assert list((tmp_path / "x").iterdir()) == []


def test_restore_never_replaces_a_dest_that_appears_meanwhile(tmp_path: Path) -> None:
    # Another process creates dest (an empty dir: plain rename() would replace it)
    # while we are restoring; we must fail and leave its dest alone.
    data = nar(nar_dir(("a", nar_file(b"1"))))
    dest = tmp_path / "dest"

    def racing():
        yield data[:40]
        dest.mkdir()
        yield data[40:]

    with pytest.raises(FileExistsError, match="appeared while restoring"):
        narmod.restore(racing(), dest)
    assert list(dest.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["dest"]  # temp dir cleaned up


def test_restore_modes_and_fsync(tmp_path: Path) -> None:
    data = nar(nar_dir(("a", nar_file(b"1")), ("x", nar_file(b"2", executable=True)), ("z", nar_link("a"))))
    narmod.restore([data], tmp_path / "out", fsync=True)
    assert (tmp_path / "out" / "a").stat().st_mode & 0o111 == 0
    assert (tmp_path / "out" / "x").stat().st_mode & 0o100
    assert os.readlink(tmp_path / "out" / "z") == "a"
    assert_nothing_left(tmp_path / "nonexistent")


def test_streaming_uses_bounded_chunks(tmp_path: Path) -> None:
    # restore consumes an iterator lazily: a generator of 1 MiB chunks of a 64 MiB file
    # never needs the whole archive in memory (checked by consuming it chunk by chunk).
    size = 64 << 20

    def gen():
        yield s("nix-archive-1") + s("(") + s("type") + s("regular") + s("contents")
        yield size.to_bytes(8, "little")
        block = b"\xab" * (1 << 20)
        for _ in range(size >> 20):
            yield block
        yield s(")")

    narmod.restore(gen(), tmp_path / "big")
    assert (tmp_path / "big").stat().st_size == size
