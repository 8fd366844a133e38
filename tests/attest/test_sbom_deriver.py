"""An SBOM (and a provenance's resolved dependencies) takes what it says about a path
from the path's recorded deriver only when that deriver genuinely defines the path: a
``Deriver`` is unsigned, so an imported path naming zlib's ``.drv`` (or a ``.drv``
forged to claim it) must not be described as zlib."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.store import attestations, sbom
from kiln.store.derivation import Derivation, Output, drv_path, finalize
from kiln.store.errors import StoreError
from kiln.store.paths import StorePath


def _evil(built, tmp_path: Path, deriver: str, name: str = "evil-1.0", h: str = "3") -> str:
    """A path imported (registered) with ``deriver`` as its recorded deriver."""
    path = f"{built.store.store_dir}/{h * 32}-{name}"
    tree = tmp_path / f"evil-{h}-{name}"
    tree.mkdir()
    (tree / "payload").write_text("not zlib\n")
    built.store.register_built(path, tree, [], deriver)
    return path


def _add_drv(built, drv: Derivation) -> str:
    built.store.add_text(f"{drv.name}.drv", drv.serialize().encode(), [str(r) for r in drv.references()])
    return str(drv_path(drv))


def _forged_zlib_drv(built, claims: str) -> str:
    """A ``.drv`` saying it is zlib and declaring ``claims`` as its output (which its
    contents do not give)."""
    return _add_drv(
        built,
        Derivation.make(
            "zlib-1.3.1",
            outputs={"out": Output(claims)},
            builder="/bin/sh",
            env={"pname": "zlib", "version": "1.3.1", "license": "Zlib", "out": claims},
        ),
    )


def _component(doc: dict, path: str) -> dict:
    comps = [doc["metadata"]["component"], *doc["components"]]
    (c,) = [c for c in comps if c["bom-ref"] == path]
    return c


def _described_by_its_name(built, path: str) -> None:
    g = sbom.collect(built.store, path)
    n = g.node(path)
    assert (n.name, n.version, n.license, n.deriver, n.urls) == ("evil", "1.0", None, None, ())
    c = _component(sbom.cyclonedx(g, epoch=0), path)
    assert (c["name"], c["version"]) == ("evil", "1.0")
    assert "licenses" not in c
    assert not any(p["name"] == "kiln:deriver" for p in c.get("properties", []))
    with pytest.raises(
        StoreError, match="recorded deriver .* is not a derivation in the store that defines it"
    ):
        sbom.collect(built.store, path, build=True)


def test_an_imported_path_naming_zlibs_derivation_is_not_zlib(built, tmp_path: Path) -> None:
    zlib_drv = built.store.query(built.zlib).deriver
    evil = _evil(built, tmp_path, zlib_drv)
    _described_by_its_name(built, evil)
    # the genuine zlib is still described by its derivation
    z = sbom.collect(built.store, built.zlib).node(built.zlib)
    assert (z.name, z.version, z.license, z.deriver) == ("zlib", "1.3.1", "Zlib", zlib_drv)


def test_a_derivation_forged_to_claim_the_path_is_not_believed(built, tmp_path: Path) -> None:
    path = f"{built.store.store_dir}/{'3' * 32}-evil-1.0"
    evil = _evil(built, tmp_path, _forged_zlib_drv(built, path))
    assert evil == path
    _described_by_its_name(built, evil)


def test_a_deriver_that_is_not_in_the_store_or_not_a_derivation(built, tmp_path: Path) -> None:
    evil = _evil(built, tmp_path, f"{built.store.store_dir}/{'4' * 32}-zlib-1.3.1.drv")
    _described_by_its_name(built, evil)
    junk = built.store.add_text("zlib-1.3.1.drv", b"Derive(not really", []).path
    _described_by_its_name(built, _evil(built, tmp_path, junk, h="5"))
    # a valid path that is not a derivation at all
    _described_by_its_name(built, _evil(built, tmp_path, built.zlib, h="6"))


def test_provenance_takes_no_source_url_from_a_borrowed_deriver(built, tmp_path: Path) -> None:
    """``resolvedDependencies``: a fixed-output path lists the URL it was fetched from; an
    imported path naming the hello tarball's ``.drv`` must not get its URL."""
    src_drv = built.store.query(built.src).deriver
    evil = _evil(built, tmp_path, src_drv, "hello-2.12.tar.gz")
    user = finalize(
        Derivation.make(
            "uses-evil",
            outputs={"out": Output()},
            input_drvs={src_drv: ["out"]},
            input_srcs=[evil],
            builder="/bin/sh",
            env={"out": ""},
        ),
        lambda p: {src_drv: sbom._Reader(built.store).drv(src_drv)}[p],
        {},
    )
    deps = {d["name"]: d for d in attestations.build_dependencies(built.store, _add_drv(built, user))}
    assert "url" not in deps[StorePath.parse(evil).base]
    assert (
        deps[StorePath.parse(built.src).base]["url"] == "https://ftp.example.org/gnu/hello/hello-2.12.tar.gz"
    )


def test_kiln_rebuild_refuses_a_borrowed_deriver(built, tmp_path: Path) -> None:
    """``kiln rebuild`` of the imported path would rebuild zlib and report zlib's verdict."""
    from clikit import kiln

    evil = _evil(built, tmp_path, built.store.query(built.zlib).deriver)
    r = kiln("rebuild", evil, "--store", str(built.store.root))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "does not define it" in r.stderr and "rebuilding" not in r.stderr
