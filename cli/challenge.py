"""``kiln challenge PATH... --registry URL...``: do registries serve what we build?

Theory of operation (after ``guix challenge``)
----------------------------------------------
For every path, the *local* NAR hash is the one registered in the local store (with
``--rebuild``: the hash of a fresh local rebuild, see ``rebuilders``). Every registry is
asked for the path's narinfo (one batched query per registry, through
``kiln.registry.client``) and its ``NarHash`` is compared with the local hash:

- ``agrees``: same NAR hash;
- ``DIFFERS``: another NAR hash — the registry serves different bytes under this path
  than this machine built (a non-reproducible build, or a tampered registry);
- ``lacks``: no narinfo;
- ``error``: unreachable, not a binary cache, another store dir, or a narinfo that does
  not parse or describes another path.

Registries given twice are asked once: two spellings of one registry (scheme or host
case, a default port written out, ``localhost`` for ``127.0.0.1``; ``registry_identity``)
would otherwise count as two sources agreeing; kiln warns about each.

Without a local hash (the path is not valid here and ``--rebuild`` was not given) the
registries are only compared with each other. A path is *consistent* when every hash
seen (local and remote) is the same, *inconsistent* when two differ, *unknown* when no
more than one source has it. Signatures are not checked: the question is which bytes
are served, not whom to trust (``kiln verify`` and substitution answer that). A
registry's error text is shown escaped (``buildlogs.shown_output``) on its one line.
Every NAR hash, local or served, is shown, compared and printed as ``sha256:<nix32>``
(``jsonout.hash_text``: as Nix prints it, and as ``kiln store info`` does).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from kiln.registry.looprun import run as run_async
from kiln.store.buildlogs import shown_output
from kiln.store.errors import KilnError, redact_urls
from kiln.store.hashes import Hash
from kiln.store.paths import StorePath

from .jsonout import hash_text


@dataclass(frozen=True, slots=True)
class Answer:
    """What one registry said about one path. ``status``: agrees, DIFFERS, lacks, error,
    or ``has`` (there was no local hash to compare with)."""

    registry: str
    status: str
    nar_hash: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class PathChallenge:
    path: str
    local: str  # sha256:<nix32> (``jsonout.hash_text``), "" when unknown
    local_source: str  # "store", "rebuild" or ""
    answers: tuple[Answer, ...] = field(default=())

    @property
    def hashes(self) -> set[str]:
        seen = {a.nar_hash for a in self.answers if a.nar_hash}
        return seen | ({self.local} if self.local else set())

    @property
    def verdict(self) -> str:
        if len(self.hashes) > 1:
            return "inconsistent"
        sources = (1 if self.local else 0) + sum(bool(a.nar_hash) for a in self.answers)
        return "consistent" if sources > 1 else "unknown"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "local": self.local or None,
            "localSource": self.local_source or None,
            "verdict": self.verdict,
            "registries": [
                {
                    "url": a.registry,
                    "status": a.status.lower(),
                    "narHash": a.nar_hash or None,
                    "detail": a.detail,
                }
                for a in self.answers
            ],
        }


def _hash(h: Hash) -> str:
    """A NAR hash as the report shows and compares it: ``sha256:<nix32>``, as the local
    rebuild's (``rebuilders.OutputVerdict``) and every ``--json`` of kiln."""
    return hash_text(h)


async def _ask(url: str, store_dir: str, paths: list[str]) -> dict[str, tuple[str, str, str]]:
    """``{path: (status, nar hash, detail)}`` from one registry (status has/lacks/error)."""
    from kiln.registry.client import open_client
    from kiln.store import narinfo as ni

    by_hash = {StorePath.parse(p, store_dir).hash_part: p for p in paths}
    try:
        async with open_client(url, create=False) as client:
            await client.cache_info()
            if client.store_dir and client.store_dir != store_dir:
                why = f"registry store dir {client.store_dir!r} differs from {store_dir!r}"
                return {p: ("error", "", why) for p in paths}
            texts = await client.narinfos(list(by_hash))
    except Exception as e:  # noqa: BLE001 - any failure of one registry is that registry's answer
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not isinstance(e, KilnError):
            why = f"{type(e).__name__}: {why}"  # e.g. a body that is not UTF-8, a malformed URL
        return {p: ("error", "", why[:300]) for p in paths}
    out: dict[str, tuple[str, str, str]] = {}
    for h, p in by_hash.items():
        text = texts.get(h)
        if text is None:
            out[p] = ("lacks", "", "")
            continue
        try:
            info = ni.parse(text, store_dir)
        except (KilnError, ValueError) as e:
            out[p] = ("error", "", f"invalid narinfo: {str(e).splitlines()[0]}")
            continue
        if info.path != p:
            out[p] = ("error", "", f"narinfo describes {info.path}")
            continue
        out[p] = ("has", _hash(info.nar_hash), "")
    return out


async def _ask_all(
    urls: list[str], store_dir: str, paths: list[str]
) -> list[dict[str, tuple[str, str, str]]]:
    return list(await asyncio.gather(*(_ask(u, store_dir, paths) for u in urls)))


#: one machine's own names for itself: a registry on it answers under each of them
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def registry_identity(url: str) -> str:
    """What identifies the registry at ``url``, for telling two spellings of one apart
    from two registries: scheme and host lower-cased, the scheme's default port
    written out, ``localhost``/``127.0.0.1``/``::1`` as one host, credentials and
    trailing slashes dropped (the path is kept as it is: paths are case-sensitive). A
    URL that does not parse is its own identity."""
    try:
        u = urlsplit(url.strip())
        port = u.port
    except ValueError:
        return url
    scheme, host = u.scheme.lower(), (u.hostname or "").rstrip(".")
    if not scheme or not host:
        return url.rstrip("/") or url
    if host in _LOOPBACK:
        host = "localhost"
    port = port if port is not None else _DEFAULT_PORTS.get(scheme)
    query = f"?{u.query}" if u.query else ""
    return f"{scheme}://[{host}]:{port}{u.path.rstrip('/')}{query}"


def duplicate_registries(urls: list[str]) -> list[tuple[str, str]]:
    """``(url, earlier url)`` for each of ``urls`` that names the same registry as an
    earlier one (``registry_identity``)."""
    first: dict[str, str] = {}
    out = []
    for u in urls:
        key = registry_identity(u)
        if key in first:
            out.append((u, first[key]))
        else:
            first[key] = u
    return out


def distinct_registries(urls: list[str]) -> list[str]:
    """``urls`` without repeats: spellings of one registry (``http://h``, ``http://h/``,
    ``HTTP://H:80``, ``http://localhost:8080`` and ``http://127.0.0.1:8080``) are one
    source, which must not count as two sources agreeing. First spelling kept, order
    kept."""
    seen: dict[str, str] = {}
    for u in urls:
        seen.setdefault(registry_identity(u), u)
    return list(seen.values())


def local_hashes(
    store: Any,
    args: list[str],
    *,
    rebuild: bool = False,
    mirrors: tuple[str, ...] = (),
    resolve: Callable[[Any, str], str],
) -> dict[str, tuple[str, str]]:
    """``{path: (local hash or "", source)}`` for the PATH arguments, in order. A logical
    store path not valid here is kept (registries may have it); other forms go through
    ``resolve``. With ``rebuild`` each path is rebuilt (``rebuilders.rebuild_path``, no
    VSA signed) and the rebuilt hash is the local one."""
    from . import rebuilders

    out: dict[str, tuple[str, str]] = {}
    builder = None
    for arg in args:
        a = arg.rstrip("/")
        if a.startswith(store.store_dir + "/") and "/" not in a[len(store.store_dir) + 1 :]:
            path = str(StorePath.parse(a, store.store_dir))
        else:
            path = resolve(store, arg)
        info = store.query(path)
        if not rebuild:
            out[path] = (_hash(info.nar_hash), "store") if info else ("", "")
            continue
        if info is None:
            raise KilnError(f"--rebuild: {path} is not valid here; build it first (kiln build)")
        builder = builder or rebuilders.make_builder(store, mirrors=mirrors)
        (v,) = [v for v in rebuilders.rebuild_path(store, builder, path, None) if v.path == path]
        if not v.identical:
            print(f"warning: the local rebuild of {path} differs from the local store", file=sys.stderr)
        out[path] = (v.rebuilt, "rebuild")
    return out


def challenge(store_dir: str, locals_: dict[str, tuple[str, str]], urls: list[str]) -> list[PathChallenge]:
    """Compare ``locals_`` (``{path: (local hash or "", source)}``, in order) with what
    each registry in ``urls`` serves."""
    paths = list(locals_)
    for dup, first in duplicate_registries(urls):
        print(
            f"warning: --registry {redact_urls(dup)} is the same registry as {redact_urls(first)}; "
            "asked once (one registry is one source, however it is spelled)",
            file=sys.stderr,
        )
    urls = distinct_registries(urls)
    per_registry = run_async(_ask_all(urls, store_dir, paths))
    out = []
    for p in paths:
        local, source = locals_[p]
        answers = []
        for url, got in zip(urls, per_registry, strict=True):
            status, h, detail = got[p]
            if status == "has" and local:
                status = "agrees" if h == local else "DIFFERS"
            # shown and printed as JSON: never with the URL's credentials
            answers.append(Answer(redact_urls(url), status, h, redact_urls(detail)))
        out.append(PathChallenge(p, local, source, tuple(answers)))
    return out


def render(results: list[PathChallenge]) -> list[str]:
    """Human-readable lines: per path the local hash and each registry's answer, then a
    summary."""
    lines: list[str] = []
    for r in results:
        lines.append(f"{r.path}: {r.verdict}")
        where = f" ({r.local_source})" if r.local_source else ""
        lines.append(f"  local{where}: {r.local or '(not built here)'}")
        for a in r.answers:
            what = {"agrees": "agrees", "DIFFERS": "DIFFERS", "has": "serves"}.get(a.status)
            if what:
                lines.append(f"  {a.registry}: {a.nar_hash} {what}")
            elif a.status == "lacks":
                lines.append(f"  {a.registry}: does not have it")
            else:
                lines.append(f"  {a.registry}: error: {_one_line(a.detail)}")
    lines.append(summary(results))
    return lines


def _one_line(text: str) -> str:
    """A registry's error text as one line of the report: escaped (``shown_output``), its
    newlines too, so it can neither drive the terminal nor fake another line."""
    return shown_output(text).replace("\n", "\\n")


def summary(results: list[PathChallenge]) -> str:
    n = len(results)
    c = sum(r.verdict == "consistent" for r in results)
    i = sum(r.verdict == "inconsistent" for r in results)
    u = n - c - i
    return (
        f"{n} store path{'s' if n != 1 else ''} challenged: {c} consistent, "
        f"{i} inconsistent, {u} unknown (fewer than two sources)"
    )
