"""Loading a derivation graph from the store and ordering it for building.

Theory of operation: ``load_graph`` reads every ``.drv`` reachable from the requested
ones (text files in the store), parses them once and returns a ``Graph``: the
derivations by path plus, for each, the input derivations it waits on. ``plan`` then
decides what must run: a derivation whose outputs are all valid is done; otherwise it
must be built, and only then are *its* inputs needed (so a valid top-level output never
pulls in its build closure — the no-op path stays cheap).

``Graph.ready_order`` is a deterministic topological order (Kahn's algorithm with the
ready set sorted by path), used for ``--jobs 1`` and for tests; the parallel scheduler
(``buildsched``) walks ``Graph.inputs_of`` itself. ``refs_first`` orders one
derivation's outputs for registration, references first.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .derivation import Derivation, Output, check_output_paths
from .drvparse import parse
from .errors import FormatError, StoreError
from .hashes import Hash
from .paths import StorePath


@dataclass(frozen=True, slots=True)
class Graph:
    """The derivations by path; ``waits`` adds, per derivation, others it must wait for
    besides its input derivations (those that make again what is missing from the
    closure of an input it takes as it is: ``buildholes.with_holes``)."""

    drvs: dict[str, Derivation]
    waits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def inputs_of(self, drv_path: str) -> list[str]:
        return [p for p, _ in self.drvs[drv_path].input_drvs] + list(self.waits.get(drv_path, ()))

    def ready_order(self, subset: Iterable[str]) -> list[str]:
        """Topological order (inputs first) of ``subset``, ties broken by path."""
        want = set(subset)
        indeg = {p: 0 for p in want}
        users: dict[str, list[str]] = {p: [] for p in want}
        for p in want:
            for i in self.inputs_of(p):
                if i in want:
                    indeg[p] += 1
                    users[i].append(p)
        # a heap, not a list sorted after each step: a fan-in of N leaves is O(N log N)
        ready = [p for p, n in indeg.items() if n == 0]
        heapq.heapify(ready)
        out: list[str] = []
        while ready:
            p = heapq.heappop(ready)
            out.append(p)
            for u in users[p]:
                indeg[u] -= 1
                if indeg[u] == 0:
                    heapq.heappush(ready, u)
        if len(out) != len(want):
            raise StoreError("derivation graph has a cycle")
        return out


def load_graph(roots: Iterable[str], read_text: Callable[[str], str], store_dir: str) -> Graph:
    """Parse every ``.drv`` reachable from ``roots``. ``read_text`` returns a .drv's text.

    Every derivation's declared output paths are checked against its contents
    (``derivation.check_output_paths``): the build loop, ``--check`` and the rebuilders
    trust a ``.drv`` only for the outputs it really defines."""
    drvs: dict[str, Derivation] = {}
    stack = list(roots)
    while stack:
        p = stack.pop()
        if p in drvs:
            continue
        sp = StorePath.parse(p, store_dir)
        if not sp.name.endswith(".drv"):
            raise StoreError(f"{p} is not a derivation (.drv) path")
        drv = parse(read_text(p), sp.name[: -len(".drv")], store_dir)
        drvs[p] = drv
        stack.extend(i for i, _ in drv.input_drvs if i not in drvs)
    memo: dict[str, Hash] = {}
    for p, drv in drvs.items():
        try:
            check_output_paths(drv, drvs.__getitem__, memo)
        except (FormatError, ValueError, KeyError) as e:  # a corrupt hash in a crafted .drv, too
            raise StoreError(f"{p}: refusing the derivation: {e}") from None
    return Graph(drvs)


def plan(graph: Graph, roots: Iterable[str], is_valid: Callable[[str], bool]) -> list[str]:
    """The derivations that must be built (inputs first) to realise ``roots``."""
    return graph.ready_order(walk(graph, roots, is_valid)[0])


def walk(graph: Graph, roots: Iterable[str], is_valid: Callable[[str], bool]) -> tuple[set[str], set[str]]:
    """``(to build, taken as they are)`` for ``roots``: a derivation whose outputs are all
    valid is done; otherwise it must be built, and only then are *its* inputs needed.
    The first is what ``plan`` orders; the second the derivations whose outputs it relies
    on as they are (the roots already valid and the valid inputs of those it builds:
    their closures are what the builds mount and what a no-op build hands back)."""
    needed: set[str] = set()
    done: set[str] = set()
    stack = list(roots)
    while stack:
        p = stack.pop()
        if p in needed or p in done:
            continue
        drv = graph.drvs[p]
        if all(is_valid(o.path) for _, o in drv.outputs):
            done.add(p)
            continue
        needed.add(p)
        stack.extend(graph.inputs_of(p))
    return needed, done


def refs_first(
    drv_path: str, drv: Derivation, produced: Mapping[str, tuple[Path, list[str]]]
) -> list[tuple[str, Output]]:
    """``drv.outputs`` ordered so an output comes after the sibling outputs it refers to
    (a ``dev`` output naming ``out``): each is registered after what it references.
    ``BuildError`` for a cycle between outputs, which Nix refuses too."""
    from .buildproduce import BuildError

    by_path = {o.path: name for name, o in drv.outputs}
    outs = dict(drv.outputs)
    deps = {n: {by_path[r] for r in produced[n][1] if r in by_path and by_path[r] != n} for n in outs}
    order: list[tuple[str, Output]] = []
    while deps:
        ready = sorted(n for n, d in deps.items() if not d)
        if not ready:
            raise BuildError(
                drv_path, f"{drv_path}: cycle in the references between its outputs {', '.join(sorted(deps))}"
            )
        for n in ready:
            order.append((n, outs[n]))
            del deps[n]
        for d in deps.values():
            d.difference_update(ready)
    return order
