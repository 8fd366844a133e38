"""A build whose program needs a library a dependency holds, but has no run path to it
(``-L${dep}/lib`` without ``-Wl,-rpath``), is registered with a warning naming the
program, the library and the fix (``store/libcheck.py``): it linked, then fails "cannot
open shared object file" when run, and does not even reference the dependency. A run
path there (absolute, or ``$ORIGIN``-relative to the package's own ``lib/``) is no
warning, nor is a library no input holds (the C library). Real sandboxed builds
(busybox) writing crafted ELF files."""

from __future__ import annotations

import shutil

import pytest
from elfkit import crafted_dynamic, printf_octal

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store.build import Builder, BuildOptions

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]


def _realise(store, drv: str) -> list[str]:
    said: list[str] = []
    Builder(store, BwrapExecutor(), BuildOptions(), say=said.append).realise([drv])
    return [m for m in said if "run path" in m]


def _dep(graph) -> tuple[str, str]:
    lib = printf_octal(crafted_dynamic([b"libc.so.6"], etype=3, interp=None))
    d, dd = graph.drv("libgreet", f"mkdir -p $out/lib; printf '{lib}' > $out/lib/libgreet.so.1")
    return d, dd.output_path()


def test_a_program_without_a_run_path_to_its_dependencys_library_is_warned_about(store, graph) -> None:
    dep, dep_out = _dep(graph)
    prog = printf_octal(crafted_dynamic([b"libgreet.so.1", b"libc.so.6"]))
    p, pd = graph.drv("greeter", f"mkdir -p $out/bin; printf '{prog}' > $out/bin/greeter", inputs=[dep])
    [warning] = _realise(store, p)
    out = pd.output_path()
    assert warning.startswith(
        f"warning: {p}: {out}/bin/greeter needs libgreet.so.1, which {dep_out}/lib holds"
    )
    assert f"link with -Wl,-rpath,{dep_out}/lib" in warning
    assert dep_out not in store.query(out).references  # (what the warning says: not kept alive)


def test_a_run_path_there_is_no_warning(store, graph) -> None:
    dep, dep_out = _dep(graph)
    prog = printf_octal(crafted_dynamic([b"libgreet.so.1"], f"/nowhere:{dep_out}/lib".encode()))
    p, pd = graph.drv("greeter2", f"mkdir -p $out/bin; printf '{prog}' > $out/bin/greeter", inputs=[dep])
    assert _realise(store, p) == []
    assert dep_out in store.query(pd.output_path()).references


def test_the_packages_own_library_needs_origin(store, graph) -> None:
    own = printf_octal(crafted_dynamic([b"libown.so"], b"$ORIGIN/../lib"))
    bare = printf_octal(crafted_dynamic([b"libown.so"]))
    lib = "mkdir -p $out/lib $out/bin; echo x > $out/lib/libown.so"
    p, pd = graph.drv("own", f"{lib}; printf '{own}' > $out/bin/a")
    assert _realise(store, p) == []
    q, qd = graph.drv("own-bare", f"{lib}; printf '{bare}' > $out/bin/a; cp $out/bin/a $out/bin/b")
    [warning] = _realise(store, q)
    out = qd.output_path()
    assert f"{out}/bin/a needs libown.so, which {out}/lib holds" in warning
    assert "(and 1 more such library)" in warning


def test_a_library_needing_its_sibling_is_no_warning(store, graph) -> None:
    """A shared library's own needs are met by what the program that loads it loads (the
    C runtime's libraries need libc.so.6 beside them, with no run path): not warned."""
    lib = printf_octal(crafted_dynamic([b"libc.so.6"], etype=3, interp=None))
    p, _ = graph.drv(
        "runtime", f"mkdir -p $out/lib; echo x > $out/lib/libc.so.6; printf '{lib}' > $out/lib/libanl.so.1"
    )
    assert _realise(store, p) == []
