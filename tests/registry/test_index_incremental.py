"""Publishing the index reads only what changed (``indexscan``) and gives exactly the
table a rebuild from scratch gives (``publish.collect_paths``); old generations are
pruned, keeping what a reader may still fetch (``indexprune``)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from pathlib import Path

import pytest

from kiln.registry import dirstamps, indexbuild, indexprune, indexscan
from kiln.registry import index as ix
from kiln.registry.publish import collect_paths, load_signed, publish_index
from kiln.registry.storage import FileStorage, open_storage
from kiln.store.signing import SecretKey

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"


def _hash_part(rng: random.Random) -> str:
    return "".join(rng.choice(NIX32) for _ in range(32))


def _narinfo(storage, h: str, sig: str = "a", name: str | None = None) -> None:
    body = (
        f"StorePath: /kiln/store/{h}-p\nURL: nar/{sig}.nar.zst\nCompression: zstd\nFileHash: sha256:00\n"
        f"FileSize: 1\nNarHash: sha256:00\nNarSize: 1\nReferences: \nSig: k:{sig}\n"
    )
    storage.put_bytes(name or f"{h}.narinfo", body.encode())


def _listing(storage, h: str, kinds: dict[str, str]) -> None:
    storage.put_bytes(f"{h}.att/index.json", json.dumps({"kinds": kinds}).encode())


@pytest.fixture
def reg(tmp_path: Path, monkeypatch):
    # a small margin, so a file settles after a short sleep (``_settle``)
    monkeypatch.setattr(dirstamps, "MARGIN_NS", 30_000_000)
    s = open_storage(tmp_path / "reg")
    s.put_bytes("nix-cache-info", b"StoreDir: /kiln/store\n")
    return s


def _settle() -> None:
    time.sleep(0.08)


class _Reads:
    """Counts the narinfos and listings the storage reads."""

    def __init__(self, monkeypatch) -> None:
        self.keys: list[str] = []
        real = FileStorage.read

        def read(storage, key):  # noqa: ANN001, ANN202
            if key.endswith(".narinfo") or key.endswith(".att/index.json"):
                self.keys.append(key)
            return real(storage, key)

        monkeypatch.setattr(FileStorage, "read", read)

    def take(self) -> set[str]:
        out, self.keys = set(self.keys), []
        return out


def _published(reg) -> dict:
    ts = load_signed(reg, "index/timestamp.json")
    return load_signed(reg, f"index/{ts['meta']['snapshot.json']['version']}.index.json")


def _check_signed(reg) -> None:
    async def fetch(key: str) -> bytes | None:
        return reg.read(key)

    state = ix.TrustState.pin(reg.read("index/root.json"))
    vi = asyncio.run(ix.update(fetch, state))
    assert vi.index["paths"] == collect_paths(reg)


def test_only_changed_narinfos_are_read_and_the_table_equals_a_rebuild(reg, monkeypatch) -> None:
    key = SecretKey.generate("idx-1")
    rng = random.Random(7)
    hs = [_hash_part(rng) for _ in range(12)]
    for h in hs:
        _narinfo(reg, h)
    _listing(reg, hs[0], {"provenance": "1" * 64})
    _settle()
    reads = _Reads(monkeypatch)
    publish_index(reg, key)
    assert len([k for k in reads.take() if k.endswith(".narinfo")]) == 12  # first: all
    _settle()
    assert publish_index(reg, key).index_version == 1
    assert reads.take() == set()  # nothing changed: nothing read
    # every kind of change, each read (and only those)
    new = _hash_part(rng)
    _narinfo(reg, new)  # a new path
    _narinfo(reg, hs[1], sig="b")  # a narinfo replaced (a signature merge)
    with open(reg.root / f"{hs[2]}.narinfo", "r+b") as f:  # edited in place, same size
        data = f.read()
        f.seek(0)
        f.write(data.replace(b"Sig: k:a", b"Sig: k:c"))
    (reg.root / f"{hs[3]}.narinfo").unlink()  # removed (registry verify --delete-bad)
    _listing(reg, hs[4], {"sbom": "2" * 64})  # an attestation added
    _listing(reg, hs[0], {"provenance": "3" * 64})  # and one replaced
    _settle()
    pub = publish_index(reg, key)
    assert pub.index_version == 2
    got = reads.take()
    changed = {new, hs[1], hs[2], hs[4], hs[0]}
    assert {k[:32] for k in got} == changed, got
    paths = _published(reg)["paths"]
    assert paths == collect_paths(reg)
    assert hs[3] not in paths and paths[hs[4]]["attestations"] == {"sbom": "2" * 64}
    assert paths[hs[0]]["attestations"] == {"provenance": "3" * 64}
    _check_signed(reg)
    # and a full read gives the same index: no new version
    assert publish_index(reg, key, full=True).index_version == 2
    assert len([k for k in reads.take() if k.endswith(".narinfo")]) == 12


def test_files_written_just_before_a_publish_are_read_again(reg, monkeypatch) -> None:
    """A stamp vouches only once its ctime is ``MARGIN_NS`` older than the file system's
    clock: a file changed in the same clock tick would keep its stamp."""
    monkeypatch.setattr(dirstamps, "MARGIN_NS", 10 * 1_000_000_000)
    key = SecretKey.generate("idx-1")
    rng = random.Random(8)
    hs = [_hash_part(rng) for _ in range(3)]
    for h in hs:
        _narinfo(reg, h)
    reads = _Reads(monkeypatch)
    publish_index(reg, key)
    assert len(reads.take()) >= 3
    publish_index(reg, key)  # not settled: read again, every time
    assert {k[:32] for k in reads.take() if k.endswith(".narinfo")} == set(hs)
    assert indexscan.collect(reg, None, None).paths == collect_paths(reg)


def test_a_record_for_another_index_or_a_misnamed_narinfo_means_reading_all(reg, monkeypatch) -> None:
    key = SecretKey.generate("idx-1")
    rng = random.Random(9)
    hs = [_hash_part(rng) for _ in range(4)]
    for h in hs:
        _narinfo(reg, h)
    _settle()
    publish_index(reg, key)
    reads = _Reads(monkeypatch)
    rec = json.loads(reg.read(indexscan.STAMPS_KEY))
    reg.put_bytes(indexscan.STAMPS_KEY, json.dumps({**rec, "index_sha256": "0" * 64}).encode())
    publish_index(reg, key)
    assert len([k for k in reads.take() if k.endswith(".narinfo")]) == 4
    # a file whose store path is not its name is indexed under the store path, as before
    other = _hash_part(rng)
    _narinfo(reg, other, name=f"{hs[0][:31]}x.narinfo")
    _settle()
    publish_index(reg, key)
    assert _published(reg)["paths"] == collect_paths(reg) and other in _published(reg)["paths"]


def test_the_index_envelope_is_sign_envelope_byte_for_byte() -> None:
    key = SecretKey.generate("idx-1")
    signed = {"_type": "index", "version": 3, "store_dir": "/k\u00efln/store", "paths": {"a" * 32: {"x": 1}}}
    assert indexbuild.envelope(signed, [key]) == ix.sign_envelope(signed, [key])


def _age(reg, v: int, seconds: float) -> None:
    t = time.time() - seconds
    for kind in ("index", "snapshot"):
        p = reg.root / f"index/{v}.{kind}.json"
        if p.exists():
            os.utime(p, (t, t))


def test_old_generations_are_pruned_keeping_what_readers_may_fetch(reg) -> None:
    key = SecretKey.generate("idx-1")
    rng = random.Random(10)
    for v in range(1, 6):
        _narinfo(reg, _hash_part(rng))
        assert publish_index(reg, key).index_version == v
    index_dir = reg.root / "index"
    # all within the window: a mirror that read timestamp v1 a moment ago still finds v1
    assert {f"{v}.index.json" for v in range(1, 6)} <= set(os.listdir(index_dir))
    # v1..v3 were replaced long ago; v4 is the previous one (kept whatever its age)
    for v in range(1, 6):
        _age(reg, v, indexprune.KEEP_SECONDS + 60)
    _narinfo(reg, _hash_part(rng))
    assert publish_index(reg, key).index_version == 6
    names = set(os.listdir(index_dir))
    assert not any(f"{v}.index.json" in names or f"{v}.snapshot.json" in names for v in range(1, 5))
    assert {"5.index.json", "5.snapshot.json", "6.index.json", "6.snapshot.json"} <= names
    assert {"1.root.json", "root.json", "timestamp.json", "snapshot.json"} <= names  # roots stay
    # a generation replaced recently stays even when it is not the previous one
    _narinfo(reg, _hash_part(rng))
    publish_index(reg, key)  # v7; v5 replaced by v6 long ago? no: v6 was written just now
    assert "5.index.json" in set(os.listdir(index_dir))
    _age(reg, 6, indexprune.KEEP_SECONDS + 1)
    publish_index(reg, key)  # timestamp only: still prunes
    assert "5.index.json" not in set(os.listdir(index_dir))
    _check_signed(reg)


def test_the_stamps_record_is_private_and_tied_to_the_index(reg) -> None:
    key = SecretKey.generate("idx-1")
    _narinfo(reg, "0" * 32)
    _settle()
    publish_index(reg, key)
    rec = json.loads(reg.read(indexscan.STAMPS_KEY))
    ts = load_signed(reg, "index/timestamp.json")
    data = reg.read(f"index/{ts['meta']['snapshot.json']['version']}.index.json")
    assert rec["index_sha256"] == hashlib.sha256(data).hexdigest()
    assert indexscan.STAMPS_KEY.startswith(".kiln/")
