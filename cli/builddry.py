"""``kiln build --dry-run``: what a build of the targets would do, doing none of it (as
``nix-build --dry-run``): the derivations it would build, inputs first, and the paths it
would fetch from the substituters (asked, not downloaded), each with where from and its
download size; no derivation is written, nothing is built, fetched or rooted, and no
sandbox is needed (local ``path`` sources are added to the store, as by every
evaluation: their store paths are part of the derivations').

The plan is the build loop's (``buildplan.plan``: a derivation whose outputs are all
valid is done, and only what is built needs its inputs), asked twice as the builder asks
it: once to know which outputs are missing, then again with what the substituters would
provide counted as present (``Substitution.available``: only paths whose whole closure
they have). Results go to stdout (``--json``: one document, ``jsonout``)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from kiln.store.errors import KilnError

if TYPE_CHECKING:
    from kiln.lang import Evaluation
    from kiln.store.localstore import LocalStore
    from kiln.store.narinfo import NarInfo

    from .buildglue import Target


def dry_run(
    store: LocalStore, ev: Evaluation | None, targets: list[Target], args: argparse.Namespace
) -> None:
    """Print what building ``targets`` would build and fetch (module docstring)."""
    from kiln.store.buildplan import load_graph, plan
    from kiln.store.drvparse import decode

    def read_text(p: str) -> str:
        if ev is not None and p in ev.drvs:  # (not written to the store: a dry run writes nothing)
            return ev.drvs[p].serialize()
        if not store.is_valid(p):
            raise KilnError(f"derivation {p} is not in the store")
        return decode(store.real_path(p).read_bytes(), p)

    roots = [t.drv_path for t in targets]
    graph = load_graph(roots, read_text, store.store_dir)
    todo = plan(graph, roots, store.is_valid)
    fetch: dict[str, NarInfo] = {}
    source_of: dict[str, str | None] = {}
    if todo and not args.no_substitute:
        from .buildsubst import make_substituter

        sub = make_substituter(args.substituter, args.trusted_key, args.sigs_needed, args.attester_key)
        if sub is not None:
            missing = [o.path for p in todo for _, o in graph.drvs[p].outputs if not store.is_valid(o.path)]
            try:
                fetch = sub.available(store, missing)
                source_of = {p: sub.source_of(p) for p in fetch}
            finally:
                sub.close()
            todo = plan(graph, roots, lambda p: store.is_valid(p) or p in fetch)
    if args.json:
        from .jsonout import emit

        emit(
            True,
            {
                "build": todo,
                "fetch": [
                    {"path": p, "from": source_of.get(p), "downloadSize": fetch[p].file_size}
                    for p in sorted(fetch)
                ],
                "targets": [
                    {"attribute": t.attr, "drvPath": t.drv_path, "outputs": dict(t.outputs)} for t in targets
                ],
            },
        )
        return
    _say(todo, fetch, source_of)


def _say(todo: list[str], fetch: dict[str, NarInfo], source_of: dict[str, str | None]) -> None:
    from kiln.store.errors import redact_urls

    out = sys.stdout
    if todo:
        out.write(f"would build {len(todo)} derivation(s):\n" + "".join(f"  {p}\n" for p in todo))
    if fetch:
        size = sum(i.file_size or 0 for i in fetch.values())
        out.write(f"would fetch {len(fetch)} path(s) ({size / 2**20:.1f} MiB download):\n")
        for p in sorted(fetch):
            url = source_of.get(p)
            out.write(f"  {p}" + (f"  (from {redact_urls(url)})" if url else "") + "\n")
    if not todo and not fetch:
        out.write("nothing to build or fetch: every output is valid\n")
