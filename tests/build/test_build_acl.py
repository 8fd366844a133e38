"""A default POSIX ACL on the store's ``tmp/`` overrode the pinned umask inside builds
(files 644/755 came out 600/711) and a harsher one made builds fail: every directory
kiln makes for a build is now stripped of its ACLs (``buildtmp.plain_dir``). Real
``setfacl``, real bubblewrap."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store.build import Builder, BuildOptions
from kiln.store.buildtmp import owned_tmpdir, plain_dir, release_tmpdir

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
    pytest.mark.skipif(shutil.which("setfacl") is None, reason="acl (setfacl) not installed"),
]

ACLS = ("system.posix_acl_default", "system.posix_acl_access")

#: the modes of /build, the output and what the build makes in both, as ``stat`` shows them
MODES = (
    "mkdir $out; echo f > $out/f; mkdir $out/d; echo g > /build/g; mkdir /build/e; "
    "busybox stat -c '%a %n' /build /build/g /build/e $out $out/f $out/d > $out/modes"
)


def builder(store, **kw) -> Builder:
    return Builder(store, BwrapExecutor(), BuildOptions(**kw), say=lambda m: None)


def _setfacl(d: Path, spec: str) -> None:
    r = subprocess.run(["setfacl", "-d", "-m", spec, str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no ACLs here: {r.stderr.strip()}")


def _modes(store, drv) -> list[str]:
    text = store.real_path(drv.output_path("out")).joinpath("modes").read_text()
    return [line.split()[0] for line in text.splitlines()]


@pytest.mark.parametrize("acl", ["g::---,o::---", "u::rw-,g::---,o::---"])
def test_a_default_acl_on_tmp_does_not_reach_the_build(store, graph, acl):
    tmp = store.root / "tmp"
    tmp.mkdir(exist_ok=True)
    _setfacl(tmp, acl)
    a, d = graph.drv("modes", MODES)
    builder(store).realise([a])
    # the umask (022) decides, as without the ACL; ``u::rw-`` made the build fail
    assert _modes(store, d) == ["755", "644", "755", "755", "644", "755"]
    builder(store, check=True).realise([a])
    # the varied rebuild's dirs (``vary-*``) are made under tmp/ too: it runs (and its
    # umask, 077, decides its modes: a build recording them is caught, so not this one)
    b, _ = graph.drv("plain", "mkdir $out; echo f > $out/f; mkdir $out/d; echo g > /build/g")
    builder(store).realise([b])
    builder(store, check=True, vary=True).realise([b])


def test_plain_dir_and_owned_tmpdir_drop_acls(tmp_path: Path):
    _setfacl(tmp_path, "u::rw-,g::---,o::---")
    d, fd = owned_tmpdir(tmp_path, "build-", None)
    try:
        assert not any(n in os.listxattr(d) for n in ACLS)
        assert os.stat(d).st_mode & 0o7777 == 0o700
        (d / "build").mkdir()  # inherits nothing: its parent has no default ACL
        assert not any(n in os.listxattr(d / "build") for n in ACLS)
    finally:
        release_tmpdir(d, fd)
    _setfacl(tmp_path, "u:nobody:rwx")  # (a named entry: an access ACL is inherited too)
    sub = tmp_path / "sub"
    sub.mkdir(mode=0o777)  # with the inherited default and access ACLs
    assert all(n in os.listxattr(sub) for n in ACLS)
    plain_dir(sub, 0o755)
    assert not any(n in os.listxattr(sub) for n in ACLS)
    assert os.stat(sub).st_mode & 0o7777 == 0o755
    plain_dir(sub, 0o755)  # no ACL left to remove: fine
