"""``builtin:unpack-debs`` reads only its own inputs (audit finding 1) and checks each
``.deb`` against the pool file name it was fetched by (finding 5), through the real build
loop: a real local store, the ``.deb``s fetched by ``builtin:fetchurl`` from a hashed
mirror directory in the same build, hand-made derivations (as an attacker would write
them). Builtins run in kiln's process, so no sandbox is needed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kiln.store.build import Builder, BuildOptions
from kiln.store.derivation import Derivation, Output, drv_path, finalize
from kiln.store.errors import KilnError, StoreError
from kiln.store.localstore import LocalStore

from .debs import Entry, make_deb


class World:
    """A store, a hashed source mirror and the derivations written so far."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.store = LocalStore.open(tmp / "home")
        self.mirror = tmp / "mirror"
        (self.mirror / "sha256").mkdir(parents=True)
        self.drvs: dict[str, Derivation] = {}
        self.said: list[str] = []

    def add(self, d: Derivation) -> str:
        d = finalize(d, self.drvs.__getitem__, {})
        p = str(drv_path(d))
        self.store.add_text(f"{d.name}.drv", d.serialize().encode(), [str(r) for r in d.references()])
        self.drvs[p] = d
        return p

    def fetch(self, deb: Path, filename: str, version: str | None = None) -> str:
        """A lock entry's fetch, as ``debian_rootfs`` writes it (``version``: the entry's,
        which it writes since the SBOM needs the epoch; None: as before); ``deb`` goes to
        the mirror."""
        data = deb.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        (self.mirror / "sha256" / digest).write_bytes(data)
        url = f"debian:{filename}"
        name = filename.rsplit("/", 1)[-1]
        return self.add(
            Derivation.make(
                name,
                outputs={"out": Output("", "sha256", digest)},
                builder="builtin:fetchurl",
                env={"url": url, "urls": url, "size": str(len(data)), "name": name, "out": ""}
                | ({"version": version} if version is not None else {}),
                store_dir=self.store.store_dir,
            )
        )

    def out(self, drv: str) -> str:
        return self.drvs[drv].output_path("out")

    def unpack(self, debs: list[str], input_drvs: list[str] = (), input_srcs: list[str] = ()) -> str:
        return self.add(
            Derivation.make(
                "toolchain",
                outputs={"out": Output()},
                input_drvs={p: ["out"] for p in input_drvs},
                input_srcs=list(input_srcs),
                builder="builtin:unpack-debs",
                env={"debs": " ".join(debs), "kilnRootfs": "1", "name": "toolchain", "out": ""},
                store_dir=self.store.store_dir,
            )
        )

    def build(self, drv: str) -> Path:
        opts = BuildOptions(mirrors=(str(self.mirror),), progress=False)
        Builder(self.store, None, opts, say=self.said.append).realise([drv])
        return self.store.real_path(self.out(drv))


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    yield w
    w.store.close()


def good_deb(tmp: Path, name: str = "tool") -> Path:
    entries = [
        Entry("./usr/", "d"),
        Entry("./usr/bin/", "d"),
        Entry(f"./usr/bin/{name}", data=b"#!/bin/sh\n"),
    ]
    return make_deb(tmp / f"{name}.deb", entries, name=name, version="1.0-1")


def refused(world: World, drv: str, *says: str) -> str:
    with pytest.raises(KilnError) as e:
        world.build(drv)
    msg = str(e.value)
    assert all(s in msg for s in says), msg
    assert not world.store.is_valid(world.out(drv))
    return msg


def test_fetched_and_unpacked_in_one_build(world, tmp_path):
    # the fetch is placed but not yet committed when the unpack starts: it counts as valid
    deb = make_deb(
        tmp_path / "t.deb",
        [
            Entry("./usr/", "d"),
            Entry("./usr/bin/", "d"),
            Entry("./usr/bin/tool", data=b"x"),
            Entry("./dev/null", "c"),
        ],
        name="tool",
        version="2:1.0-1",  # the pool file name has no epoch: the version is compared without it
    )
    fetch = world.fetch(deb, "pool/main/t/tool/tool_1.0-1_amd64.deb")
    tree = world.build(world.unpack([world.out(fetch)], [fetch]))
    assert (tree / "usr" / "bin" / "tool").read_bytes() == b"x"
    # finding 6: the note about the skipped device reaches the person building
    assert any(m.startswith("toolchain: ") and "skipped device/fifo dev/null" in m for m in world.said), (
        world.said
    )


@pytest.mark.parametrize("suffix", ["/../../../../{host}", "/usr/bin/tool"])
def test_a_path_below_or_beside_an_input_is_refused(world, tmp_path, suffix):
    # the audit's repro: a valid input's path followed by '..' reached a host file, which
    # was then unpacked into a signed store path
    host = make_deb(tmp_path / "host.deb", [Entry("./unpinned-host-file", data=b"host\n")], name="host")
    fetch = world.fetch(good_deb(tmp_path), "pool/main/t/tool/tool_1.0-1_amd64.deb")
    entry = world.out(fetch) + suffix.format(host=host)
    refused(
        world,
        world.unpack([entry], [fetch]),
        f"builtin:unpack-debs toolchain: 'debs' entry {entry!r}: expected a store path /kiln/store/<hash>-<name>",
        "nothing after the name and no '..'",
    )


def test_a_valid_store_path_that_is_not_an_input_is_refused(world, tmp_path):
    stray = world.store.add_path(good_deb(tmp_path, "stray"), "stray_1.0-1_amd64.deb").path
    fetch = world.fetch(good_deb(tmp_path), "pool/main/t/tool/tool_1.0-1_amd64.deb")
    refused(
        world,
        world.unpack([world.out(fetch), stray], [fetch]),
        f"'debs' entry {stray!r}: expected an input of the derivation",
    )


def test_the_output_of_a_non_fixed_input_derivation_is_refused(world, tmp_path):
    fetch = world.fetch(good_deb(tmp_path), "pool/main/t/tool/tool_1.0-1_amd64.deb")
    first = world.unpack([world.out(fetch)], [fetch])
    world.build(first)
    second = world.unpack([world.out(first)], [first])  # input-addressed: not pinned by a hash
    refused(world, second, f"'debs' entry {world.out(first)!r}: expected an input of the derivation")


def test_an_input_source_is_unpacked(world, tmp_path):
    src = world.store.add_path(good_deb(tmp_path), "tool.deb").path
    tree = world.build(world.unpack([src], input_srcs=[src]))
    assert (tree / "usr" / "bin" / "tool").is_file()


def test_an_input_that_is_not_valid_is_refused(world, tmp_path):
    from kiln.store.debinputs import deb_inputs

    fetch = world.fetch(good_deb(tmp_path), "pool/main/t/tool/tool_1.0-1_amd64.deb")
    unpack = world.drvs[world.unpack([world.out(fetch)], [fetch])]
    with pytest.raises(StoreError, match="expected a valid store path; it is not valid in the store"):
        deb_inputs(world.store, unpack, world.drvs.__getitem__)


def test_a_deb_that_is_not_what_its_pool_name_says_is_refused(world, tmp_path):
    evil = make_deb(tmp_path / "e.deb", [Entry("./usr/bin/bash", data=b"evil")], name="evil", version="6.6")
    fetch = world.fetch(evil, "pool/main/b/bash/bash_5.2.15-2+b13_amd64.deb")
    refused(
        world,
        world.unpack([world.out(fetch)], [fetch]),
        "not the package its file name 'bash_5.2.15-2+b13_amd64.deb' pins: expected Package 'bash', "
        "found 'evil'; expected Version '5.2.15-2+b13' (any epoch), found '6.6'",
    )


def test_a_fetch_url_that_names_no_package_is_refused(world, tmp_path):
    fetch = world.fetch(good_deb(tmp_path), "pool/main/t/tool/tool.deb")
    refused(
        world,
        world.unpack([world.out(fetch)], [fetch]),
        "its fetch URL 'debian:pool/main/t/tool/tool.deb': expected a .deb file name "
        "<package>_<version>_<arch>.deb, found 'tool.deb'",
    )


def _epoch_deb(tmp_path: Path, data: bytes = b"x") -> Path:
    """tool 2:1.0-1 (``data``: another .deb, so another fetch and toolchain output)."""
    entries = [Entry("./usr/", "d"), Entry("./usr/x", data=data)]
    return make_deb(tmp_path / "t.deb", entries, name="tool", version="2:1.0-1")


def test_the_lock_s_epoch_in_the_fetch_is_checked_against_the_package(world, tmp_path):
    """The pool file name drops the epoch; the fetch's ``version`` (the lock's) has it, so
    the control file's epoch is checked too (it was "any epoch")."""
    ok = world.fetch(_epoch_deb(tmp_path), "pool/main/t/tool/tool_1.0-1_amd64.deb", "2:1.0-1")
    assert (world.build(world.unpack([world.out(ok)], [ok])) / "usr").is_dir()
    other = world.fetch(_epoch_deb(tmp_path, b"y"), "pool/main/t/tool/tool_1.0-1_amd64.deb", "3:1.0-1")
    refused(
        world,
        world.unpack([world.out(other)], [other]),
        "pins: expected Version '3:1.0-1', found '2:1.0-1'",
    )


def test_a_fetch_version_that_is_not_its_file_name_s_is_refused(world, tmp_path):
    fetch = world.fetch(_epoch_deb(tmp_path), "pool/main/t/tool/tool_1.0-1_amd64.deb", "2:1.0-2")
    refused(
        world,
        world.unpack([world.out(fetch)], [fetch]),
        "its version '2:1.0-2' is not the version of its pool file name ('1.0-1', with an epoch or without)",
    )
