"""An output kiln cannot process on the host (paths that fit PATH_MAX as
``/kiln/store/<base>/...`` in the sandbox but not under the host's longer build dir) is
that build's failure: a ``BuildError`` naming the derivation, the output's store path and
the file (shortened, relative to the output), so ``-k`` builds the rest and ``-K`` keeps
the build dir; it was a raw ``OSError`` with a host path of kilobytes that stopped every
build. Real sandboxed builds (busybox)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from buildkit import APPLETS, BUSYBOX, Graph

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store.build import Builder, BuildError, BuildFailures, BuildOptions
from kiln.store.localstore import LocalStore

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]

#: 3,990 bytes below the output: fits PATH_MAX inside the sandbox, not under a host
#: build dir more than ~110 bytes long (the store's home below is made long enough)
DEEP = "/".join(["a" * 199] * 10) + "/" + "/".join(["b" * 198] * 10)


@pytest.fixture
def long_home(tmp_path: Path):
    """A store whose home's path is 200 bytes longer than ``tmp_path``, and a graph in it."""
    s = LocalStore.open(tmp_path / ("h" * 200) / "home")
    d = tmp_path / "bb"
    (d / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, d / "bin" / "busybox")
    for a in APPLETS:
        os.symlink("busybox", d / "bin" / a)
    yield s, Graph(s, s.add_path(d, "busybox-static").path)
    s.close()


def test_a_tree_too_deep_for_the_host_fails_that_build_named(long_home):
    store, graph = long_home
    d, dd = graph.drv("deep", f"mkdir -p $out/{DEEP}; echo x > $out/{DEEP}/f")
    with pytest.raises(BuildError) as e:
        Builder(store, BwrapExecutor(), BuildOptions(), say=lambda m: None).realise([d])
    msg = str(e.value)
    assert msg.startswith(f"{d}: cannot ") and dd.output_path() in msg, msg
    assert "File name too long" in msg and f"{'a' * 60}...{'b' * 60}" in msg and "bytes)" in msg, msg
    assert str(store.root) not in msg and "builder for" not in msg and len(msg) < 1200, msg


def test_keep_going_builds_the_rest_and_keep_failed_keeps_the_dir(long_home):
    store, graph = long_home
    d, dd = graph.drv("deep", f"mkdir -p $out/{DEEP}; echo x > $out/{DEEP}/f")
    good = [graph.drv(f"good{i}", f"echo {i} > $out") for i in range(2)]
    said: list[str] = []
    opts = BuildOptions(keep_going=True, keep_failed=True)
    with pytest.raises(BuildFailures) as e:
        Builder(store, BwrapExecutor(), opts, say=said.append).realise([d, *(g for g, _ in good)])
    assert list(e.value.failed) == [d]
    assert all(store.is_valid(gd.output_path()) for _, gd in good)
    kept = [
        ln.split("kept build directory: ", 1)[1] for ln in str(e.value.failed[d]).split("\n") if "kept" in ln
    ]
    assert kept and Path(kept[0]).is_dir() and "kiln-failed-deep-" in kept[0], e.value.failed[d]
    assert not store.is_valid(dd.output_path())


def test_canonicalising_such_a_tree_is_a_store_error_naming_the_output(tmp_path):
    """What the build loop canonicalises (``stagedbuild.place``; the build loop's own call
    is to use ``canonicalise_named`` too): an ``OSError`` becomes a ``StoreError``."""
    from kiln.store.errors import StoreError
    from kiln.store.outputerrors import canonicalise_named

    tree = tmp_path / "out"
    tree.mkdir()
    fd = os.open(tree, os.O_RDONLY)
    for _ in range(20):  # made through directory fds: 20 x 250 bytes, past PATH_MAX from here
        os.mkdir("d" * 250, dir_fd=fd)
        nfd = os.open("d" * 250, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)
    with pytest.raises(StoreError) as e:
        canonicalise_named(tree, "/kiln/store/" + "0" * 32 + "-out")
    msg = str(e.value)
    assert msg.startswith(f"cannot canonicalise output /kiln/store/{'0' * 32}-out: File name too long: d"), (
        msg
    )
    assert str(tmp_path) not in msg and "bytes)" in msg, msg
    shutil.rmtree(tree)
