"""Fixtures: a real LocalStore holding a small built graph, registered the way the build
loop registers outputs (``.drv`` text paths + ``register_built``), without running builds.
The derivations are made as the evaluator makes them (output env vars blank until
``finalize``), so their output paths check out (``derivation.check_output_paths``): an
SBOM believes a deriver only then.

Graph::

    hello-2.12  (drv: pname/version/license GPL-3.0-or-later, inputs: zlib, src)
      runtime refs -> zlib-1.3.1 (drv: license Zlib)
      build inputs -> hello-2.12.tar.gz (fixed output, urls=...)
    zlib-1.3.1 build input -> zlib1g_1.2.13.dfsg-1_amd64.deb (fixed output, debian: URL);
      debian_packages = zlib1g (it holds that package's files)
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from kiln.store.derivation import Derivation, Output, drv_path, finalize
from kiln.store.localstore import LocalStore

sys.path.insert(0, str(Path(__file__).parents[1] / "store"))  # storekit: the store tests' helpers
from storekit import corrupt_file, corrupt_object  # noqa: E402

SRC_URL = "https://ftp.example.org/gnu/hello/hello-2.12.tar.gz"
DEB_URL = "debian:pool/main/z/zlib/zlib1g_1.2.13.dfsg-1_amd64.deb"
#: as kiln.lang.debpkgs writes it for the lock entry (with the epoch the pool name leaves out)
ZLIB1G_PURL = "pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-1?arch=amd64"


@dataclass
class Built:
    store: LocalStore
    hello: str
    zlib: str
    src: str
    hello_drv: str
    deb: str

    def quarantine_zlib(self) -> None:
        """Break zlib's object and tree both, so ``verify --repair`` can only quarantine
        it: hello stays valid with a hole in its closure."""
        corrupt_object(self.store, self.zlib)
        corrupt_file(self.store.real_path(self.zlib) / "libz.so")
        assert self.store.verify(repair=True).quarantined == (self.zlib,)
        assert not self.store.is_valid(self.zlib) and self.store.is_valid(self.hello)


def _register(store: LocalStore, drv: Derivation) -> str:
    dp = drv_path(drv)
    store.add_text(f"{drv.name}.drv", drv.serialize().encode(), [str(r) for r in drv.references()])
    return str(dp)


@pytest.fixture
def built(tmp_path: Path) -> Built:
    store = LocalStore.open(tmp_path / "store")
    drvs: dict[str, Derivation] = {}

    def resolve(p: str) -> Derivation:
        return drvs[p]

    memo: dict = {}
    tarball = b"pretend this is hello-2.12.tar.gz\n"
    src = finalize(
        Derivation.make(
            "hello-2.12.tar.gz",
            outputs={"out": Output("", "sha256", hashlib.sha256(tarball).hexdigest())},
            builder="builtin:fetchurl",
            env={"urls": SRC_URL, "name": "hello-2.12.tar.gz"},
        ),
        resolve,
        memo,
    )
    src_drv = _register(store, src)
    drvs[src_drv] = src
    debfile = b"!<arch>\npretend deb\n"
    deb = finalize(
        Derivation.make(
            "zlib1g_1.2.13.dfsg-1_amd64.deb",
            outputs={"out": Output("", "sha256", hashlib.sha256(debfile).hexdigest())},
            builder="builtin:fetchurl",
            # (the lock's version, epoch included, as kiln.lang writes a debian_rootfs fetch)
            env={"url": DEB_URL, "urls": DEB_URL, "version": "1:1.2.13.dfsg-1"},
        ),
        resolve,
        memo,
    )
    deb_drv = _register(store, deb)
    drvs[deb_drv] = deb
    zlib = finalize(
        Derivation.make(
            "zlib-1.3.1",
            outputs={"out": Output()},
            input_drvs={deb_drv: ["out"]},
            builder="/bin/sh",
            # (its library copied out of the .deb, as glibc-runtime copies libc6's)
            env={
                "pname": "zlib",
                "version": "1.3.1",
                "license": "Zlib",
                "debian_packages": ZLIB1G_PURL,
                "out": "",
            },
        ),
        resolve,
        memo,
    )
    zlib_drv = _register(store, zlib)
    drvs[zlib_drv] = zlib
    hello = finalize(
        Derivation.make(
            "hello-2.12",
            outputs={"out": Output()},
            input_drvs={src_drv: ["out"], zlib_drv: ["out"]},
            builder="/bin/sh",
            env={"pname": "hello", "version": "2.12", "license": "GPL-3.0-or-later", "out": ""},
        ),
        resolve,
        memo,
    )
    hello_drv = _register(store, hello)
    drvs[hello_drv] = hello

    work = tmp_path / "work"
    work.mkdir()
    (work / "src").write_bytes(tarball)
    store.register_built(src.output_path(), work / "src", [], src_drv)
    (work / "deb").write_bytes(debfile)
    store.register_built(deb.output_path(), work / "deb", [], deb_drv)
    (work / "zlib").mkdir()
    (work / "zlib" / "libz.so").write_bytes(b"\x7fELF zlib")
    store.register_built(zlib.output_path(), work / "zlib", [], zlib_drv)
    (work / "hello").mkdir()
    (work / "hello" / "hello").write_text(f"#!/bin/sh\n# links {zlib.output_path()}\necho hello\n")
    store.register_built(hello.output_path(), work / "hello", [zlib.output_path()], hello_drv)
    yield Built(
        store, hello.output_path(), zlib.output_path(), src.output_path(), hello_drv, deb.output_path()
    )
    store.close()
