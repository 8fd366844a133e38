"""``--timeout`` covers processing a build's output, not only the sandbox: a sparse file
of a terabyte takes a moment to make and hours to scan, hash and compress. Past the
deadline the build fails as timed out and nothing of it is registered. Real sandboxes."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time

import pytest

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store.build import Builder, BuildError, BuildOptions
from kiln.store.buildcheck import _hash_until
from kiln.store.stagedbuild import Placed, place

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]

SPARSE = "mkdir $out; busybox truncate -s 1099511627776 $out/big && echo made"


def _build_with_3_s_timeout(store, drv_path: str) -> subprocess.CompletedProcess:  # noqa: ANN001
    """``kiln build --timeout 3 DRV`` as a user runs it; it must fail, and within a minute
    (unbounded, the builds here would take hours)."""
    started = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "kiln", "build", "--no-substitute", "--timeout", "3", drv_path],
        env=dict(os.environ, KILN_HOME=str(store.root)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1, p.stderr
    assert time.monotonic() - started < 60
    return p


def test_a_huge_sparse_output_times_out_instead_of_being_archived_for_hours(store, graph):
    a, ad = graph.drv("sparse", SPARSE)
    p = _build_with_3_s_timeout(store, a)
    assert "timed out: its output took too long to" in p.stderr, p.stderr
    assert "--timeout 3 s covers the build and the processing of its output" in p.stderr
    assert not store.is_valid(ad.output_path())
    assert not store.real_path(ad.output_path()).exists()  # and its tree is gone


def _three_placed(store, graph, tmp_path):  # noqa: ANN001, ANN202 - fixtures
    """Outputs of a (slow to archive), b (built on a) and c (independent), placed as the
    build loop places them; (builder, {name: (drv path, drv, Placed)})."""
    a, ad = graph.drv("slow-to-archive", "mkdir $out; echo x > $out/f")
    b, bd = graph.drv("on-it", "echo $in0 > $out", inputs=[a])
    c, cd = graph.drv("independent", "echo c > $out")
    builder = Builder(store, BwrapExecutor(), BuildOptions(timeout=60), say=lambda m: None)
    placed = {}
    for name, drv_path, drv, refs in (("a", a, ad, []), ("b", b, bd, [ad.output_path()]), ("c", c, cd, [])):
        out = tmp_path / f"built-{name}"
        if name == "a":
            out.mkdir()
            (out / "f").write_text("x\n")
        else:
            out.write_text(f"{refs}\n")
        p = place(store, drv.output_path(), out, refs, drv_path, tmp_path / f"{name}.object")
        assert isinstance(p, Placed)
        placed[name] = (drv_path, drv, p)
    return builder, placed


def test_archiving_past_the_deadline_registers_nothing_and_drops_what_was_built_on_it(store, graph, tmp_path):
    builder, three = _three_placed(store, graph, tmp_path)
    a, ad, _ = three["a"]
    bd, cd = three["b"][1], three["c"][1]
    placed = {k: v[2] for k, v in three.items()}
    # a's build used up its --timeout (nothing left for archiving); b was built on it
    builder._pending.add([placed["a"]], contextlib.ExitStack(), budget=0.0)
    builder._pending.add([placed["b"]], contextlib.ExitStack(), budget=30.0)
    builder._pending.add([placed["c"]], contextlib.ExitStack(), budget=30.0)
    with pytest.raises(BuildError, match="timed out: its output took too long to archive") as e:
        builder._commit_pending()
    assert e.value.drv_path == a and "nothing was registered" in str(e.value)
    assert not store.is_valid(ad.output_path()) and not store.is_valid(bd.output_path())
    assert store.is_valid(cd.output_path())  # the rest of the batch is committed
    assert not builder._pending  # later builds do not count the dropped ones as inputs
    builder._close_bookkeeping_store()
    # the dropped tree stays (a build started meanwhile may have it mounted), unregistered:
    # GC takes it once this process, its placer, has gone


def test_a_dependent_in_a_later_batch_is_dropped_and_the_rest_registered(store, graph, tmp_path):
    """The bookkeeping thread may take a dropped output's batch before its dependent's
    build ends: the dependent comes in a later batch, and was registered against an
    invalid reference (an error that failed the whole batch, an independent output too)."""
    builder, three = _three_placed(store, graph, tmp_path)
    bd, cd = three["b"][1], three["c"][1]
    placed = {k: v[2] for k, v in three.items()}
    builder._pending.add([placed["a"]], contextlib.ExitStack(), budget=0.0)
    with pytest.raises(BuildError, match="took too long to archive"):
        builder._commit_pending()
    builder._pending.add([placed["b"]], contextlib.ExitStack(), budget=30.0)
    builder._pending.add([placed["c"]], contextlib.ExitStack(), budget=30.0)
    builder._commit_pending()  # b is dropped quietly (a's error was reported), c registered
    assert not store.is_valid(bd.output_path()) and store.is_valid(cd.output_path())
    assert not builder._pending
    builder._close_bookkeeping_store()


def test_a_check_stops_hashing_its_rebuild_at_the_deadline(tmp_path):
    tree = tmp_path / "out"
    tree.mkdir()
    with open(tree / "big", "wb") as f:
        f.truncate(64 << 20)
    with pytest.raises(BuildError, match="took too long to hash"):
        _hash_until(tree, time.monotonic() - 1, "/kiln/store/x.drv", 5)
    h = _hash_until(tree, time.monotonic() + 600, "/kiln/store/x.drv", 600)
    from kiln.store import nar

    assert h == nar.hash_path(tree)[0]


def test_a_huge_hard_linked_output_is_unshared_keeping_its_holes_then_times_out(store, graph):
    """A file output hard-linked to another output is copied (``outputinode.unshare_inode``): copied
    byte for byte, outside the deadline, a sparse terabyte filled the disk."""
    a, ad = graph.drv(
        "sparse-linked", "busybox truncate -s 1099511627776 $out; ln $out $dev", outputs=("out", "dev")
    )
    p = _build_with_3_s_timeout(store, a)
    assert "timed out: its output took too long to scan for references" in p.stderr, p.stderr
    assert not store.is_valid(ad.output_path()) and not store.is_valid(ad.output_path("dev"))


def test_unsharing_an_inode_copies_data_not_holes_and_stops_when_told(tmp_path):
    from kiln.store.outputinode import unshare_inode
    from kiln.store.refscan import ScanStopped

    out = tmp_path / "out"
    with open(out, "wb") as f:
        f.write(b"head")
        f.seek(5 << 30)
        f.write(b"middle" * 400_000)  # 2.4 MB of data: the stop is asked per MiB
        f.truncate(1 << 40)
    os.chmod(out, 0o751)
    os.link(out, tmp_path / "dev")
    with pytest.raises(ScanStopped):
        unshare_inode(out, lambda: True)
    assert os.stat(out).st_nlink == 2 and sorted(os.listdir(tmp_path)) == ["dev", "out"]  # nothing left over
    unshare_inode(out, lambda: False)
    st = os.stat(out)
    assert st.st_nlink == 1 and st.st_size == 1 << 40 and st.st_blocks * 512 < 16 << 20
    assert os.stat(tmp_path / "dev").st_nlink == 1 and st.st_mode & 0o777 == 0o751
    with open(out, "rb") as f:
        assert f.read(4) == b"head" and f.read(10) == bytes(10)
        f.seek(5 << 30)
        assert f.read(2_400_000) == b"middle" * 400_000 and f.read(10) == bytes(10)


def test_the_timeout_message_names_the_limit_or_says_there_was_one():
    from kiln.store.buildproduce import output_too_slow

    assert "(--timeout 2.5 s covers the build" in output_too_slow("/d.drv", 2.5, "archive")
    assert "(the time limit covers the build" in output_too_slow("/d.drv", None, "hash")
