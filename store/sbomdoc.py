"""CycloneDX 1.6 JSON and SPDX 2.3 JSON documents for an SBOM ``Graph`` (``sbom.py``).

Pure functions of a graph: no store access, no clock. Deterministic: same graph, same
bytes (the serial number is ``urn:uuid:`` + uuid5 of the subject path and closure kind;
the timestamp is ``SOURCE_DATE_EPOCH``, default 315532800, 1980-01-01). ``kiln.store.sbom``
re-exports everything public here, so callers import that one module.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .errors import FormatError
from .intoto import rfc3339
from .paths import StorePath

if TYPE_CHECKING:
    from .sbom import Graph, Node

DEFAULT_EPOCH = 315532800
SBOM_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://kiln.dev/sbom")
_SPDX_EXPR = re.compile(r"^\(?[A-Za-z0-9.+-]+\)?( (AND|OR|WITH) \(?[A-Za-z0-9.+-]+\)?)*\Z")
_SPDX_IDS_FILE = Path(__file__).with_name("spdx-license-ids.txt")


@functools.cache
def _spdx_ids() -> frozenset[str]:
    lines = _SPDX_IDS_FILE.read_text().splitlines()
    return frozenset(ln.strip() for ln in lines if ln.strip() and not ln.startswith("#"))


def is_spdx_expression(text: str) -> bool:
    """Whether a recipe's ``license`` is an SPDX license expression: the simple shape
    (``A``, ``A AND B``, ``A OR B``, ``A WITH exception``, ``A+``) made of identifiers on
    the SPDX License List (``spdx-license-ids.txt``). Anything else (``Proprietary``,
    ``BSD``, a sentence, and ``LicenseRef-`` ids, which a document would have to define)
    is a licence *name*: SPDX documents say NOASSERTION and keep it in
    ``licenseComments``, CycloneDX gives it as ``license.name``, since tools reject
    unknown identifiers. An exception after WITH must name an exception
    (SPDX's exception ids contain "exception", or ``Linux-syscall-note``)."""
    if not _SPDX_EXPR.match(text):
        return False
    after_with = False
    for tok in re.findall(r"[A-Za-z0-9.+-]+", text):
        if tok in ("AND", "OR"):
            continue
        if tok == "WITH":
            after_with = True
            continue
        if after_with:
            ok = "exception" in tok.lower() or tok == "Linux-syscall-note"
            after_with = False
        else:
            ok = tok.removesuffix("+") in _spdx_ids()
        if not ok:
            return False
    return True


def source_date_epoch() -> int:
    """``SOURCE_DATE_EPOCH`` from the environment, else 315532800; malformed is an error."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None or raw == "":
        return DEFAULT_EPOCH
    if not raw.isdigit() or int(raw) > MAX_EPOCH:
        raise FormatError(
            f"SOURCE_DATE_EPOCH must be an integer from 0 to {MAX_EPOCH} (9999-12-31), found {raw[:40]!r}"
        )
    return int(raw)


#: 9999-12-31T23:59:59Z, the last second an RFC 3339 time can carry
MAX_EPOCH = 253402300799


# ---------------------------------------------------------------------------- CycloneDX


def purl(n: Node) -> str:
    """The node's own purl (``pkg:deb/...`` for Debian packages) or
    ``pkg:generic/<name>@<version>?checksum=sha256:<nar hex>`` (percent-encoded)."""
    if n.purl:
        return n.purl
    s = f"pkg:generic/{quote(n.name, safe='')}"
    if n.version:
        s += f"@{quote(n.version, safe='')}"
    if n.nar_sha256:
        s += f"?checksum=sha256:{n.nar_sha256}"
    return s


def serial_number(g: Graph) -> str:
    """``urn:uuid:`` + uuid5 of the closure kind, the subject and a digest of what the
    graph says of every component: the same content, the same serial (reproducible), and
    another content another serial (it was the kind and subject alone: an SBOM made
    where the deriver is missing, with no versions or licences, shared the serial of the
    full one, and CycloneDX names a BOM by its serial and version)."""
    content = json.dumps(sorted(dataclasses.astuple(n) for n in g.nodes), separators=(",", ":"))
    digest = hashlib.sha256(content.encode()).hexdigest()
    return f"urn:uuid:{uuid.uuid5(SBOM_NAMESPACE, f'{g.kind}:{g.root}:{digest}')}"


def _cdx_component(n: Node, type_: str) -> dict[str, Any]:
    c: dict[str, Any] = {"type": type_, "bom-ref": n.path, "name": n.name}
    if n.version:
        c["version"] = n.version
    c["purl"] = purl(n)
    if n.nar_sha256:
        c["hashes"] = [{"alg": "SHA-256", "content": n.nar_sha256}]
    if n.license:
        is_expr = is_spdx_expression(n.license)
        c["licenses"] = [{"expression": n.license}] if is_expr else [{"license": {"name": n.license}}]
    refs = [{"type": "source-distribution", "url": u} for u in n.urls]
    if n.rev and n.urls:
        refs = [{"type": "vcs", "url": u, "comment": f"revision {n.rev}"} for u in n.urls]
    if refs:
        c["externalReferences"] = refs
    props = [{"name": "kiln:store-path", "value": n.path}]
    if n.deriver:
        props.append({"name": "kiln:deriver", "value": n.deriver})
    c["properties"] = props
    if n.contains:  # what a scanner matching pkg:deb purls must see (libc6 in glibc-runtime)
        c["components"] = [
            {
                "type": "library",
                "bom-ref": f"{n.path}#{purl_}",
                "name": name,
                "version": version,
                "purl": purl_,
            }
            for name, version, purl_ in n.contains
        ]
    return c


def cyclonedx(
    g: Graph, *, root_type: str = "application", tool_version: str = "0", epoch: int | None = None
) -> dict:
    """A CycloneDX 1.6 BOM for ``g``; the root is ``metadata.component``."""
    epoch = source_date_epoch() if epoch is None else epoch
    root = g.node(g.root)
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": serial_number(g),
        "version": 1,
        "metadata": {
            "timestamp": rfc3339(epoch),
            "tools": {"components": [{"type": "application", "name": "kiln", "version": tool_version}]},
            "component": _cdx_component(root, root_type),
            "properties": [{"name": "kiln:closure", "value": g.kind}],
        },
        "components": [_cdx_component(n, "library") for n in g.nodes if n.path != g.root],
        "dependencies": [{"ref": n.path, "dependsOn": list(n.deps)} for n in g.nodes],
    }


# ---------------------------------------------------------------------------- SPDX


def _spdx_id(path: str) -> str:
    sp = StorePath.parse(path)
    return "SPDXRef-" + re.sub(r"[^A-Za-z0-9.-]", "-", f"{sp.hash_part}-{sp.name}")


_SPDX_URL = re.compile(r"^(https?|ftp|sftp)://[^\s]+\Z")


def _download_location(n: Node) -> str:
    """The first URL SPDX accepts as a download location (``debian:`` pool paths are
    kiln's own scheme and are not), as ``git+<url>@<rev>`` for git sources."""
    for u in n.urls:
        if _SPDX_URL.match(u):
            return f"git+{u}@{n.rev}" if n.rev else u
    return "NOASSERTION"


def _spdx_package(n: Node) -> dict[str, Any]:
    p: dict[str, Any] = {
        "name": n.name,
        "SPDXID": _spdx_id(n.path),
        "downloadLocation": _download_location(n),
        "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": n.license if n.license and is_spdx_expression(n.license) else "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "externalRefs": [
            {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl(n)}
        ],
        "comment": f"kiln store path {n.path}",
    }
    if n.version:
        p["versionInfo"] = n.version
    if n.nar_sha256:
        p["checksums"] = [{"algorithm": "SHA256", "checksumValue": n.nar_sha256}]
    if n.urls:
        p["sourceInfo"] = "fetched from " + " ".join(n.urls)
    if n.license and p["licenseDeclared"] == "NOASSERTION":
        p["licenseComments"] = f"declared by the recipe as: {n.license}"
    return p


def _spdx_contained(n: Node, name: str, version: str, purl_: str) -> dict[str, Any]:
    """The SPDX package of a Debian package whose files store path ``n`` holds."""
    return {
        "name": name,
        "SPDXID": re.sub(r"[^A-Za-z0-9.-]", "-", f"{_spdx_id(n.path)}-deb-{name}"),
        "versionInfo": version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "externalRefs": [
            {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl_}
        ],
        "comment": f"Debian package whose files kiln store path {n.path} holds",
    }


def spdx(g: Graph, *, tool_version: str = "0", epoch: int | None = None) -> dict:
    """An SPDX 2.3 document for ``g``; the root package is what the document DESCRIBES."""
    epoch = source_date_epoch() if epoch is None else epoch
    base = StorePath.parse(g.root).base
    rels = [
        {
            "spdxElementId": "SPDXRef-DOCUMENT",
            "relationshipType": "DESCRIBES",
            "relatedSpdxElement": _spdx_id(g.root),
        }
    ]
    contained: list[dict[str, Any]] = []
    for n in g.nodes:
        rels += [
            {
                "spdxElementId": _spdx_id(n.path),
                "relationshipType": "DEPENDS_ON",
                "relatedSpdxElement": _spdx_id(d),
            }
            for d in n.deps
        ]
        for name, version, purl_ in n.contains:
            contained.append(_spdx_contained(n, name, version, purl_))
            rels.append(
                {
                    "spdxElementId": _spdx_id(n.path),
                    "relationshipType": "CONTAINS",
                    "relatedSpdxElement": contained[-1]["SPDXID"],
                }
            )
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": base,
        "documentNamespace": f"https://kiln.dev/spdx/{base}-{serial_number(g).removeprefix('urn:uuid:')}",
        "creationInfo": {"created": rfc3339(epoch), "creators": [f"Tool: kiln-{tool_version}"]},
        "packages": [_spdx_package(n) for n in g.nodes] + contained,
        "relationships": rels,
    }


def document(g: Graph, fmt: str = "cyclonedx", **kw: Any) -> dict:
    """``cyclonedx`` or ``spdx`` by name."""
    if fmt == "cyclonedx":
        return cyclonedx(g, **kw)
    if fmt == "spdx":
        kw.pop("root_type", None)
        return spdx(g, **kw)
    raise FormatError(f"unknown SBOM format {fmt!r} (expected cyclonedx or spdx)")
