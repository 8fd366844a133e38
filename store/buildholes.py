"""Planning around holes: what is missing from the closures a build relies on.

A path ``verify --repair`` quarantined leaves its referrers valid but unusable: a build
mounting such an input's closure would run without it (failing confusingly, or worse,
not), and a no-op build would hand back a path that cannot run. ``with_holes`` finds
each missing path and the derivation in the build's graph that makes it; that
derivation is then built (or substituted) like any other, with ``-k`` and failures
handled as usual and no ``--check`` (it is no root), and every derivation taking the
input whose closure lacks it waits for it (``Graph.waits``: the input does not list it
as an input derivation when the path is a deeper dependency). Found to a fixed point:
a derivation made again may itself take an input with a hole. A missing path no
derivation of the graph makes (a source) is a ``StoreError`` naming it
(``holes_text``); so is a hole a build's sandbox would still meet
(``stagedbuild.closure``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .buildplan import Graph, walk
from .errors import StoreError
from .holes import holes_text


def with_holes(
    graph: Graph, wanted: list[str], store: Any, say: Callable[[str], None]
) -> tuple[Graph, list[str]]:
    """``graph`` made to build again first what is missing from the closures of the
    outputs a build of ``wanted`` takes as they are (``store``: a ``LocalStore`` or the
    builder's proxy of one), and the derivations making what is missing from a root's
    own closure (to realise as roots too). One closure walk when nothing is missing."""
    is_valid = store.is_valid
    needed, done = walk(graph, wanted, is_valid)
    outs = {p: [o.path for _, o in d.outputs] for p, d in graph.drvs.items()}
    if not done or not store.closure_with_holes([o for p in sorted(done) for o in outs[p]])[1]:
        return graph, []
    made_by = {o: p for p, os_ in outs.items() for o in os_}
    makers: dict[str, set[str]] = {}  # a derivation taken as it is -> what it waits for
    orphans: dict[str, tuple[str, ...]] = {}
    checked: set[str] = set()
    extra: set[str] = set()  # makers for the roots' own closures

    def waits_of(nodes: Iterable[str]) -> dict[str, tuple[str, ...]]:
        return {
            x: ws
            for x in nodes
            if (ws := tuple(sorted({m for i, _ in graph.drvs[x].input_drvs for m in makers.get(i, ())})))
        }

    while new := sorted(done - checked):
        for p in new:
            checked.add(p)
            for h, by in store.closure_with_holes(outs[p])[1].items():
                if h not in made_by:
                    orphans[h] = by
                elif made_by[h] not in makers.setdefault(p, set()):
                    say(f"{h} is missing from the closure of {', '.join(by)}: realising it again")
                    makers[p].add(made_by[h])
        extra |= {m for r in wanted for m in makers.get(r, ())}
        needed, done = walk(Graph(graph.drvs, waits_of(needed | extra)), [*wanted, *sorted(extra)], is_valid)
    if orphans:
        raise StoreError(
            f"cannot build: {holes_text(orphans)} is not valid in the store (quarantined by 'kiln store "
            "verify --repair', or deleted) and no derivation of this build makes it: add it again (a "
            "recipe's source: 'kiln build' of the recipe adds it again) or substitute it ('kiln copy "
            "--from URL --to store PATH')"
        )
    # (the waits of what the last walk added: planned now, their inputs checked above)
    return Graph(graph.drvs, waits_of(needed)), sorted(extra)
