"""A narinfo may give FileHash without FileSize (both are optional): the object is then
checked against its hash alone, not against a size of 0."""

from __future__ import annotations

import io
import os
from dataclasses import replace

import pytest
from storekit import make_tree

from kiln.store.errors import HashMismatch
from kiln.store.hashes import Hash
from kiln.store.importbatch import SMALL
from kiln.store.localstore import LocalStore


@pytest.fixture(params=["small", "large"])
def served(request, tmp_path):
    """(info without FileSize, object bytes) of a path in another store; "large" is over
    ``SMALL``, so batch imports stream it instead of checking it in memory."""
    data = b"hello\n" if request.param == "small" else os.urandom(SMALL + 200_000)
    src = make_tree(tmp_path / "src", {"f": data})
    with LocalStore.open(tmp_path / "server") as s:
        info = s.add_path(src / "f")
        zst = s.object_path(info.path).read_bytes()
    assert (request.param == "large") == (len(zst) > SMALL)
    return replace(info, file_size=None), zst


def test_import_object_without_file_size(tmp_path, served):
    info, zst = served
    with LocalStore.open(tmp_path / "client") as c:
        got = c.import_object(info, io.BytesIO(zst))
        assert got.file_size == len(zst) and c.verify().ok


def test_import_objects_without_file_size(tmp_path, served):
    info, zst = served
    with LocalStore.open(tmp_path / "client") as c:
        [got] = c.import_objects([(info, io.BytesIO(zst))])
        assert got.file_size == len(zst) and c.verify().ok


def test_a_wrong_file_hash_without_size_is_still_refused(tmp_path, served):
    info, zst = served
    bad = replace(info, file_hash=Hash.sha256_of(b"something else"))
    with LocalStore.open(tmp_path / "client") as c:
        for run in (
            lambda: c.import_object(bad, io.BytesIO(zst)),
            lambda: c.import_objects([(bad, io.BytesIO(zst))]),
        ):
            with pytest.raises(HashMismatch) as e:
                run()
            msg = str(e.value)
            assert f"compressed file of {info.path}" in msg and "(size not given)" in msg
            assert f"({len(zst)} bytes)" in msg
        assert c.all_paths() == []
