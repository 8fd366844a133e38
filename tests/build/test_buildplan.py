"""``store.buildplan``: loading a derivation graph from the store and ordering it.

Pure planning (no sandbox): derivations are real, written to a real store, and the
validity of outputs is the store's."""

from __future__ import annotations

import pytest
from buildkit import Graph as Maker

from kiln.store.buildplan import Graph, load_graph, plan
from kiln.store.errors import StoreError
from kiln.store.localstore import LocalStore


@pytest.fixture
def made(tmp_path):
    store = LocalStore.open(tmp_path / "store")
    bb = tmp_path / "bb"
    (bb / "bin").mkdir(parents=True)
    (bb / "bin" / "busybox").write_bytes(b"not run here")
    return store, Maker(store, store.add_path(bb, "busybox").path)


def _load(store, roots):
    return load_graph(roots, lambda p: store.real_path(p).read_text(), store.store_dir)


def test_ready_order_is_dependencies_first_ties_by_path(made):
    store, g = made
    leaves = [g.drv(f"leaf{i}", "true")[0] for i in range(50)]
    mid = g.drv("mid", "true", leaves[:10])[0]
    top = g.drv("top", "true", [mid, *leaves[10:]])[0]
    graph = _load(store, [top])
    assert set(graph.drvs) == {*leaves, mid, top}
    order = graph.ready_order(graph.drvs)
    pos = {p: i for i, p in enumerate(order)}
    assert all(pos[d] < pos[p] for p in order for d in graph.inputs_of(p))
    assert order == _reference_order(graph) and order[-1] == top
    assert graph.ready_order(graph.drvs) == order  # deterministic


def _reference_order(graph: Graph) -> list[str]:
    """Kahn's algorithm, literally: repeatedly take the smallest path whose inputs are
    all taken (quadratic; the implementation uses a heap)."""
    left, out = set(graph.drvs), []
    while left:
        p = min(p for p in left if not any(i in left for i in graph.inputs_of(p)))
        out.append(p)
        left.remove(p)
    return out


def _chain(store, g) -> tuple[str, str, str, Graph]:
    """Derivations a <- b <- c and their loaded graph."""
    a = g.drv("a", "true")[0]
    b = g.drv("b", "true", [a])[0]
    c = g.drv("c", "true", [b])[0]
    return a, b, c, _load(store, [c])


def test_ready_order_of_a_subset_and_a_cycle(made):
    a, b, c, graph = _chain(*made)
    assert graph.ready_order([c, b]) == [b, c]  # inputs outside the subset are ignored
    looped = Graph({**graph.drvs})
    da = looped.drvs[a]
    looped.drvs[a] = type(da)(**{**{f: getattr(da, f) for f in da.__slots__}, "input_drvs": ((c, ("out",)),)})
    with pytest.raises(StoreError, match="cycle"):
        looped.ready_order(looped.drvs)


def test_plan_skips_what_is_valid_and_what_only_it_needs(made):
    store, _ = made
    a, b, c, graph = _chain(*made)
    assert plan(graph, [c], store.is_valid) == [a, b, c]
    b_out = graph.drvs[b].output_path("out")
    # b's output valid: c needs only b, so a is not built either
    assert plan(graph, [c], lambda p: p == b_out or store.is_valid(p)) == [c]
    with pytest.raises(StoreError, match="not a derivation"):
        _load(store, [b_out])
