"""``--check --vary`` varies the directory order of a build's *inputs* too (sources,
dependencies, the toolchain), not only of ``/build`` and its outputs: the order of a
store path's entries is its file system's (ext4's hash seed, tmpfs), so a build that
archives an input got another NAR hash on another store while ``--vary`` said
"bit-for-bit identical". Inputs are now read through a read-only disorderfs view of the
store, and every varied listing is the reverse of the file system's (a shuffle of two
entries gives the same order half the time). Real bubblewrap, real disorderfs."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store.build import Builder, BuildError, BuildOptions, NotDeterministic
from kiln.store.mounts import mounts_below
from kiln.store.vary import reordered

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
    pytest.mark.skipif(
        shutil.which("disorderfs") is None or not os.path.exists("/dev/fuse"), reason="disorderfs not usable"
    ),
]


def builder(store, **kw) -> Builder:
    return Builder(store, BwrapExecutor(), BuildOptions(**kw), say=lambda m: None)


def _caught_only_when_varied(store, drv: str) -> None:
    builder(store).realise([drv])
    builder(store, check=True).realise([drv])  # same store, same order: not seen
    with pytest.raises(NotDeterministic, match="contents differ"):
        builder(store, check=True, vary=True).realise([drv])
    _nothing_left(store)


def _nothing_left(store) -> None:
    assert mounts_below(store.root) == []
    assert not list((store.root / "tmp").glob("vary-*"))


def test_vary_catches_dependence_on_a_dependencys_directory_order(store, graph):
    # two entries: the reverse order always differs (a shuffle would not, half the time)
    dep, _ = graph.drv("two-files", "mkdir $out; echo a > $out/a; echo b > $out/b")
    use, _ = graph.drv("lists-dep", "find $in0 > $out", inputs=[dep])
    _caught_only_when_varied(store, use)


def test_vary_catches_dependence_on_a_sources_directory_order(store, graph):
    # the static busybox is an input source (``input_srcs``); PATH is its bin/
    use, _ = graph.drv("lists-src", "find $PATH > $out")
    _caught_only_when_varied(store, use)


def test_vary_catches_dependence_on_the_toolchains_directory_order(store, graph):
    tool, _ = graph.drv(
        "toolchain",
        "mkdir -p $out/usr/share; echo a > $out/usr/share/a; echo b > $out/usr/share/b",
        env={"kilnRootfs": "1"},
    )
    use, _ = graph.drv("lists-usr", "find /usr/share > $out", inputs=[tool])
    _caught_only_when_varied(store, use)


def test_inputs_stay_read_only_and_a_failed_varied_rebuild_leaves_no_mount(store, graph):
    dep, _ = graph.drv("dep", "mkdir $out; echo a > $out/a")
    probe = "touch $in0/new 2>/dev/null && echo writable > $out || echo read-only > $out; cat $in0/a >> $out"
    use, d = graph.drv("writes-dep", probe, inputs=[dep])
    builder(store).realise([use])
    builder(store, check=True, vary=True).realise([use])  # read-only in both rounds: identical
    assert store.real_path(d.output_path("out")).read_text() == "read-only\na\n"
    assert not (store.real_path(graph.drvs[dep].output_path("out")) / "new").exists()
    _nothing_left(store)
    # only the varied round (umask 077) fails: its mounts are taken down all the same
    fails, _ = graph.drv("fails-varied", 'cat $in0/a > $out; [ "$(umask)" != 0077 ]', inputs=[dep])
    builder(store).realise([fails])
    with pytest.raises(BuildError, match="failed"):
        builder(store, check=True, vary=True).realise([fails])
    _nothing_left(store)
    assert store.verify().ok


def test_reordered_view_is_reversed_read_only_and_always_unmounted(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    for name in "abcdefg":
        (src / name).write_text(name)
    build = tmp_path / "build"
    build.mkdir()
    point = tmp_path / "view"
    with reordered([build], view=(src, point)):
        assert os.listdir(point) == os.listdir(src)[::-1]
        with pytest.raises(OSError) as e:
            (point / "new").write_text("x")
        assert e.value.errno == errno.EROFS
        (build / "f").write_text("y")  # the in-place mount stays writable
        st, real = os.stat(point / "a"), os.stat(src / "a")
        # another device; inode numbers are passed through (not varied: a known limit)
        assert st.st_dev != real.st_dev and st.st_ino == real.st_ino
    assert mounts_below(tmp_path) == [] and not point.exists()
    assert (build / "f").read_text() == "y" and not (tmp_path / "build.real").exists()
    with pytest.raises(RuntimeError), reordered([build], view=(src, point)):
        assert len(mounts_below(tmp_path)) == 2
        raise RuntimeError("the build failed")
    assert mounts_below(tmp_path) == [] and not point.exists() and (build / "f").exists()
