"""The storage contract, run against every backend in ``storage.BACKENDS``."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.registry.storage import BACKENDS, StorageError, open_storage


def make(backend: str, tmp: Path):
    if backend == "file":
        return open_storage(f"file://{tmp / 'reg'}")
    raise AssertionError(backend)


@pytest.fixture(params=BACKENDS)
def storage(request, tmp_path: Path):
    return make(request.param, tmp_path)


def test_put_read_size_list(storage) -> None:
    assert storage.read("a.narinfo") is None and storage.size("a.narinfo") is None
    assert storage.put_bytes("a.narinfo", b"hello")
    assert storage.read("a.narinfo") == b"hello" and storage.size("a.narinfo") == 5
    assert storage.put_bytes("index/1.index.json", b"{}")
    assert "a.narinfo" in set(storage.list("")) and list(storage.list("index/")) == ["index/1.index.json"]
    with storage.open("a.narinfo") as f:
        assert f.read() == b"hello"


def test_exclusive_never_replaces(storage) -> None:
    assert storage.put_bytes("k.narinfo", b"one", exclusive=True)
    assert not storage.put_bytes("k.narinfo", b"two", exclusive=True)
    assert storage.read("k.narinfo") == b"one"
    storage.put_bytes("k.narinfo", b"three")
    assert storage.read("k.narinfo") == b"three"


def test_failed_write_leaves_nothing(storage) -> None:
    with pytest.raises(RuntimeError), storage.writer("x.narinfo") as f:
        f.write(b"partial")
        raise RuntimeError("connection dropped")
    assert storage.read("x.narinfo") is None
    with storage.staged() as (f, _):
        f.write(b"half a blob")  # never committed
    assert list(storage.list("blobs/")) == []


def test_staged_commit_under_several_names(storage) -> None:
    with storage.staged() as (f, _):
        f.write(b"blob")
        storage.commit_staged(f, ["blobs/sha256:" + "0" * 64, "nar/x.nar.zst"])
    assert storage.read("blobs/sha256:" + "0" * 64) == b"blob" == storage.read("nar/x.nar.zst")


def test_keys_cannot_escape(storage) -> None:
    for bad in ("../x", "/etc/passwd", "a/../../b"):
        with pytest.raises(StorageError):
            storage.read(bad)


def test_urls(tmp_path: Path) -> None:
    assert open_storage(str(tmp_path / "plain")).exists("nix-cache-info") is False
    with pytest.raises(StorageError, match="s3"):
        open_storage("s3://bucket/prefix")
    with pytest.raises(StorageError, match="unsupported"):
        open_storage("ftp://x/y")
    with pytest.raises(StorageError, match="host"):
        open_storage("file://otherhost/dir")


def test_sweep_removes_only_dead_writers_old_temp_files(tmp_path: Path) -> None:
    """``.kiln/tmp`` files of a writer killed mid-upload are removed by the next server
    start or mirror sync (``sweep_temp``): only once their writer pid is gone and they
    are old; a live writer's, or a fresh one, stay."""
    import os
    import subprocess
    import time

    from kiln.registry.storage import FileStorage

    st = FileStorage(tmp_path / "reg")
    with st.staged() as (f, _):
        f.write(b"in progress")  # this process: alive
        p = subprocess.Popen(["true"])  # a writer that is gone
        p.wait()
        tmp = tmp_path / "reg" / ".kiln" / "tmp"
        old_dead, new_dead, legacy = tmp / f"up-{p.pid}-old", tmp / f"up-{p.pid}-new", tmp / "up-abc"
        for x in (old_dead, new_dead, legacy):
            x.write_bytes(b"x")
        hour_ago = time.time() - 7200
        os.utime(old_dead, (hour_ago, hour_ago))
        os.utime(legacy, (hour_ago, hour_ago))
        assert st.sweep_temp() == 2
        left = sorted(e.name for e in os.scandir(tmp))
        assert left == sorted([new_dead.name, os.path.basename(f.name)])


def test_a_fifo_at_an_object_name_is_no_object(tmp_path) -> None:
    """Reading it would block for ever (a server worker, a push, a copy): it is absent."""
    import os

    from kiln.registry.storage import open_storage

    s = open_storage(tmp_path / "reg")
    s.put_bytes("x.narinfo", b"StorePath: x\n")
    os.mkfifo(tmp_path / "reg" / "y.narinfo")
    assert s.read("x.narinfo") == b"StorePath: x\n"
    assert s.read("y.narinfo") is None and s.open("y.narinfo") is None
