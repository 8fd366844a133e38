"""SBOMs for store paths: CycloneDX 1.6 JSON and SPDX 2.3 JSON.

Theory of operation
-------------------
``collect`` turns a store path into a ``Graph``: one ``Node`` per store path with its
NAR sha256, its dependency edges, and what the path's derivation says about it
(``pname``/``version``, source ``url``/``urls`` and ``rev``, ``license``, and the Debian
packages it holds files of: ``debian_packages``, as ``pkg:deb`` purls). Two closures:

- *runtime*: the reference closure of the path (what a deployment carries);
- *build*: everything the path was built from, walked through the deriver ``.drv``'s
  input derivations and input sources. Output paths that are not valid locally (never
  built here, or garbage-collected) still appear, without a hash.

Source URLs of a package are its own ``url``/``urls`` plus those of its fixed-output
input derivations (the fetched tarballs), so a package lists where its source came from.
``cyclonedx`` and ``spdx`` are pure functions of a ``Graph``; they live in ``sbomdoc.py``
and are re-exported here.

A path's recorded deriver is unsigned (anyone importing a path may name zlib's ``.drv``
there): it is used only when it genuinely defines the path (``derivers.Derivers.of``:
valid here, parses, its output paths check out, and this path is one of them). Any
other path is described as having no derivation: name and version from its name, no
licence, no URLs, no ``kiln:deriver``.

Invariants
----------
- Deterministic: same graph, same bytes. Components and edges are sorted; the serial
  number is ``urn:uuid:`` + uuid5 of the subject path and closure kind; the timestamp is
  ``SOURCE_DATE_EPOCH`` (default 315532800, 1980-01-01) — never the wall clock.
- Every hash is the SHA-256 of the path's uncompressed NAR, as recorded in the store.
- Every dependency ref resolves to a component in the same document.
- What a component says about a path (name, version, licence, URLs, deriver) comes from
  a derivation whose output paths were checked to include that path, or from the path's
  own name: never from an unchecked ``Deriver``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from .aptlock import package_url
from .debpin import adds_epoch
from .derivation import Derivation
from .derivers import Derivers
from .errors import FormatError, StoreError
from .holes import IncompleteClosure
from .paths import StorePath


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
    #: Debian packages whose files the path holds, as ``(name, version, purl)``: the
    #: ``debian_packages`` of its derivation (e.g. libc6 in glibc-runtime)
    contains: tuple[tuple[str, str, str], ...] = ()


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


def deb_package(url: str, full_version: str = "") -> tuple[str, str, str] | None:
    """``(name, version, purl)`` of a Debian ``.deb`` fetched from ``debian:<pool path>``
    (the lock's ``filename``: ``<name>_<version>_<arch>.deb``, epoch as ``%3a``).
    Debian's pool file names drop the epoch: ``full_version``, the lock's version that
    the fetch's derivation carries (``version``), is the version when it is the file
    name's with an epoch (gcc's ``4:12.2.0-3``; a purl without it names another
    version); anything else in it is ignored: the file name is what the fetch pinned."""
    if not url.startswith("debian:") or not url.endswith(".deb"):
        return None
    parts = url.rsplit("/", 1)[-1].removesuffix(".deb").split("_")
    if len(parts) != 3 or not all(parts):
        return None
    name, version, arch = parts[0], unquote(parts[1]), parts[2]
    if adds_epoch(version, full_version):
        version = full_version
    return name, version, package_url(name, version, arch)


_DEB_PURL = re.compile(r"pkg:deb/debian/([^/@?#\s]+)@([^/@?#\s]+)\?arch=([A-Za-z0-9_-]+)\Z")


def deb_purl(purl: str) -> tuple[str, str, str] | None:
    """``(name, version, purl)`` of a ``pkg:deb/debian/<name>@<version>?arch=<arch>`` purl
    (as ``kiln.lang.debpkgs`` writes ``debian_packages``); ``None`` for anything else."""
    m = _DEB_PURL.match(purl)
    return (unquote(m[1]), unquote(m[2]), purl) if m else None


# ---------------------------------------------------------------------------- collecting


def _drv_urls(drv: Derivation) -> tuple[list[str], str | None]:
    env = drv.env_map
    urls = env.get("urls", "").split() or ([env["url"]] if env.get("url") else [])
    return urls, env.get("rev")


def _node_for(
    path: str,
    info: Any,
    drv: Derivation | None,
    deps: list[str],
    extra_urls: list[str],
    deriver: str | None,
) -> Node:
    """The node of ``path``; ``drv`` (at ``deriver``) must be a checked derivation that
    defines ``path`` (``Derivers.of``), or ``None``."""
    sp = StorePath.parse(path)
    name, version = split_name(sp.name)
    urls: list[str] = []
    lic = rev = None
    contains: tuple[tuple[str, str, str], ...] = ()
    if drv is not None:
        env = drv.env_map
        contains = tuple(d for d in map(deb_purl, env.get("debian_packages", "").split()) if d)
        name = env.get("pname") or name
        version = env.get("version") or version
        urls, rev = _drv_urls(drv)
        lic = env.get("license") or env.get("meta.license") or None
    urls += [u for u in extra_urls if u not in urls]
    deb = (
        next((d for u in urls if (d := deb_package(u, drv.env_map.get("version", "")))), None)
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
        deriver=deriver if drv is not None else None,
        rev=rev,
        purl=deb[2] if deb else None,
        contains=contains,
    )


class _Reader:
    """Store access with memoized, checked derivation reads (``derivers``)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.derivers = Derivers(store)

    def info(self, path: str) -> Any:
        try:
            return self.store.query(path)
        except StoreError:
            return None

    def drv(self, drv_path: str | None) -> Derivation | None:
        """The derivation at ``drv_path`` if it is valid here and defines the outputs it
        declares; else ``None``."""
        return self.derivers.load(drv_path)

    def deriver(self, path: str, info: Any) -> tuple[Derivation | None, str | None]:
        """``(derivation, its path)`` of ``path``'s recorded deriver if that genuinely
        defines ``path``, else ``(None, None)``: the ``Deriver`` field is unsigned."""
        drv_path = getattr(info, "deriver", None) or None
        d = self.derivers.of(path, drv_path)
        return (d, drv_path) if d is not None else (None, None)

    def fixed_input_urls(self, drv: Derivation) -> list[str]:
        out: list[str] = []
        for p, _ in drv.input_drvs:
            d = self.drv(p)
            if d is not None and d.is_fixed_output:
                out += [u for u in _drv_urls(d)[0] if u not in out]
        return out


def collect(store: Any, path: str, build: bool = False) -> Graph:
    """The runtime (default) or build closure of ``path`` in ``store`` (a ``LocalStore``).

    The build closure needs ``path``'s recorded deriver to genuinely define it
    (``Derivers.of``) and every input derivation to be valid and check out; otherwise
    ``StoreError`` saying which.

    Either way ``path``'s runtime closure must be complete: a path whose dependency is no
    longer valid (quarantined by ``verify --repair``) cannot be used, and an SBOM of it
    would leave the dependency out, or (``--build``) list it with no hash, and be signed
    so (``--attest``) and pushed with the path; ``IncompleteClosure`` naming the holes."""
    r = _Reader(store)
    root_info = r.info(path)
    if root_info is None:
        raise StoreError(f"{path} is not a valid path in the store at {store.root}")
    runtime, holes = store.closure_with_holes([path])
    if holes:
        raise IncompleteClosure(path, holes, store.root, "make an SBOM of")
    if not build:
        nodes = []
        members = sorted(str(x) for x in runtime)
        inside = set(members)
        for p in members:
            info = r.info(p)
            drv, drv_path = r.deriver(p, info)
            extra = r.fixed_input_urls(drv) if drv else []
            # (every reference is a member: no holes, checked above; a path invalidated
            # since is left out rather than emitted as a dangling bom-ref)
            refs = [x for x in (info.references if info else ()) if x in inside]
            nodes.append(_node_for(p, info, drv, refs, extra, drv_path))
        return Graph(path, "runtime", tuple(nodes))
    root_drv, root_drv_path = r.deriver(path, root_info)
    if root_drv is None:
        raise StoreError(
            f"cannot compute the build closure of {path}: its recorded deriver "
            f"{root_info.deriver or '(none)'} is not a derivation in the store that defines it "
            "(expected a valid .drv whose checked output paths include this path)"
        )
    found: dict[str, Node] = {}
    # Worklist of (output path, its derivation or None for sources, the derivation's path).
    todo: list[tuple[str, Derivation | None, str | None]] = [(path, root_drv, root_drv_path)]
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
                    raise StoreError(
                        f"cannot compute the build closure of {path}: its input derivation {ip} "
                        "is not in the store, or does not define the output paths it declares"
                    )
                for o in outs:
                    if o not in idrv.outputs_map:
                        raise StoreError(
                            f"cannot compute the build closure of {path}: {drv_path} uses output "
                            f"{o!r} of {ip}, which has only {', '.join(idrv.outputs_map)}"
                        )
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
        # (the derivation walked through defines p: its outputs were checked)
        found[p] = _node_for(p, info, drv, deps, extra, drv_path)
    return Graph(path, "build", tuple(found[k] for k in sorted(found)))


def graph_from_mapping(root: str, kind: str, nodes: Mapping[str, Node]) -> Graph:
    """Build a ``Graph`` from nodes keyed by path, checking every edge resolves."""
    for n in nodes.values():
        missing = [d for d in n.deps if d not in nodes]
        if missing:
            raise FormatError(f"SBOM graph: {n.path} depends on {missing[0]}, which is not in the graph")
    if root not in nodes:
        raise FormatError(f"SBOM graph: root {root} is not among the nodes")
    return Graph(root, kind, tuple(nodes[k] for k in sorted(nodes)))


# The documents are rendered in sbomdoc (pure functions of a Graph); re-exported so
# callers import one module. Imported last: sbomdoc names Node and Graph for typing only.
from .sbomdoc import (  # noqa: E402
    DEFAULT_EPOCH,
    cyclonedx,
    document,
    purl,
    serial_number,
    source_date_epoch,
    spdx,
)

__all__ = [
    "DEFAULT_EPOCH",
    "Graph",
    "Node",
    "collect",
    "cyclonedx",
    "deb_package",
    "document",
    "graph_from_mapping",
    "purl",
    "serial_number",
    "source_date_epoch",
    "spdx",
    "split_name",
]
