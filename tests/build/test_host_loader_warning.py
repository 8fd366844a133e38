"""A build whose output holds an ELF program that asks for a loader outside the store
(the host's ``/lib64/ld-linux-x86-64.so.2``: linked without the toolchain's cc wrappers)
is registered with a warning naming the file and the loader; a program without one is
not warned about. Real sandboxed builds (busybox), the ELF files written by the build."""

from __future__ import annotations

import shutil

import pytest
from elfkit import crafted, printf_octal

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store.build import Builder, BuildOptions

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]


def _build(store, graph, script: str) -> tuple[list[str], str]:
    said: list[str] = []
    d, dd = graph.drv("prog", script)
    Builder(store, BwrapExecutor(), BuildOptions(), say=said.append).realise([d])
    assert store.is_valid(dd.output_path())
    return said, dd.output_path()


def test_a_program_asking_for_the_hosts_loader_is_warned_about(store, graph):
    prog = printf_octal(crafted(b"/lib64/ld-linux-x86-64.so.2\0"))
    said, out = _build(
        store, graph, f"mkdir -p $out/bin; printf '{prog}' > $out/bin/a; cp $out/bin/a $out/bin/b"
    )
    warnings = [m for m in said if m.startswith("warning:") and "program loader" in m]
    assert len(warnings) == 1, said
    assert f"{out}/bin/a asks for the host's program loader /lib64/ld-linux-x86-64.so.2" in warnings[0]
    assert "(and 1 more program(s) in it)" in warnings[0] and "cc wrappers" in warnings[0]


def test_a_program_whose_loader_is_in_the_store_is_not(store, graph, busybox_path):
    # what every program linked by the toolchain's cc wrappers asks for (here: under an
    # input of the build, so also a reference, not a stray)
    prog = printf_octal(crafted(f"{busybox_path}/lib/ld-linux-x86-64.so.2".encode() + b"\0"))
    said, out = _build(store, graph, f"mkdir -p $out/bin; printf '{prog}' > $out/bin/a")
    assert not [m for m in said if "program loader" in m], said
    assert busybox_path in store.query(out).references


def test_a_file_without_an_interpreter_or_a_shared_library_is_not(store, graph):
    # libc.so.6 has a PT_INTERP too (it runs as a program), and so do the copies of it a
    # runtime package holds: a library's name is not warned about
    lib = printf_octal(crafted(b"/lib64/ld-linux-x86-64.so.2\0"))
    said, _ = _build(
        store,
        graph,
        f"mkdir -p $out/bin $out/lib; cp /bin/busybox $out/bin/; echo text > $out/f; "
        f"printf '{lib}' > $out/lib/libc.so.6; cp $out/lib/libc.so.6 $out/lib/libx.so",
    )
    assert not [m for m in said if "program loader" in m], said
