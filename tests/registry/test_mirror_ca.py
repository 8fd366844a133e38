"""``kiln mirror sync`` judges each narinfo's unsigned ``CA:`` against its object as an
upload or an import does: a false claim the source serves is refused (the sync fails,
naming the path, and the mirror keeps its previous state), a true one is mirrored
byte for byte (``registry.mirror``, "Content addresses")."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import zstandard
from regkit import add_chain, add_tree, make_store

from kiln.registry import layout
from kiln.registry.client import open_client
from kiln.registry.mirror import MirrorError, sync
from kiln.registry.publish import publish_index
from kiln.registry.push import push
from kiln.registry.storage import open_storage
from kiln.store import narinfo as ni
from kiln.store.hashes import Hash
from kiln.store.nar import file_nar
from kiln.store.paths import make_fixed_output_path
from kiln.store.signing import sign_info


class Source:
    """A served registry directory the test writes narinfos into by hand (as a hostile
    source, or one that published before admission checked CAs, would hold them)."""

    def __init__(self, tmp: Path, keys, kiln_server) -> None:  # noqa: ANN001
        self.store = make_store(tmp / "store")
        self.text = add_chain(self.store, tmp, 1)[0]  # a text: path
        self.tree = add_tree(self.store, tmp, "tree", "a tree\n")  # a fixed:r:sha256: path
        self.reg, self.sk = tmp / "src", keys.sk
        push(
            self.store,
            [self.text, self.tree],
            lambda: open_client(f"file://{self.reg}", store_dir=self.store.store_dir),
            sign_key=keys.sk,
        )
        self.url = kiln_server("--dir", str(self.reg), "--trusted-key", str(keys.pk_file)).url

    def publish(self) -> None:
        publish_index(open_storage(self.reg), self.sk)

    def narinfo_file(self, path: str) -> Path:
        return self.reg / layout.narinfo_key(path.rsplit("/", 1)[1][:32])

    def plant(self, info: ni.NarInfo) -> None:
        self.narinfo_file(info.path).write_text(info.render())

    def stored(self, path: str, ca: str | None) -> ni.NarInfo:
        """A stored path's narinfo, genuinely signed, with ``ca``."""
        info = self.store.query(path)
        info = dataclasses.replace(info, sigs=(sign_info(info, self.sk),), ca=ca)
        return ni.NarInfo.from_pathinfo(info, layout.nar_key(info.file_hash), "zstd")

    def flat(self, contents: bytes, claimed: bytes | None = None) -> ni.NarInfo:
        """A flat fixed-output path holding ``contents``, its object written into the
        source, signed, claiming ``fixed:sha256:`` of ``claimed`` (default: the contents,
        a true claim) at the path that claim implies."""
        nar = file_nar(contents)
        zst = zstandard.ZstdCompressor().compress(nar)
        fh = Hash.sha256_of(zst)
        for key in (layout.nar_key(fh), layout.blob_key(fh)):
            (self.reg / key).parent.mkdir(parents=True, exist_ok=True)
            (self.reg / key).write_bytes(zst)
        h = Hash.sha256_of(contents if claimed is None else claimed)
        path = str(make_fixed_output_path("flat.txt", h, False, self.store.store_dir))
        info = ni.NarInfo(
            path, Hash.sha256_of(nar), len(nar), file_hash=fh, file_size=len(zst),
            ca=f"fixed:sha256:{h.nix32}", url=layout.nar_key(fh), compression="zstd",
        )  # fmt: skip
        return dataclasses.replace(info, sigs=(sign_info(info, self.sk),))


@pytest.fixture
def src(tmp_path: Path, keys, kiln_server) -> Source:
    return Source(tmp_path, keys, kiln_server)


def test_true_cas_are_mirrored_unchanged(src: Source, keys, tmp_path) -> None:
    """A text path, a recursive source path and a flat fixed-output path, each with its
    true CA: the mirror holds their narinfos byte for byte."""
    flat = src.flat(b"flat contents\n")
    src.plant(flat)
    src.publish()
    dst = tmp_path / "mirror"
    rep = sync(src.url, dst, root=(src.reg / "index/root.json").read_bytes(), trusted=[keys.pk])
    assert rep.narinfos_fetched == 3
    for p in (src.text, src.tree, flat.path):
        mirrored = (dst / src.narinfo_file(p).name).read_text()
        assert mirrored == src.narinfo_file(p).read_text() and "\nCA: " in mirrored, mirrored
    assert ni.parse((dst / src.narinfo_file(flat.path).name).read_text(), "/kiln/store").ca == flat.ca


def test_a_false_ca_is_refused_and_the_mirror_keeps_its_state(src: Source, keys, tmp_path) -> None:
    """Each false claim (another NAR's hash; ``text:`` on a tree; a flat hash of other
    bytes, at the path that hash implies; a flat claim on a tree) fails the sync naming
    the path and what the claim expects; the mirror's narinfos and index stay as they
    were. Once the source is honest again the sync goes through."""
    src.publish()
    dst = tmp_path / "mirror"
    sync(src.url, dst, root=(src.reg / "index/root.json").read_bytes(), trusted=[keys.pk])
    good_ts = (dst / "index/timestamp.json").read_bytes()
    tree_info = src.store.query(src.tree)
    other_nar = src.store.query(src.text).nar_hash.nix32
    lies = [
        (src.stored(src.tree, f"fixed:r:sha256:{other_nar}"), "expects the NAR's sha256 to be"),
        (src.stored(src.tree, f"text:sha256:{tree_info.nar_hash.nix32}"), "(not a plain file)"),
        (src.stored(src.tree, f"fixed:sha256:{tree_info.nar_hash.nix32}"), "(not a plain file)"),
        (src.flat(b"what it holds\n", claimed=b"what it claims\n"), "expects the file's sha256 to be"),
    ]
    for lie, expected in lies:
        before = (dst / src.narinfo_file(lie.path).name).read_bytes() if lie.path == src.tree else None
        src.plant(lie)
        src.publish()
        with pytest.raises(MirrorError) as e:
            sync(src.url, dst, trusted=[keys.pk])
        assert f"{lie.path}: refusing its CA: ca {lie.ca}" in str(e.value), str(e.value)
        assert expected in str(e.value), str(e.value)
        mirrored = dst / src.narinfo_file(lie.path).name
        assert (mirrored.read_bytes() if mirrored.exists() else None) == before  # not published
        assert (dst / "index/timestamp.json").read_bytes() == good_ts
        if lie.path != src.tree:
            src.narinfo_file(lie.path).unlink()
    src.plant(src.stored(src.tree, tree_info.ca))  # an honest push would write this
    src.publish()
    sync(src.url, dst, trusted=[keys.pk])  # (the narinfo it kept is this one: nothing to fetch)
    assert (dst / "index/timestamp.json").read_bytes() == (src.reg / "index/timestamp.json").read_bytes()
    assert (dst / src.narinfo_file(src.tree).name).read_text() == src.narinfo_file(src.tree).read_text()


def test_an_unsigned_mirror_judges_cas_too(src: Source, tmp_path) -> None:
    """Without ``--trusted-key`` a mirror copies unsigned narinfos, but not false CAs."""
    unsigned = dataclasses.replace(src.stored(src.tree, None), sigs=())
    other = src.store.query(src.text).nar_hash.nix32
    src.plant(dataclasses.replace(unsigned, ca=f"fixed:r:sha256:{other}"))
    src.publish()
    with pytest.raises(MirrorError, match="refusing its CA"):
        sync(src.url, tmp_path / "m", root=(src.reg / "index/root.json").read_bytes())
    assert not (tmp_path / "m" / src.narinfo_file(src.tree).name).exists()
