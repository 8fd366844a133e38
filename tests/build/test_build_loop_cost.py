"""What the build loop does per derivation stays constant along a chain: work that grew
with the chain's length (the provenance hook re-checked every input's deriver by hashing
its whole input closure, O(N²) over a chain of N) or was done twice (the input closure
walked twice, each dependency's row queried by every build that uses it). Counted on a
real store with real sandboxes; the counters only pass calls through."""

from __future__ import annotations

import threading
from collections import Counter

from kiln.buildprov import ProvenanceHook
from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store import attestations, derivation, intoto
from kiln.store.build import Builder, BuildOptions
from kiln.store.localstore import LocalStore
from kiln.store.signing import SecretKey
from kiln.store.stagedbuild import Pending, Placed, closure

N = 16


def _chain(graph, n: int) -> list[str]:
    top, _ = graph.drv("c0", "echo 0 > $out")
    chain = [top]
    for i in range(1, n):
        top, _ = graph.drv(f"c{i}", f"cat $in0 > $out; echo {i} >> $out", inputs=[top])
        chain.append(top)
    return chain


def _on_bookkeeping_thread() -> bool:
    return threading.current_thread().name.startswith("kiln-bookkeeping")


def test_provenance_hook_costs_the_same_per_derivation_along_a_chain(store, graph, busybox_path, monkeypatch):
    chain = _chain(graph, N)
    hashed = Counter()
    queried = Counter()
    real_hash, real_query = derivation.hash_modulo, LocalStore.query

    def counting_hash(drv, *a, **kw):
        if _on_bookkeeping_thread():
            hashed[drv.name] += 1
        return real_hash(drv, *a, **kw)

    def counting_query(self, path):
        if _on_bookkeeping_thread():
            queried[str(path)] += 1
        return real_query(self, path)

    monkeypatch.setattr(derivation, "hash_modulo", counting_hash)
    monkeypatch.setattr(LocalStore, "query", counting_query)
    hook = ProvenanceHook(
        store, SecretKey.generate("test-1"), "chain.recipe", {}, None, False, 1, {"executor": "bubblewrap"}
    )
    b = Builder(store, BwrapExecutor(), BuildOptions(), after_build=hook, say=lambda m: None)
    hook.get_drv = b.get_drv
    b.realise([chain[-1]])
    monkeypatch.undo()
    # each build checks its input's deriver: one hash of it (its own inputs are memoized),
    # not one per derivation below it (N²/2 = 128 for N = 16)
    assert sum(hashed.values()) <= 2 * N, hashed
    # busybox is a dependency of every build: its row is read once, not once per build
    assert queried[busybox_path] == 1, queried[busybox_path]
    # an output: committed, queried by its hook (once for signature and provenance), by
    # add_signatures, and once as the next build's dependency
    assert max(queried.values()) <= 4, queried
    # and the provenance says what a fresh computation says
    for p in chain:
        out = graph.drvs[p].output_path()
        st = intoto.parse_statement(attestations.read(store, out, "provenance").payload)
        deps = st.predicate["buildDefinition"]["resolvedDependencies"]
        fresh = attestations.build_dependencies(store, p)
        assert sorted(map(_key, deps)) == sorted(map(_key, fresh))
        inputs = {busybox_path} | {graph.drvs[i].output_path() for i, _ in graph.drvs[p].input_drvs}
        assert {d["name"] for d in deps} == {p.rsplit("/", 1)[1]} | {i.rsplit("/", 1)[1] for i in inputs}
        assert store.query(out).sigs


def _key(dep: dict) -> tuple:
    return dep["name"], sorted(dep["digest"].items()), dep.get("url")


class _CountingStore:
    """Passes every call to ``store``; counts its closure walks."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self.walks = 0

    def closure_with_holes(self, paths):
        self.walks += 1
        return self.store.closure_with_holes(paths)

    def closure(self, paths):
        self.walks += 1
        return self.store.closure(paths)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_input_closure_with_pending_outputs_is_walked_once(store, graph, busybox_path):
    a, ad = graph.drv("a", "echo a > $out")
    graph.drv("b", "cat $in0 > $out", inputs=[a])
    Builder(store, BwrapExecutor(), BuildOptions(), say=lambda m: None).realise([a])
    # a pending output (placed, not committed) referring to a valid one and to busybox
    pending = Pending()
    pend = f"{store.store_dir}/{'0' * 32}-pending"
    pending.add([Placed(pend, (ad.output_path(), busybox_path), None, store.root / "x", (0, 0, 0))], None)
    counting = _CountingStore(store)
    got = closure(counting, [pend, busybox_path], pending)
    assert counting.walks == 1  # (was 2: once for holes, once more for the answer)
    walked = store.closure([ad.output_path(), busybox_path])
    assert got == [*walked, pend]
    from kiln.store.stagedbuild import closure_parts

    # (``make_spec`` checks again only the part that came from pending outputs)
    assert closure_parts(store, [pend], pending) == (walked, [pend])


def test_dependency_cache_answers_as_the_store_does(store, graph, busybox_path):
    """``DependencyCache.closure`` merges memoized per-path closures: the same list, in the
    same order, as ``store.closure`` over every subset of a graph with shared references."""
    from itertools import combinations

    from kiln.store.depscache import DependencyCache

    a, _ = graph.drv("a", "echo a > $out")
    b, _ = graph.drv("b", "echo $in0 > $out", inputs=[a])
    c, _ = graph.drv("c", "echo $in0 > $out", inputs=[a])
    d, _ = graph.drv("d", "echo $in0 $in1 > $out", inputs=[c, b])
    Builder(store, BwrapExecutor(), BuildOptions(), say=lambda m: None).realise([d])
    outs = [graph.drvs[p].output_path() for p in (a, b, c, d)] + [busybox_path]
    assert len(store.closure([outs[3]])) == 4  # (d refers to b and c, both to a)
    cache = DependencyCache(store)
    for k in range(1, len(outs) + 1):
        for subset in combinations(outs, k):
            assert cache.closure(subset) == store.closure(subset), subset
            assert cache.closure(reversed(subset)) == store.closure(subset), subset
    assert cache.query(outs[1]) == store.query(outs[1])


def test_a_prepared_build_dir_is_used_as_it_is(store, graph):
    """``BuildDirs`` makes a build's ``build/``, ``store/`` (0755, no ACL) and empty log
    ahead of time: building in it then creates no entry in it and changes neither
    directory (``make_spec(dirs_made=True)`` leaves them, the log is opened, not made)."""
    import os
    import time

    from kiln.store.buildtmp import LOG_NAME, BuildDirs
    from kiln.store.sandboxrun import make_spec

    _, d = graph.drv("x", "echo x > $out")
    dirs = BuildDirs(store.root / "tmp", store.gc_lock_path)
    dirs.prepare()
    tmp = dirs.take()
    try:
        subs = [tmp / "build", tmp / "store"]
        assert all(os.stat(s).st_mode & 0o7777 == 0o755 and not os.listxattr(s) for s in subs)
        assert (tmp / LOG_NAME).stat().st_size == 0
        before = [(os.stat(p).st_mtime_ns, os.stat(p).st_ctime_ns) for p in (tmp, *subs)]
        time.sleep(0.05)  # (past the file system's timestamp granularity)
        make_spec(store, d, tmp, BuildOptions(), graph.drvs.__getitem__, dirs_made=True)
        with open(tmp / LOG_NAME, "wb"):
            pass
        assert [(os.stat(p).st_mtime_ns, os.stat(p).st_ctime_ns) for p in (tmp, *subs)] == before
    finally:
        dirs.release(tmp)
    assert not tmp.exists()


def test_hook_markers_are_held_by_the_bookkeeping_thread_before_the_commit(store, graph, monkeypatch):
    """Making a hook marker creates a file (an inode on the journal): the committing
    bookkeeping thread does it, not the build thread, and still before the commit that
    makes the outputs valid (``hookmarks``: a kill after the commit leaves a marker)."""
    from kiln.store import hookmarks, stagedbuild

    chain = _chain(graph, 3)
    holders: list[str] = []
    unmarked: list[str] = []
    real_hold, real_commit = hookmarks.hold, stagedbuild.commit

    def hold(st, paths):
        holders.append(threading.current_thread().name)
        return real_hold(st, paths)

    def commit(st, staged):
        for s in staged:
            marker = store.root / "locks" / f"{s.info.path.rsplit('/', 1)[1][:32]}.hook"
            if not marker.exists() or store.is_valid(s.info.path):
                unmarked.append(s.info.path)
        return real_commit(st, staged)

    monkeypatch.setattr(hookmarks, "hold", hold)
    monkeypatch.setattr(stagedbuild, "commit", commit)
    hooked: list[str] = []

    def hook(drv_path, drv, outputs, started, finished, store=None):
        hooked.append(drv_path)

    Builder(store, BwrapExecutor(), BuildOptions(), after_build=hook, say=lambda m: None).realise([chain[-1]])
    assert hooked == chain and not unmarked
    assert len(holders) == 3 and all(h.startswith("kiln-bookkeeping") for h in holders), holders
    assert not list((store.root / "locks").glob("*.hook"))  # (each removed once its hook ran)
