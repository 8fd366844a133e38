"""SBOMs for store paths: CycloneDX 1.6 JSON and SPDX 2.3 JSON.

Theory of operation
-------------------
``collect`` turns a store path into a ``Graph``: one ``Node`` per store path with its
NAR sha256, its dependency edges, and what the path's derivation says about it
(``pname``/``version``, source ``url``/``urls`` and ``rev``, ``license``). Two closures:

- *runtime*: the reference closure of the path (what a deployment carries);
- *build*: everything the path was built from, walked through the deriver ``.drv``'s
  input derivations and input sources. Output paths that are not valid locally (never
  built here, or garbage-collected) still appear, without a hash.

Source URLs of a package are its own ``url``/``urls`` plus those of its fixed-output
input derivations (the fetched tarballs), so a package lists where its source came from.
``cyclonedx`` and ``spdx`` are pure functions of a ``Graph``.

Invariants
----------
- Deterministic: same graph, same bytes. Components and edges are sorted; the serial
  number is ``urn:uuid:`` + uuid5 of the subject path and closure kind; the timestamp is
  ``SOURCE_DATE_EPOCH`` (default 315532800, 1980-01-01) — never the wall clock.
- Every hash is the SHA-256 of the path's uncompressed NAR, as recorded in the store.
- Every dependency ref resolves to a component in the same document.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from .derivation import Derivation
from .derivation import parse as parse_drv
from .errors import FormatError, StoreError
from .intoto import rfc3339
from .paths import StorePath

DEFAULT_EPOCH = 315532800
SBOM_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://kiln.dev/sbom")
_SPDX_EXPR = re.compile(r"^\(?[A-Za-z0-9.+-]+\)?( (AND|OR|WITH) \(?[A-Za-z0-9.+-]+\)?)*$")


@dataclass(frozen=True, slots=True)
class Node:
    """One store path in an SBOM. ``deps`` are full store paths of its direct deps."""

    path: str
    name: str
    version: str
    nar_sha256: str | None
    deps: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    license: str | None = None
    deriver: str | None = None
    rev: str | None = None
    purl: str | None = None


@dataclass(frozen=True, slots=True)
class Graph:
    """A closure rooted at ``root``; ``kind`` is ``runtime`` or ``build``."""

    root: str
    kind: str
    nodes: tuple[Node, ...]

    def node(self, path: str) -> Node:
        for n in self.nodes:
            if n.path == path:
                return n
        raise KeyError(path)


def split_name(name: str) -> tuple[str, str]:
    """Nix's ``DrvName``: the version starts after the first ``-`` not followed by a letter."""
    name = name.removesuffix(".drv")
    m = re.search(r"-(?![A-Za-z])", name)
    return (name[: m.start()], name[m.end() :]) if m else (name, "")


def deb_package(url: str) -> tuple[str, str, str] | None:
    """``(name, version, purl)`` of a Debian ``.deb`` fetched from ``debian:<pool path>``
    (the lock's ``filename``: ``<name>_<version>_<arch>.deb``, epoch as ``%3a``)."""
    if not url.startswith("debian:") or not url.endswith(".deb"):
        return None
    parts = url.rsplit("/", 1)[-1].removesuffix(".deb").split("_")
    if len(parts) != 3 or not all(parts):
        return None
    name, version, arch = parts[0], unquote(parts[1]), parts[2]
    return name, version, f"pkg:deb/debian/{quote(name, safe='')}@{quote(version, safe='')}?arch={arch}"


def source_date_epoch() -> int:
    """``SOURCE_DATE_EPOCH`` from the environment, else 315532800; malformed is an error."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None or raw == "":
        return DEFAULT_EPOCH
    if not raw.isdigit():
        raise FormatError(f"SOURCE_DATE_EPOCH must be a non-negative integer, found {raw!r}")
    return int(raw)


# ---------------------------------------------------------------------------- collecting


def _drv_urls(drv: Derivation) -> tuple[list[str], str | None]:
    env = drv.env_map
    urls = env.get("urls", "").split() or ([env["url"]] if env.get("url") else [])
    return urls, env.get("rev")


def _node_for(path: str, info: Any, drv: Derivation | None, deps, extra_urls=()) -> Node:
    sp = StorePath.parse(path)
    name, version = split_name(sp.name)
    urls: list[str] = []
    lic = rev = None
    if drv is not None:
        env = drv.env_map
        name = env.get("pname") or name
        version = env.get("version") or version
        urls, rev = _drv_urls(drv)
        lic = env.get("license") or env.get("meta.license") or None
    urls += [u for u in extra_urls if u not in urls]
    deb = (
        next((d for d in map(deb_package, urls) if d), None)
        if drv is not None and drv.is_fixed_output
        else None
    )
    if deb is not None:
        name, version = deb[0], deb[1]
    return Node(
        path=path,
        name=name,
        version=version,
        nar_sha256=info.nar_hash.hex if info is not None and info.nar_hash.algo == "sha256" else None,
        deps=tuple(sorted(set(deps) - {path})),
        urls=tuple(urls),
        license=lic,
        deriver=getattr(info, "deriver", None) or None,
        rev=rev,
        purl=deb[2] if deb else None,
    )


class _Reader:
    """Store access with memoized derivation reads."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.drvs: dict[str, Derivation | None] = {}

    def info(self, path: str) -> Any:
        try:
            return self.store.query(path)
        except StoreError:
            return None

    def drv(self, drv_path: str | None) -> Derivation | None:
        if not drv_path:
            return None
        if drv_path not in self.drvs:
            d = None
            if self.info(drv_path) is not None:
                text = Path(self.store.real_path(drv_path)).read_text(encoding="utf-8")
                sp = StorePath.parse(drv_path)
                d = parse_drv(text, sp.name.removesuffix(".drv"), sp.store_dir)
            self.drvs[drv_path] = d
        return self.drvs[drv_path]

    def fixed_input_urls(self, drv: Derivation) -> list[str]:
        out: list[str] = []
        for p, _ in drv.input_drvs:
            d = self.drv(p)
            if d is not None and d.is_fixed_output:
                out += [u for u in _drv_urls(d)[0] if u not in out]
        return out


def collect(store: Any, path: str, build: bool = False) -> Graph:
    """The runtime (default) or build closure of ``path`` in ``store`` (a ``LocalStore``)."""
    r = _Reader(store)
    root_info = r.info(path)
    if root_info is None:
        raise StoreError(f"{path} is not a valid path in the store at {store.root}")
    if not build:
        nodes = []
        members = sorted(str(x) for x in store.closure([path]))
        inside = set(members)
        for p in members:
            info = r.info(p)
            drv = r.drv(info.deriver if info else None)
            extra = r.fixed_input_urls(drv) if drv else []
            # A reference to a path that is no longer valid (quarantined by verify --repair)
            # is left out rather than emitted as a dangling bom-ref.
            refs = [x for x in (info.references if info else ()) if x in inside]
            nodes.append(_node_for(p, info, drv, refs, extra))
        return Graph(path, "runtime", tuple(nodes))
    root_drv = r.drv(root_info.deriver)
    if root_drv is None:
        raise StoreError(
            f"cannot compute the build closure of {path}: its derivation "
            f"{root_info.deriver or '(unknown)'} is not in the store"
        )
    found: dict[str, Node] = {}
    # Worklist of (output path, its derivation or None for sources).
    todo: list[tuple[str, Derivation | None, str | None]] = [(path, root_drv, root_info.deriver)]
    while todo:
        p, drv, drv_path = todo.pop()
        if p in found:
            continue
        info = r.info(p)
        deps: list[str] = []
        if drv is not None:
            for ip, outs in drv.input_drvs:
                idrv = r.drv(ip)
                if idrv is None:
                    raise StoreError(f"cannot compute the build closure of {path}: {ip} is not in the store")
                for o in outs:
                    op = idrv.output_path(o)
                    deps.append(op)
                    todo.append((op, idrv, ip))
            for src in drv.input_srcs:
                deps.append(src)
                todo.append((src, None, None))
        elif info is not None:
            for ref in info.references:
                deps.append(ref)
                todo.append((ref, None, None))
        extra = r.fixed_input_urls(drv) if drv else []
        n = _node_for(p, info, drv, deps, extra)
        if drv_path and n.deriver is None:
            n = replace(n, deriver=drv_path)
        found[p] = n
    return Graph(path, "build", tuple(found[k] for k in sorted(found)))


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
    return f"urn:uuid:{uuid.uuid5(SBOM_NAMESPACE, f'{g.kind}:{g.root}')}"


def _cdx_component(n: Node, type_: str) -> dict[str, Any]:
    c: dict[str, Any] = {"type": type_, "bom-ref": n.path, "name": n.name}
    if n.version:
        c["version"] = n.version
    c["purl"] = purl(n)
    if n.nar_sha256:
        c["hashes"] = [{"alg": "SHA-256", "content": n.nar_sha256}]
    if n.license:
        is_expr = _SPDX_EXPR.match(n.license)
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


_SPDX_URL = re.compile(r"^(https?|ftp|sftp)://[^\s]+$")


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
        "licenseDeclared": n.license if n.license and _SPDX_EXPR.match(n.license) else "NOASSERTION",
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
    for n in g.nodes:
        rels += [
            {
                "spdxElementId": _spdx_id(n.path),
                "relationshipType": "DEPENDS_ON",
                "relatedSpdxElement": _spdx_id(d),
            }
            for d in n.deps
        ]
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": base,
        "documentNamespace": f"https://kiln.dev/spdx/{base}-{serial_number(g).removeprefix('urn:uuid:')}",
        "creationInfo": {"created": rfc3339(epoch), "creators": [f"Tool: kiln-{tool_version}"]},
        "packages": [_spdx_package(n) for n in g.nodes],
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


def graph_from_mapping(root: str, kind: str, nodes: Mapping[str, Node]) -> Graph:
    """Build a ``Graph`` from nodes keyed by path, checking every edge resolves."""
    for n in nodes.values():
        missing = [d for d in n.deps if d not in nodes]
        if missing:
            raise FormatError(f"SBOM graph: {n.path} depends on {missing[0]}, which is not in the graph")
    if root not in nodes:
        raise FormatError(f"SBOM graph: root {root} is not among the nodes")
    return Graph(root, kind, tuple(nodes[k] for k in sorted(nodes)))
