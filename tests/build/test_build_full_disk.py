"""A build that fills the disk fails alone, named: the log kiln cannot write is that
build's error (with -k the builds beside it still run), not a bare ``No space left on
device`` that stops the whole run. The store is on a small loop-mounted ext4 (root)."""

from __future__ import annotations

from pathlib import Path

import pytest
from buildkit import Graph, add_busybox
from fskit import small_file_system

from kiln.sandbox import BwrapExecutor
from kiln.store.build import Builder, BuildFailures, BuildOptions
from kiln.store.localstore import LocalStore


def test_a_build_that_fills_the_disk_fails_alone(tmp_path: Path) -> None:
    with small_file_system(tmp_path, 48) as mnt:
        store = LocalStore.open(mnt / "home")
        try:
            graph = Graph(store, add_busybox(store, tmp_path))
            filler, _ = graph.drv(
                "filler",
                "dd if=/dev/zero of=big bs=1M 2>/dev/null; yes filling | head -c 20000000; echo x > $out",
            )
            other, od = graph.drv("other", "echo fine > $out")
            said: list[str] = []
            b = Builder(store, BwrapExecutor(), BuildOptions(jobs=1, keep_going=True), say=said.append)
            with pytest.raises(BuildFailures) as e:
                b.realise([filler, other])
            assert list(e.value.failed) == [filler], str(e.value)
            errors = [m for m in said if m.startswith("error: ")]
            assert any(filler in m and "No space left on device" in m for m in errors), said
            assert store.real_path(od.output_path()).read_text() == "fine\n"
        finally:
            store.close()
