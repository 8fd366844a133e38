"""Substitution for ``kiln build``: the callback ``Builder`` asks for missing paths,
fed from ``--substituter``/``KILN_SUBSTITUTERS`` registries (``kiln.registry.substitute``).

Attestations of substituted paths (``_fetch_attestations``) follow ``kiln copy --to
store``: they are stored when a ``--trusted-key`` or ``--attester-key`` signed them;
one of an unknown signer, or older than the local one, is a warning; one refused as
tampered with or not what the registry listed for that path (``attest_fetch.Refused``:
``tampered``, ``bad``) does not stop the build — the substituted paths are vouched for
by their own signatures — but is named again after it (``AttestationsRefused``, raised
by ``cmd_build`` once the outputs are rooted): the command exits 1. One the registry could
not send (a 500, a stall, a cut answer: ``Refused.unavailable``, or its listings not
received) is a warning that says so — "could not be fetched (temporary: ...)", not
"refused" — and names the ``kiln copy --from URL --to store ... PATH...`` that fetches it
later: the path is valid once substituted, so no later build asks for it again. The
command still exits 0 for it: the paths are vouched for by their own signatures.

A build's stderr says which registries could not be used, which narinfos were refused,
and how many paths (and bytes) came from each registry.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.store.errors import KilnError, redact_urls

from .buildglue import Target

if TYPE_CHECKING:
    from collections.abc import Callable

    from kiln.registry.substitute import Substituter
    from kiln.store.localstore import LocalStore
    from kiln.store.narinfo import NarInfo
    from kiln.store.signing import PublicKey


class AttestationsRefused(KilnError):
    """Attestations of substituted paths were refused (module docstring); ``targets``:
    what the build produced and rooted, set by ``cmd_build`` before it raises this."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.targets: list[Target] = []


@dataclass(frozen=True)
class Substitution:
    """What ``make_substituter`` makes: called as ``Builder``'s substitution callback
    (``fetch``); ``close`` and ``refusal`` as its docstring says."""

    fetch: Callable[[LocalStore, list[str]], set[str]]
    close: Callable[[], None]
    refusal: Callable[[], AttestationsRefused | None]
    #: what ``fetch`` would fetch for those paths (each with its whole closure), asked
    #: without downloading: the narinfos by path (``kiln build --dry-run``)
    available: Callable[[LocalStore, list[str]], dict[str, NarInfo]]
    #: the registry a path ``available`` found came from
    source_of: Callable[[str], str | None]

    def __call__(self, store: LocalStore, missing: list[str]) -> set[str]:
        return self.fetch(store, missing)


def make_substituter(
    urls: list[str], trusted_keys: list[str], sigs_needed: int | None, attester_keys: list[str] | None = None
) -> Substitution | None:
    """A substitution callback for ``Builder`` (None when no registry is configured).

    Registries come from ``--substituter`` plus ``KILN_SUBSTITUTERS``; trusted keys from
    ``--trusted-key`` (key text or a .pub file) plus ``KILN_TRUSTED_KEYS``; the threshold
    from ``--sigs-needed`` or ``KILN_SIGS_NEEDED`` (default 1). A ``--private``
    registry's read token comes from ``KILN_SUBSTITUTER_TOKENS`` (``URL=TOKEN`` pairs,
    whitespace-separated; each token goes to its own URL only) or the file
    ``KILN_SUBSTITUTER_TOKENS_FILE`` names (``tokenargs.substituter_tokens``). Each missing path is
    fetched with its whole closure; a path whose closure cannot be completed from the
    registries, or that fails verification, stays missing (and is built), with a
    warning. An unreachable registry is a miss, never a failure. Attestations come along
    (``_fetch_attestations``), judged by the trusted keys and ``attester_keys``
    (``--attester-key``: key text or a .pub file, for attestations only). Call its
    ``close()`` when done (it holds HTTP sessions and an event loop), then its
    ``refusal()``: the ``AttestationsRefused`` to raise once the outputs are rooted, or
    None."""
    env_urls = os.environ.get("KILN_SUBSTITUTERS", "")
    if not urls and not env_urls.strip():
        return None
    from kiln.registry.substitute import Substituter, parse_registries

    from .common import load_trusted_key
    from .common import trusted_keys as load_trusted_keys

    # --substituter in the order given, before any of $KILN_SUBSTITUTERS (negative: a
    # priority a URL or nix-cache-info gives is never under 0), which go by priority
    regs: list[tuple[str, int | None]] = [(u, i - len(urls)) for i, u in enumerate(urls)]
    regs += parse_registries(env_urls)
    keys = load_trusted_keys(trusted_keys)
    attesters = [load_trusted_key(k) for k in attester_keys or []]
    refused: list[str] = []  # attestation refusals that fail the command after the build
    if sigs_needed is not None:
        needed = sigs_needed
    else:  # the rule of every number read from the environment (unset or empty: 1)
        from kiln.store.envnumber import whole_number

        needed = whole_number("KILN_SIGS_NEEDED", 1, KilnError, "a whole number >= 0")
    if needed == 0:
        from .common import warn_no_signatures

        warn_no_signatures("substitutes are fetched")
    from .tokenargs import substituter_tokens

    sub = Substituter(regs, keys, needed, tokens=substituter_tokens())
    said: set[str] = set()

    def say_what_was_not_used() -> None:
        """Registries that could not be used and narinfos refused, once each: a build
        that quietly builds what a registry has (a typo in its URL, a wrong key) is
        what users of other caches complain about."""
        for url, why in sorted(sub.down.items()):
            if url not in said:
                said.add(url)
                print(f"warning: substituter {redact_urls(url)} not used: {why}", file=sys.stderr)
        refused = sorted(p for p in sub.rejected if p not in said)
        if refused:
            said.update(refused)
            print(
                f"warning: {len(refused)} narinfo(s) refused, those paths are built instead; "
                f"e.g. {refused[0]}: {redact_urls(sub.rejected[refused[0]])}",
                file=sys.stderr,
            )

    def substitute(store: LocalStore, missing: list[str]) -> set[str]:
        try:
            return fetch_from_registries(store, missing)
        finally:
            say_what_was_not_used()

    def fetch_from_registries(store: LocalStore, missing: list[str]) -> set[str]:
        wanted = available(store, missing)
        try:
            got = sub.fetch_many(store, [wanted[p] for p in sorted(wanted)])
        except KilnError as e:
            print(f"warning: substitution failed, building instead: {e}", file=sys.stderr)
            return set()
        fetched = sorted(g.path for g in got)
        _say_substituted(sub, fetched, wanted)
        if fetched:
            later = _LaterCopy(store.root, tuple(trusted_keys or ()), tuple(attester_keys or ()), sub.tokens)
            _fetch_attestations(sub, store, fetched, attesters, refused, later)
        return set(fetched)

    def available(store: LocalStore, missing: list[str]) -> dict[str, NarInfo]:
        """The trusted narinfos of ``missing`` and of their closures' missing paths, only
        those whose whole closure the registries (or the store) have."""
        infos = sub.query_many(missing)
        wanted = dict(infos)
        frontier = list(infos.values())
        while frontier:
            refs = {r for i in frontier for r in i.references if r not in wanted}
            # rooted first, then checked: a GC must not collect a reference we count on
            # between the check and the import that needs it
            store.keep(sorted(refs))
            refs = {r for r in refs if not store.is_valid(r)}
            more = sub.query_many(sorted(refs)) if refs else {}
            wanted.update(more)
            frontier = list(more.values())
        # keep only paths whose whole closure is available (fixpoint: drop, re-check)
        complete = set(wanted)
        changed = True
        while changed:
            changed = False
            for p in list(complete):
                if not all(r == p or r in complete or store.is_valid(r) for r in wanted[p].references):
                    complete.discard(p)
                    changed = True
        if complete != set(wanted):
            print(
                f"warning: {len(wanted) - len(complete)} path(s) lack part of their closure on the registries",
                file=sys.stderr,
            )
        return {p: wanted[p] for p in complete}

    def refusal() -> AttestationsRefused | None:
        if not refused:
            return None
        return AttestationsRefused(
            "\n".join(refused) + "\nthe build went on: the substituted paths (each checked by its own "
            "signatures) and what was built are in the store; the attestations refused above were not stored"
        )

    def query(store: LocalStore, missing: list[str]) -> dict[str, NarInfo]:
        try:
            return available(store, missing)
        finally:
            say_what_was_not_used()

    return Substitution(substitute, sub.close, refusal, query, lambda p: sub.source_of(p))


def _say_substituted(sub: Substituter, fetched: list[str], wanted: dict[str, NarInfo]) -> None:
    """One stderr line per registry: how many paths (and compressed bytes) came from it,
    so a build log says where its inputs came from, not only what was built."""
    per: dict[str, tuple[int, int]] = {}
    for p in fetched:
        url = sub.source_of(p) or "?"
        n, size = per.get(url, (0, 0))
        per[url] = (n + 1, size + (wanted[p].file_size or 0))
    for url, (n, size) in sorted(per.items()):
        print(f"substituted {n} path(s), {size / 2**20:.1f} MiB, from {redact_urls(url)}", file=sys.stderr)


def _fetch_attestations(
    sub: Substituter,
    store: LocalStore,
    paths: list[str],
    attesters: list[PublicKey],
    refused: list[str],
    later: _LaterCopy,
) -> None:
    """Bring the registries' attestations (provenance, SBOM, VSAs) of substituted paths
    along, each checked against the path's NAR hash and judged by the substitution's
    trusted keys and ``attesters``. Attestations are evidence, not content: a registry
    without them, one signed by a key unknown here, or one it could not send costs a
    warning — the last one naming the ``kiln copy`` that fetches them later (``later``),
    since no later build asks for the attestations of a path it has. One refused as
    tampered with or not as listed is added to ``refused`` (the command fails after the
    build, module docstring) and said now in one line."""
    from kiln.registry.attest_fetch import Refused, fetch_attestations

    for url, _ in sub.registries:  # (in priority order, as the paths were asked)
        try:
            sub.run(fetch_attestations(sub.client(url), store, paths, attesters=attesters))
        except Refused as e:
            if not (e.tampered or e.bad):  # only files not received: a transfer error, most likely
                print(later.unfetched(url, e.unavailable), file=sys.stderr)
                continue
            refused.append(str(e))
            what = "tampering found" if e.tampered else "attestations refused"
            print(
                f"warning: {what} in the attestations from {redact_urls(url)}; the build goes on and "
                "the command fails at its end, naming them",
                file=sys.stderr,
            )
        except KilnError as e:  # (the listings could not be asked for: any path's may be missing)
            print(later.unfetched(url, [f"{p}: {e}" for p in paths], listed=False), file=sys.stderr)


@dataclass(frozen=True)
class _LaterCopy:
    """What ``kiln copy`` needs to fetch the attestations a build could not: the store,
    the build's ``--trusted-key`` and ``--attester-key`` arguments (``KILN_TRUSTED_KEYS``
    counts for both commands) and the registries that have a read token."""

    store_root: Path
    trusted_keys: tuple[str, ...]
    attester_keys: tuple[str, ...]
    tokens: Mapping[str, str]

    def unfetched(self, url: str, lines: Sequence[str], listed: bool = True) -> str:
        """The warning for attestations from ``url`` not received: ``lines`` are ``"path:
        why"`` (``Refused.unavailable``); ``listed``: they are files the registry listed,
        not every path substituted (its listings could not be read)."""
        by_path: dict[str, list[str]] = {}
        for line in lines:
            path, _, why = line.partition(": ")
            by_path.setdefault(path, []).append(why)
        reasons = sorted({w for ws in by_path.values() for w in ws})
        why = redact_urls(reasons[0]) + (
            f"; and {len(reasons) - 1} other reason(s)" if len(reasons) > 1 else ""
        )
        what = (
            f"{len(lines)} attestation(s) of {len(by_path)}"
            if listed
            else f"the attestations of {len(by_path)}"
        )
        shown = sorted(by_path)[:_PATHS_SHOWN]
        cmd = [
            "kiln", "copy", "--from", redact_urls(url), "--to", "store", "--store", str(self.store_root),
            *(a for k in self.trusted_keys for a in ("--trusted-key", k)),
            *(a for k in self.attester_keys for a in ("--attester-key", k)),
            *shown,
        ]  # fmt: skip
        more = len(by_path) - len(shown)
        return (
            f"warning: {what} substituted path(s) could not be fetched from {redact_urls(url)} (temporary: "
            f"{why}); the paths are used (each vouched for by its own signatures), but no later build asks "
            "for these again: fetch them later with\n  "
            + shlex.join(cmd)
            + (f" ... ({more} more path(s))" if more else "")
            + (
                "\n  with the registry's read token in KILN_REGISTRY_TOKEN (or --token-file)"
                if url in self.tokens
                else ""
            )
        )


#: the most paths a "fetch them later" command names (a stall can fail a thousand at once)
_PATHS_SHOWN = 20
