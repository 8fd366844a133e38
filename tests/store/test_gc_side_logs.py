"""GC prunes the store's build logs (``store/gcside.py``): a derivation's logs go with
it, and stay while ``kiln log`` can still reach them (its ``.drv`` live, the deriver of a
live output, or named by a root). Real sandboxed builds (bubblewrap, busybox) make the
logs."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store.build import Builder, BuildError, BuildOptions
from kiln.store.buildlogs import LogStore
from kiln.store.buildproduce import check_log_key
from kiln.store.localstore import LocalStore

sys.path.insert(0, str(Path(__file__).parents[1] / "build"))
from buildkit import Graph, add_busybox  # noqa: E402

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]


def busybox_graph(store: LocalStore, tmp_path: Path) -> Graph:
    """A ``Graph`` (tests/build/buildkit.py) over a static busybox added to ``store``."""
    return Graph(store, add_busybox(store, tmp_path))


def build(store: LocalStore, drv: str, **opts) -> None:
    Builder(store, BwrapExecutor(), BuildOptions(**opts), say=lambda m: None).realise([drv])


def log_file(store: LocalStore, key: str) -> Path:
    return store.root / "logs" / (key.rsplit("/", 1)[1] + ".zst")


def test_gc_deletes_the_logs_of_collected_derivations_and_keeps_reachable_ones(store, tmp_path):
    """Built ``kept`` (output rooted: its ``.drv`` stays as its deriver) keeps its log and
    its ``--check`` log; ``gone`` (built, nothing roots it) and ``failed`` (its build
    failed) lose theirs with their ``.drv``; the log of a ``.drv`` a root names keeps it
    though that ``.drv`` is not in the store (``kiln log ROOT`` reads it). What kiln does
    not name so (a user's file, a live writer's temp file) is never touched, and a dry
    run deletes nothing."""
    g = busybox_graph(store, tmp_path)
    kept, kd = g.drv("kept", "echo kept-log; echo k > $out")
    gone, gd = g.drv("gone", "echo gone-log; echo g > $out")
    failed, _ = g.drv("failed", "echo failed-log; exit 3")
    build(store, kept)
    build(store, kept, check=True)  # (a --check: its log beside the build's)
    build(store, gone)
    with pytest.raises(BuildError):
        build(store, failed)
    store.add_root("kept", kd.output_path())
    # a root naming a .drv this store does not have (collected, or never here): kept
    elsewhere = f"{store.store_dir}/{'1' * 32}-elsewhere.drv"
    (store.root / "gcroots" / "named").write_text(elsewhere + "\n")
    src = tmp_path / "log.txt"
    src.write_text("an older build's log\n")
    LogStore(store.root / "logs").save(elsewhere, src)
    mine = [
        store.root / "logs" / "notes.txt",
        store.root / "logs" / f".{'2' * 32}-x.drv.zst.{os.getpid()}.tmp",
    ]
    for f in mine:
        f.write_text("not kiln's to delete\n")
    doomed = sorted(str(log_file(store, k)) for k in (gone, failed))
    kept_logs = [log_file(store, k) for k in (kept, check_log_key(kept), elsewhere)]
    assert all(Path(f).exists() for f in [*doomed, *kept_logs])
    store.close()  # (this process's temp roots go: only the roots count)

    s = LocalStore.open(store.root)
    dry = s.gc(dry_run=True)
    assert sorted(dry.logs) == doomed and all(Path(f).exists() for f in doomed)
    r = s.gc()
    assert sorted(r.logs) == doomed, r.logs
    assert gone in r.deleted and failed in r.deleted and gd.output_path() in r.deleted
    assert not any(Path(f).exists() for f in doomed)
    assert all(f.exists() for f in [*kept_logs, *mine])
    logs = LogStore(s.root / "logs")
    assert logs.open(kept).read() == b"kept-log\n" and logs.open(check_log_key(kept)).read() == b"kept-log\n"
    assert s.gc().logs == ()  # nothing left to prune
    # the root goes: the next collection takes the derivation and its logs
    os.unlink(s.root / "gcroots" / "kept")
    r = s.gc()
    assert kept in r.deleted and sorted(r.logs) == sorted(str(f) for f in kept_logs[:2])
    s.close()


def test_the_log_of_an_imported_output_stays_while_the_output_does(store, tmp_path):
    """An output copied from another store arrives with its deriver recorded but not its
    ``.drv``: ``kiln log OUTPUT`` finds the log through that deriver, so GC keeps the log
    while the output is live, though no ``.drv`` of that name is in the store."""
    g = busybox_graph(store, tmp_path)
    drv, d = g.drv("shipped", "echo shipped-log; echo s > $out")
    build(store, drv)
    out = d.output_path()
    info = store.query(out)
    assert info.deriver == drv and info.references == ()
    other = LocalStore.open(tmp_path / "other")
    other.import_nar(info, store.nar(out))
    other.add_root("shipped", out)
    (other.root / "logs").mkdir(exist_ok=True)
    shutil.copy(log_file(store, drv), log_file(other, drv))
    other.close()
    o = LocalStore.open(tmp_path / "other")
    assert not o.is_valid(drv) and o.query(out).deriver == drv
    assert o.gc().logs == () and log_file(o, drv).exists()
    os.unlink(o.root / "gcroots" / "shipped")
    r = o.gc()
    assert r.deleted == (out,) and r.logs == (str(log_file(o, drv)),)
    assert not log_file(o, drv).exists()
    o.close()
