"""Contracts made explicit while typing the registry: what the types now say
holds at run time too."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.registry import dirstamps, layout
from kiln.registry.dirclient import DirClient
from kiln.registry.indexcheck import IndexedClient
from kiln.registry.verify import nar_file_hash
from kiln.store import narinfo as ni
from kiln.store.errors import FormatError
from kiln.store.hashes import Hash
from kiln.store.signing import SecretKey


def test_an_indexed_view_sets_what_it_reads_on_the_client_it_wraps(tmp_path: Path) -> None:
    """``Client.store_dir`` and ``Client.trusted`` are writable attributes; the view, which
    keeps neither of its own, takes a write through to the client it wraps (it used to
    raise AttributeError: read-only properties in place of writable attributes)."""
    inner = DirClient(str(tmp_path / "reg"))
    view = IndexedClient(inner, {}, 1)
    assert view.store_dir == inner.store_dir
    view.store_dir = "/other/store"
    assert inner.store_dir == view.store_dir == "/other/store"
    pk = SecretKey.generate("test-1").public()
    view.trusted = [pk]
    assert inner.trusted == view.trusted == [pk]


def test_nar_file_hash_names_a_path_without_one() -> None:
    """A narinfo ``check_narinfo`` admitted has its FileHash; one without is a
    ``FormatError`` naming the path (a KilnError a server answers 400 for), not an
    AttributeError on None."""
    fh = Hash.sha256_of(b"object")
    path = "/kiln/store/" + "a" * 32 + "-x"
    info = ni.NarInfo(path, Hash.sha256_of(b"nar"), 3, file_hash=fh, url=layout.nar_key(fh))
    assert nar_file_hash(info) == fh
    with pytest.raises(FormatError, match=path):
        nar_file_hash(ni.NarInfo(path, Hash.sha256_of(b"nar"), 3))


def test_a_stamp_read_back_from_json_is_judged_as_the_stamp() -> None:
    """``dirstamps.settled`` takes a stamp as a JSON record holds it (a list), as the
    mirror's plan passes it: the same answer as for the tuple."""
    stamp = (1, 2, 3, 10_000_000_000)
    for clock in (None, 11_000_000_000, 13_000_000_000):
        assert dirstamps.settled(list(stamp), clock) == dirstamps.settled(stamp, clock)
    assert dirstamps.settled(None, 13_000_000_000) is False
