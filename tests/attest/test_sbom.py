"""SBOMs from a real store: content, determinism, and validation by the reference tools
(cyclonedx-python-lib's strict JSON schema validator, spdx-tools' full validation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.store import sbom
from kiln.store.errors import FormatError


def _cdx_errors(doc: dict) -> list[str]:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    errs = JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(doc), all_errors=True)
    return [f"{list(e.data.absolute_path)}: {e.data.message}" for e in (errs or [])]


def _spdx_errors(doc: dict, tmp_path: Path) -> list[str]:
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    f = tmp_path / "doc.spdx.json"
    f.write_text(json.dumps(doc))
    return [m.validation_message for m in validate_full_spdx_document(parse_file(str(f)))]


def _refs_resolve(doc: dict) -> None:
    refs = {doc["metadata"]["component"]["bom-ref"]} | {c["bom-ref"] for c in doc["components"]}
    for d in doc["dependencies"]:
        assert d["ref"] in refs
        assert set(d["dependsOn"]) <= refs


def test_runtime_cyclonedx(built) -> None:
    g = sbom.collect(built.store, built.hello)
    assert [n.path for n in g.nodes] == sorted([built.hello, built.zlib])
    doc = sbom.cyclonedx(g, epoch=315532800)
    assert _cdx_errors(doc) == []
    _refs_resolve(doc)
    root = doc["metadata"]["component"]
    assert (root["name"], root["version"]) == ("hello", "2.12")
    assert root["hashes"][0]["content"] == built.store.query(built.hello).nar_hash.hex
    assert root["licenses"] == [{"expression": "GPL-3.0-or-later"}]
    # The source URL comes from the fixed-output input derivation.
    assert {
        "type": "source-distribution",
        "url": "https://ftp.example.org/gnu/hello/hello-2.12.tar.gz",
    } in root["externalReferences"]
    assert root["purl"].startswith("pkg:generic/hello@2.12?checksum=sha256:")
    deps = {d["ref"]: d["dependsOn"] for d in doc["dependencies"]}
    assert deps[built.hello] == [built.zlib]
    assert doc["metadata"]["timestamp"] == "1980-01-01T00:00:00Z"
    assert doc["serialNumber"].startswith("urn:uuid:")
    # zlib's derivation names the Debian package it holds files of: a scanner matching
    # pkg:deb purls finds it in the runtime SBOM, not only in the build one
    (zlib,) = [c for c in doc["components"] if c["bom-ref"] == built.zlib]
    assert zlib["components"] == [
        {
            "type": "library",
            "bom-ref": f"{built.zlib}#pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-1?arch=amd64",
            "name": "zlib1g",
            "version": "1:1.2.13.dfsg-1",
            "purl": "pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-1?arch=amd64",
        }
    ]
    assert "components" not in root


def test_deterministic(built, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = json.dumps(sbom.cyclonedx(sbom.collect(built.store, built.hello)), sort_keys=True)
    b = json.dumps(sbom.cyclonedx(sbom.collect(built.store, built.hello)), sort_keys=True)
    assert a == b
    assert '"timestamp": "2023-11-14T22:13:20Z"' in a
    for bad in ("yesterday", "253402300800"):  # (the second: year 10000, which crashed)
        monkeypatch.setenv("SOURCE_DATE_EPOCH", bad)
        with pytest.raises(FormatError, match="SOURCE_DATE_EPOCH"):
            sbom.cyclonedx(sbom.collect(built.store, built.hello))


def test_build_closure(built, tmp_path: Path) -> None:
    g = sbom.collect(built.store, built.hello, build=True)
    paths = {n.path for n in g.nodes}
    assert {built.hello, built.zlib, built.src} <= paths
    assert set(g.node(built.hello).deps) == {built.zlib, built.src}
    assert g.node(built.src).urls == ("https://ftp.example.org/gnu/hello/hello-2.12.tar.gz",)
    deb = g.node(built.deb)
    # the epoch the pool file name drops, from the fetch's derivation: the same version
    # and purl as the component nested in zlib's (before: 1.2.13.dfsg-1, another version)
    assert (deb.name, deb.version) == ("zlib1g", "1:1.2.13.dfsg-1")
    assert sbom.purl(deb) == "pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-1?arch=amd64"
    assert g.node(built.zlib).deps == (built.deb,)
    doc = sbom.cyclonedx(g)
    assert _cdx_errors(doc) == []
    _refs_resolve(doc)
    assert _spdx_errors(sbom.spdx(g), tmp_path) == []
    assert sbom.serial_number(g) != sbom.serial_number(sbom.collect(built.store, built.hello))


def test_the_serial_number_follows_the_content(built) -> None:
    """Same content, same serial (reproducible); other content (here: the deriver's facts
    missing, as on a machine without the .drv) another serial: it was the subject's alone."""
    import dataclasses

    g = sbom.collect(built.store, built.hello)
    assert sbom.serial_number(g) == sbom.serial_number(sbom.collect(built.store, built.hello))
    bare = dataclasses.replace(
        g, nodes=tuple(dataclasses.replace(n, license=None, deriver=None) for n in g.nodes)
    )
    assert sbom.serial_number(bare) != sbom.serial_number(g)


def test_spdx(built, tmp_path: Path) -> None:
    doc = sbom.spdx(sbom.collect(built.store, built.hello), tool_version="0.1.0")
    assert _spdx_errors(doc, tmp_path) == []
    pkgs = {p["name"]: p for p in doc["packages"]}
    assert pkgs["zlib"]["licenseDeclared"] == "Zlib"
    assert pkgs["hello"]["downloadLocation"] == "https://ftp.example.org/gnu/hello/hello-2.12.tar.gz"
    assert any(r["relationshipType"] == "DESCRIBES" for r in doc["relationships"])
    deb = pkgs["zlib1g"]
    assert deb["versionInfo"] == "1:1.2.13.dfsg-1"
    assert deb["externalRefs"][0]["referenceLocator"] == "pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-1?arch=amd64"
    assert {
        "spdxElementId": pkgs["zlib"]["SPDXID"],
        "relationshipType": "CONTAINS",
        "relatedSpdxElement": deb["SPDXID"],
    } in doc["relationships"]


def test_validators_catch_breakage(built, tmp_path: Path) -> None:
    """The validators used above do reject bad documents (guards against a vacuous test)."""
    doc = sbom.cyclonedx(sbom.collect(built.store, built.hello))
    doc["components"][0]["hashes"] = [{"alg": "sha256", "content": "xyz"}]
    assert _cdx_errors(doc)
    sdoc = sbom.spdx(sbom.collect(built.store, built.hello))
    sdoc["packages"][0]["checksums"] = [{"algorithm": "SHA256", "checksumValue": "XYZ"}]
    assert _spdx_errors(sdoc, tmp_path)


def test_deb_package() -> None:
    assert sbom.deb_package("debian:pool/main/g/gcc-12/gcc-12_12.2.0-14_amd64.deb") == (
        "gcc-12",
        "12.2.0-14",
        "pkg:deb/debian/gcc-12@12.2.0-14?arch=amd64",
    )
    assert sbom.deb_package("https://example.org/x_1_amd64.deb") is None
    assert sbom.deb_package("debian:pool/main/x/x.deb") is None


def test_deb_package_takes_the_epoch_the_pool_file_name_drops() -> None:
    """gcc is 4:12.2.0-3 in the lock and Debian's index; its pool file gcc_12.2.0-3_amd64.deb.
    The SBOM listed 12.2.0-3 (another version, for a scanner matching purls)."""
    url = "debian:pool/main/g/gcc-defaults/gcc_12.2.0-3_amd64.deb"
    assert sbom.deb_package(url, "4:12.2.0-3") == (
        "gcc",
        "4:12.2.0-3",
        "pkg:deb/debian/gcc@4%3A12.2.0-3?arch=amd64",
    )
    # a version that is not the file name's (with or without an epoch) is not taken
    assert sbom.deb_package(url, "4:12.2.0-4")[1] == "12.2.0-3"
    assert sbom.deb_package(url, "12.2.0-3")[1] == "12.2.0-3"
    assert sbom.deb_package("debian:pool/main/x/x_1%3a2.0_all.deb", "3:2.0")[1] == "1:2.0"


def test_deb_purl() -> None:
    assert sbom.deb_purl("pkg:deb/debian/libstdc%2B%2B6@12.2.0-14%2Bdeb12u1?arch=amd64") == (
        "libstdc++6",
        "12.2.0-14+deb12u1",
        "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14%2Bdeb12u1?arch=amd64",
    )
    for junk in (
        "debian:pool/main/z/zlib/zlib1g_1.2.13_amd64.deb",
        "pkg:deb/ubuntu/x@1?arch=amd64",
        "pkg:deb/debian/x@1",
        "pkg:deb/debian/x@1?arch=amd64&distro=x",
        "pkg:deb/debian/@1?arch=amd64",
    ):
        assert sbom.deb_purl(junk) is None, junk


def test_split_name() -> None:
    assert sbom.split_name("hello-2.12") == ("hello", "2.12")
    assert sbom.split_name("gcc-wrapper-13.2.0") == ("gcc-wrapper", "13.2.0")
    assert sbom.split_name("busybox") == ("busybox", "")
    assert sbom.split_name("hello-2.12.drv") == ("hello", "2.12")


def test_git_source_and_free_text_licence(tmp_path: Path) -> None:
    root = "/kiln/store/" + "1" * 32 + "-fw-image-1.0"
    src = "/kiln/store/" + "2" * 32 + "-source"
    nodes = {
        root: sbom.Node(root, "fw-image", "1.0", "a" * 64, deps=(src,), license="Proprietary, see LICENSE"),
        src: sbom.Node(src, "source", "", "b" * 64, urls=("https://git.example.org/fw.git",), rev="c" * 40),
    }
    g = sbom.graph_from_mapping(root, "build", nodes)
    doc = sbom.cyclonedx(g, root_type="firmware", epoch=0)
    assert _cdx_errors(doc) == []
    assert doc["metadata"]["component"]["type"] == "firmware"
    assert doc["metadata"]["component"]["licenses"] == [{"license": {"name": "Proprietary, see LICENSE"}}]
    assert doc["components"][0]["externalReferences"][0]["type"] == "vcs"
    sdoc = sbom.spdx(g, epoch=0)
    assert _spdx_errors(sdoc, tmp_path) == []
    pk = {p["name"]: p for p in sdoc["packages"]}
    assert pk["source"]["downloadLocation"] == f"git+https://git.example.org/fw.git@{'c' * 40}"
    assert pk["fw-image"]["licenseDeclared"] == "NOASSERTION"
    with pytest.raises(FormatError, match="not in the graph"):
        sbom.graph_from_mapping(root, "build", {root: nodes[root]})


LICENCES = [
    "MIT",
    "Apache-2.0 OR MIT",
    "(MIT AND Zlib)",
    "GPL-2.0+",
    "GPL-2.0-or-later WITH Classpath-exception-2.0",
    "GPL-2.0-only WITH Linux-syscall-note",
    "Proprietary",
    "BSD",
    "LicenseRef-acme",
    "GPL-2.0-only WITH Proprietary",
    "mit license",
]


@pytest.mark.parametrize("text", LICENCES)
def test_spdx_expressions_are_what_spdx_tools_accept(text: str) -> None:
    """Differential against spdx-tools' licence parser: ``Proprietary`` or ``BSD`` were
    written as SPDX expressions, which SPDX tools reject."""
    from spdx_tools.common.spdx_licensing import spdx_licensing

    from kiln.store.sbomdoc import is_spdx_expression

    ours = is_spdx_expression(text)
    assert ours == (text in LICENCES[:6])  # the first six are SPDX expressions
    if ours:
        assert not spdx_licensing.validate(text).errors, text  # never one they reject
