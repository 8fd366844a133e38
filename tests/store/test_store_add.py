"""Adding paths: source paths, text paths, build outputs, imports; reading them back."""

from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from fskit import bind_socket
from storekit import make_tree, tmp_leftovers

from kiln.store import nar
from kiln.store.errors import HashMismatch, KilnError, StoreError
from kiln.store.localstore import LocalStore
from kiln.store.pathinfo import PathInfo
from kiln.store.paths import make_source_path, make_text_path


def _modes(real):
    out = {}
    for dirpath, dirnames, filenames in os.walk(real):
        for n in [*dirnames, *filenames, ""]:
            p = os.path.join(dirpath, n) if n else dirpath
            st = os.lstat(p)
            out[os.path.relpath(p, real)] = (
                stat.S_IMODE(st.st_mode),
                int(st.st_mtime),
                stat.S_ISLNK(st.st_mode),
            )
    return out


def test_add_path_is_nix_source_path_and_canonical(store, sample):
    info = store.add_path(sample)
    nh, size = nar.hash_path(sample)
    assert info.nar_hash == nh and info.nar_size == size
    assert info.path == str(make_source_path("sample", nh, store_dir="/kiln/store"))
    assert info.ca == f"fixed:r:sha256:{nh.nix32}"
    real = store.real_path(info.path)
    assert real == store.root / "kiln/store" / info.path.rsplit("/", 1)[1]
    assert nar.dump_bytes(real) == nar.dump_bytes(sample)
    for rel, (mode, mtime, link) in _modes(real).items():
        assert mtime == 1, rel
        if not link:
            assert mode in (0o444, 0o555), (rel, oct(mode))
    assert _modes(real)["bin/run"][0] == 0o555
    assert _modes(real)["."][0] == 0o555
    assert b"".join(store.nar(info.path)) == nar.dump_bytes(sample)
    assert store.is_valid(info.path) and store.query(info.path) == info
    assert store.query_by_hash_part(info.path.split("/")[-1][:32]).path == info.path
    assert store.all_paths() == [info.path]
    # the object is named by the sha256 of its bytes
    obj = store.object_path(info.path)
    import hashlib

    assert obj.name == hashlib.sha256(obj.read_bytes()).hexdigest() + ".nar.zst"
    assert obj.parent.name == obj.name[:2]


def test_add_path_again_and_single_file(store, sample):
    a = store.add_path(sample)
    assert store.add_path(sample) == a
    f = store.add_path(sample / "a.txt", name="greeting")
    assert f.path.endswith("-greeting")
    assert store.real_path(f.path).read_text() == "hello\n"
    assert stat.S_IMODE(store.real_path(f.path).stat().st_mode) == 0o444


@pytest.mark.nix
def test_add_path_matches_nix_store_add(tmp_path, sample):
    if not shutil.which("nix-store"):
        pytest.skip("nix-store not installed")
    s = LocalStore.open(tmp_path / "nixish", store_dir="/nix/store")
    try:
        ours = s.add_path(sample).path
    finally:
        s.close()
    theirs = subprocess.run(["nix-store", "--add", str(sample)], capture_output=True, text=True, check=True)
    assert ours == theirs.stdout.strip()


def test_filter_and_setuid_stripped(store, tmp_path):
    src = make_tree(tmp_path / "f", {"keep": "k", "skip.o": "s", "d/x": "x"})
    os.chmod(src / "keep", 0o4755)
    info = store.add_path(src, filter=lambda p, kind: not p.endswith(".o"))
    real = store.real_path(info.path)
    assert sorted(os.listdir(real)) == ["d", "keep"]
    assert stat.S_IMODE(os.lstat(real / "keep").st_mode) == 0o555


def test_rejects_fifo_and_socket(store, tmp_path):
    src = make_tree(tmp_path / "s", {"a": "a"})
    os.mkfifo(src / "pipe")
    with pytest.raises(StoreError, match="fifo"):
        store.add_path(src)
    os.unlink(src / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    bind_socket(sock, src / "sock")
    try:
        with pytest.raises(StoreError, match="socket"):
            store.add_path(src)
    finally:
        sock.close()
    assert store.all_paths() == []
    assert tmp_leftovers(store) == []
    assert os.listdir(store.real_store) == []


def test_add_text(store, sample):
    src = store.add_path(sample)
    text = b"Derive([])"
    t = store.add_text("x.drv", text, [src.path])
    assert t.path == str(make_text_path("x.drv", text, [store.parse_path(src.path)], "/kiln/store"))
    assert t.references == (src.path,)
    assert store.real_path(t.path).read_bytes() == text
    assert store.add_text("x.drv", text, [src.path]) == t
    with pytest.raises(StoreError, match="not valid"):
        store.add_text("y.drv", b"y", ["/kiln/store/" + "0" * 32 + "-missing"])


def test_add_texts_is_add_text_with_group_commit(store, sample, tmp_path):
    """``add_texts`` registers exactly what ``add_text`` would (same paths, digests,
    references, content address, bytes), references to earlier items included."""
    from kiln.store.localstore import LocalStore

    src = store.add_path(sample)
    other = LocalStore.open(tmp_path / "other")
    other.add_path(sample)
    items, prev = [], [src.path]
    for i in range(5):
        text = f"Derive([{i}])".encode() * (i + 1)
        items.append((f"t{i}.drv", text, prev))
        prev = [str(make_text_path(f"t{i}.drv", text, [store.parse_path(r) for r in prev], "/kiln/store"))]
    one_by_one = [store.add_text(*item) for item in items]
    grouped = other.add_texts(items)
    for a, b in zip(one_by_one, grouped, strict=True):
        assert (a.path, a.nar_hash, a.nar_size, a.references, a.ca) == (
            b.path,
            b.nar_hash,
            b.nar_size,
            b.references,
            b.ca,
        )
        assert other.real_path(b.path).read_bytes() == store.real_path(a.path).read_bytes()
        assert other.is_valid(b.path)
    assert [i.path for i in other.add_texts(items)] == [i.path for i in grouped]  # valid: kept
    assert other.verify().ok
    with pytest.raises(StoreError, match="not valid"):
        other.add_texts([("y.drv", b"y", ["/kiln/store/" + "0" * 32 + "-missing"])])


def test_register_built(store, sample, tmp_path):
    dep = store.add_path(sample)
    out = "/kiln/store/" + "1" * 32 + "-out"
    tree = make_tree(tmp_path / "build" / "out", {"bin/tool": "x:#!/bin/sh\n", "share/doc": "doc"})
    os.chmod(tree / "share", 0o777)
    info = store.register_built(out, tree, [dep.path, out], "/kiln/store/" + "2" * 32 + "-out.drv")
    assert not tree.exists()  # moved, not copied
    real = store.real_path(out)
    assert (real / "share/doc").read_text() == "doc"
    assert stat.S_IMODE(os.lstat(real / "share").st_mode) == 0o555
    assert info.references == tuple(sorted([dep.path, out]))
    assert store.query(out).deriver.endswith("-out.drv")
    assert store.closure([out]) == [dep.path, out]
    assert store.verify().ok


def test_register_built_rejects_setuid_and_missing_refs(store, tmp_path):
    tree = make_tree(tmp_path / "o", {"su": "x"})
    os.chmod(tree / "su", 0o4755)
    out = "/kiln/store/" + "3" * 32 + "-o"
    with pytest.raises(StoreError, match="setuid"):
        store.register_built(out, tree, [], None)
    assert not store.is_valid(out) and not store.real_path(out).exists()
    os.chmod(tree / "su", 0o755)
    with pytest.raises(StoreError, match="not valid"):
        store.register_built(out, tree, ["/kiln/store/" + "4" * 32 + "-nope"], None)
    assert not store.is_valid(out)


def test_import_nar_and_object(store, sample, tmp_path):
    a = store.add_path(sample)
    other = LocalStore.open(tmp_path / "other")
    try:
        data = b"".join(store.nar(a.path))
        got = other.import_nar(PathInfo(a.path, a.nar_hash, a.nar_size, ca=a.ca), io.BytesIO(data))
        assert got.nar_hash == a.nar_hash
        assert nar.dump_bytes(other.real_path(a.path)) == data
        assert other.verify().ok
        # from the compressed object, keeping its bytes
        third = LocalStore.open(tmp_path / "third")
        with open(store.object_path(a.path), "rb") as f:
            t = third.import_object(a, f)
        assert t.file_hash == a.file_hash
        assert third.object_path(a.path).read_bytes() == store.object_path(a.path).read_bytes()
        third.close()
    finally:
        other.close()


def test_import_rejects_bad_hash_and_leaves_nothing(store, sample, tmp_path):
    a = store.add_path(sample)
    data = bytearray(b"".join(store.nar(a.path)))
    i = data.find(b"hello")
    data[i] ^= 1
    other = LocalStore.open(tmp_path / "other")
    try:
        with pytest.raises(HashMismatch) as e:
            other.import_nar(PathInfo(a.path, a.nar_hash, a.nar_size), io.BytesIO(bytes(data)))
        assert a.nar_hash.to_nix32() in str(e.value)
        with pytest.raises(KilnError):
            other.import_nar(PathInfo(a.path, a.nar_hash, a.nar_size), [b"nix-archive-1 garbage"])
        with open(store.object_path(a.path), "rb") as f:
            bad = PathInfo(a.path, a.nar_hash, a.nar_size, file_hash=a.nar_hash, file_size=a.file_size)
            with pytest.raises(HashMismatch, match="compressed file"):
                other.import_object(bad, f)
        assert not other.is_valid(a.path)
        assert not other.real_path(a.path).exists()
        assert tmp_leftovers(other) == []
    finally:
        other.close()


def test_reading_reverifies_object(store, sample):
    a = store.add_path(sample)
    obj = store.object_path(a.path)
    os.chmod(obj, 0o644)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))
    with pytest.raises(HashMismatch):
        b"".join(store.nar(a.path))


def test_resolve_and_real_path(store, sample):
    a = store.add_path(sample)
    real = store.real_path(a.path)
    assert store.resolve(a.path) == (a.path, "")
    assert store.resolve(a.path + "/bin/run") == (a.path, "bin/run")
    assert store.resolve(str(real / "sub")) == (a.path, "sub")
    assert store.real_path(a.path + "/a.txt") == real / "a.txt"
    with pytest.raises(StoreError):
        store.resolve("/etc/passwd")


def test_store_dir_is_fixed_at_init(tmp_path):
    s = LocalStore.open(tmp_path / "s", store_dir="/opt/st")
    s.close()
    assert LocalStore.open(tmp_path / "s").store_dir == "/opt/st"
    with pytest.raises(StoreError, match="/opt/st"):
        LocalStore.open(tmp_path / "s", store_dir="/kiln/store")
    with pytest.raises(StoreError, match="no kiln store"):
        LocalStore.open(tmp_path / "none", create=False)


def test_large_files_through_every_copy_path(store, tmp_path):
    """Files on both sides of the O_DIRECT threshold, of the 1 MiB slot and of the block
    size, after headers that leave a slot part-filled: identical NARs and copies whether
    big files go out with O_DIRECT or through the page cache, on disk and on tmpfs."""
    import random

    from kiln.store import ingest
    from kiln.store.directio import ALIGN
    from kiln.store.narsink import NarSink
    from kiln.store.objects import CHUNK

    rng = random.Random(5)
    sizes = {
        "a": CHUNK * 2 + 12345,
        "b": ingest.DIRECT_MIN - 1,
        "c": ingest.DIRECT_MIN + 1,
        "d": CHUNK,
        "f": ALIGN * 300,
        "g": CHUNK * 3 + ALIGN - 1,
        "s": 7,
    }
    src = make_tree(tmp_path / "big", {"e": b"", **{k: rng.randbytes(n) for k, n in sizes.items()}})
    want = nar.dump_bytes(src)
    info = store.add_path(src)
    assert b"".join(store.nar(info.path)) == want
    assert nar.dump_bytes(store.real_path(info.path)) == want
    shm = Path("/dev/shm")
    places = [tmp_path] + ([Path(tempfile.mkdtemp(dir=shm))] if shm.is_dir() else [])
    try:
        for place in places:
            for direct in (True, False):
                obj, copy = place / f"obj{direct}", place / f"copy{direct}"
                sink = NarSink(os.open(obj, os.O_WRONLY | os.O_CREAT, 0o644))
                ingest.TreeIngest(sink, direct=direct).run(src, copy)
                oi = sink.finish()
                assert (oi.nar_hash, oi.file_hash, oi.file_size) == (
                    info.nar_hash,
                    info.file_hash,
                    info.file_size,
                )
                assert nar.dump_bytes(copy) == want, (place, direct)
                # modes and mtimes are set after the last write (a write moves the mtime)
                assert {k: v for k, v in _modes(copy).items() if k != "."} == {
                    k: (0o444, 1, False) for k in ["e", *sizes]
                }
                assert obj.read_bytes() == store.object_path(info.path).read_bytes()
    finally:
        for place in places[1:]:
            shutil.rmtree(place)


def test_ingest_nar_equals_nar_dump_on_edge_cases(store, tmp_path):
    """The one-pass walker must produce byte-for-byte what nar.dump produces."""
    src = make_tree(
        tmp_path / "edge", {"B": "upper", "a": "lower", "empty": b"", "dir/x": "1", "dangling": "->nowhere"}
    )
    (src / "emptydir").mkdir()
    os.mkdir(src / b"\xff\xfename".decode("utf-8", "surrogateescape"))
    (src / "gx").write_text("group-x only")
    os.chmod(src / "gx", 0o654)
    (src / "ux").write_text("owner-x only")
    os.chmod(src / "ux", 0o744)
    cases = [src, src / "a", src / "dangling", src / "emptydir", src / "empty"]
    for i, c in enumerate(cases):
        info = store.add_path(c, name=f"case{i}")
        assert b"".join(store.nar(info.path)) == nar.dump_bytes(c), c
        assert nar.dump_bytes(store.real_path(info.path)) == nar.dump_bytes(c), c
    real = store.real_path(store.add_path(src, name="case0").path)
    assert stat.S_IMODE(os.lstat(real / "gx").st_mode) == 0o444
    assert stat.S_IMODE(os.lstat(real / "ux").st_mode) == 0o555
    assert os.readlink(real / "dangling") == "nowhere"


def test_add_a_tree_deeper_than_the_recursion_limit(store, tmp_path):
    """``kiln store add`` walks iteratively: a 1,100-deep tree (the format tests' deep
    case, which Nix archives too) is added, hashed like ``nar.hash_path`` and copied."""
    import os

    from storekit import deep_tree

    from kiln.store import nar
    from kiln.store.nar_restore import rmtree_iter

    src = deep_tree(tmp_path / "deep", 1100)
    try:
        info = store.add_path(src)
        assert (info.nar_hash, info.nar_size) == nar.hash_path(src)
        assert nar.hash_path(store.real_path(info.path)) == (info.nar_hash, info.nar_size)
        assert store.verify().ok
    finally:
        rmtree_iter(os.fsencode(src))
        store.close()
        s = type(store).open(store.root)
        s.gc()  # removes the deep path iteratively (pytest's cleanup would recurse)
        s.close()


def test_a_failing_sink_stops_the_walk_early(tmp_path, monkeypatch):
    """A full disk in the output thread surfaces in the walker at the next slot it
    reuses, not after the whole tree has been read; abort leaves no thread or fd."""
    import random
    import threading

    from kiln.store import ingest
    from kiln.store.narsink import NarSink
    from kiln.store.objects import CHUNK

    rng = random.Random(7)
    src = make_tree(tmp_path / "src", {f"f{i:02d}": rng.randbytes(CHUNK + 777) for i in range(40)})
    sink = NarSink(os.open(tmp_path / "obj", os.O_WRONLY | os.O_CREAT, 0o644))
    real, calls = sink._out, [0]

    def full_disk(chunk):  # noqa: ANN001
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(28, "No space left on device (injected)")
        real(chunk)

    sink._out = full_disk
    walker = ingest.TreeIngest(sink)
    read = [0]
    real_readv = os.readv

    def counting_readv(fd, bufs):  # noqa: ANN001
        read[0] += 1
        return real_readv(fd, bufs)

    monkeypatch.setattr(os, "readv", counting_readv)
    try:
        with pytest.raises(OSError, match="No space left"):
            walker.run(src, tmp_path / "copy")
    finally:
        monkeypatch.undo()
        sink.abort()
    assert read[0] < 40  # stopped long before the 80 reads the tree needs
    assert sink.fd == -1 and not any(t.is_alive() for t in (sink.hasher, sink.output, *sink.compressors))
    assert threading.active_count() < 10


def test_a_closed_store_says_so(store, sample):
    """A store object used after ``close()`` raises a ``StoreError`` that says it is
    closed (it raised ``AttributeError`` on ``None``), and closing twice is harmless."""
    from kiln.store.errors import StoreError

    info = store.add_path(sample)
    store.close()
    store.close()
    for use in (lambda: store.query(info.path), lambda: store.add_path(sample), store.all_paths):
        with pytest.raises(StoreError, match="is closed; open it again"):
            use()
    assert os.listdir(store.tmp) == []  # nothing was begun


def test_a_setuid_files_name_is_shown_on_one_line(store, tmp_path):
    """The refusal names the file escaped (``shownname``): a newline in its name printed
    raw started a line of its own (``error: forged``) under kiln's message."""
    tree = make_tree(tmp_path / "n", {"ok": "x"})
    evil = tree / "x\nerror: forged"
    evil.write_text("x")
    os.chmod(evil, 0o4755)
    out = "/kiln/store/" + "5" * 32 + "-n"
    with pytest.raises(StoreError, match="setuid") as e:
        store.register_built(out, tree, [], None)
    assert "x\\nerror: forged" in str(e.value) and "\n" not in str(e.value), str(e.value)
