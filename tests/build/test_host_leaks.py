"""What a build sees of the host, from kiln's own setup. Store paths that are symlinks, as
build inputs: made as symlinks in the sandbox, never bind-mounted (a bind mount follows its source, so ``ln -s /etc $out`` used to show the
host's /etc to every build using that output, and a toolchain linking to / the host's
/usr). The modes of /build and the store dir. Real bwrap, real store."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.sandbox.errors import SandboxError
from kiln.store.build import Builder, BuildError, BuildOptions


def _builder(store) -> Builder:
    return Builder(store, BwrapExecutor(), BuildOptions(), say=lambda m: None)


def test_a_symlink_to_a_host_directory_shows_nothing_of_the_host(store, graph, tmp_path):
    secret = tmp_path / "host-only"
    secret.mkdir()
    (secret / "secret").write_text("host data\n")
    link, _ = graph.drv("hostlink", f"ln -s {secret} $out")
    reader, rd = graph.drv(
        "reader",
        'if [ -L "$in0" ]; then echo link; fi > $out; '
        'readlink "$in0" >> $out; cat "$in0/secret" >> $out 2>/dev/null || echo unreadable >> $out',
        inputs=[link],
    )
    _builder(store).realise([reader])
    out = store.real_path(rd.output_path()).read_text().split("\n")
    assert out[:3] == ["link", str(secret), "unreadable"], out


def test_a_symlink_to_another_store_path_resolves_inside_the_sandbox(store, graph):
    a, ad = graph.drv("a", "echo content-of-a > $out")
    alias, _ = graph.drv("alias", f"ln -s {ad.output_path()} $out", inputs=[a])
    user, ud = graph.drv("user", "cat $in0 > $out", inputs=[alias])
    _builder(store).realise([user])
    assert store.real_path(ud.output_path()).read_text() == "content-of-a\n"


def test_a_toolchain_that_is_a_symlink_is_refused(store, graph):
    tool, _ = graph.drv("toolchain", "ln -s / $out", env={"kilnRootfs": "1"})
    user, _ = graph.drv("user", "ls /usr/bin > $out", inputs=[tool])
    with pytest.raises((BuildError, SandboxError), match="expected a directory, found a symlink"):
        _builder(store).realise([user])


def test_build_and_store_dir_modes_do_not_depend_on_kilns_umask(store, graph):
    """/build and the store dir are 0755 in the sandbox whatever the umask of the shell
    that ran kiln; so --check from a shell with umask 077 agrees with a build under 022."""
    p, d = graph.drv("modes", 'stat -c "%a %n" /build /kiln/store > $out')
    old = os.umask(0o077)
    try:
        _builder(store).realise([p])
        assert store.real_path(d.output_path()).read_text() == "755 /build\n755 /kiln/store\n"
        os.umask(0o022)
        Builder(store, BwrapExecutor(), BuildOptions(check=True), say=lambda m: None).realise([p])
    finally:
        os.umask(old)


def test_keep_failed_with_a_fifo_keeps_the_build_error(store, graph):
    """--keep-failed copies what it can (a FIFO is recreated) and never replaces the
    build's own error (a FIFO used to turn it into an internal error)."""
    p, _ = graph.drv("fails", "mknod /build/pipe p; echo partial > /build/f; exit 3")
    b = Builder(store, BwrapExecutor(), BuildOptions(keep_failed=True), say=lambda m: None)
    with pytest.raises(BuildError, match="exit status 3") as e:
        b.realise([p])
    kept = Path(str(e.value).split("kept build directory: ", 1)[1].split("\n", 1)[0])
    assert (kept / "build" / "f").read_text() == "partial\n"
    assert stat.S_ISFIFO(os.lstat(kept / "build" / "pipe").st_mode)


def _fixed_drv(store, bb: str, script: str, content_hash: str, recursive: bool = False) -> tuple[str, str]:
    """A fixed-output derivation built by busybox in the sandbox (the recipe language
    makes these only with builtin fetchers; a .drv from elsewhere can be anything)."""
    from kiln.store.derivation import Derivation, Output, drv_path, finalize

    d = Derivation.make(
        "fixed",
        outputs={"out": Output(hash_algo="r:sha256" if recursive else "sha256", hash=content_hash)},
        input_srcs=[bb],
        builder=f"{bb}/bin/busybox",
        args=["sh", "-c", script],
        env={"PATH": f"{bb}/bin", "name": "fixed", "out": ""},
        store_dir=store.store_dir,
    )
    d = finalize(d, lambda p: None, {})
    p = str(drv_path(d))
    store.add_text("fixed.drv", d.serialize().encode(), [str(r) for r in d.references()])
    return p, d.output_path("out")


def test_a_sandboxed_fixed_output_must_have_its_declared_hash(store, busybox_path):
    import hashlib

    good = hashlib.sha256(b"fixed content\n").hexdigest()
    p, out = _fixed_drv(store, busybox_path, "echo wrong content > $out", good)
    with pytest.raises(BuildError, match="hash mismatch for output of fixed-output derivation"):
        _builder(store).realise([p])
    assert not store.is_valid(out)
    p, out = _fixed_drv(store, busybox_path, "echo fixed content > $out", good)
    _builder(store).realise([p])
    assert store.real_path(out).read_text() == "fixed content\n"
    # an output referring to a store path is refused even with the right hash
    p, _ = _fixed_drv(store, busybox_path, f"mkdir $out; echo {busybox_path} > $out/ref", "0" * 64, True)
    with pytest.raises(BuildError, match="may not"):
        _builder(store).realise([p])
