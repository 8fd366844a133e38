"""Trees a build left without owner access (``chmod 000``): as root nothing notices, so
these run the code as an unprivileged user in a user namespace (``unshare --user``),
where permissions apply."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

SCRIPT = r"""
import os, sys
from pathlib import Path
from kiln.store.trees import open_up
from kiln.store.refscan import scan
from kiln.store.nar_restore import rmtree_iter
from kiln.store import nar
root = Path(sys.argv[1])
for name in ("a", "b"):
    t = root / name
    (t / "d" / "e").mkdir(parents=True)
    (t / "d" / "e" / "f").write_text("x")
    (t / "g").write_text("y")
    os.chmod(t / "g", 0)
    os.chmod(t / "d" / "e", 0)
    os.chmod(t / "d", 0)
try:
    scan(root / "a", [], "/kiln/store")
    print("scan-before", "ok")
except PermissionError:
    print("scan-before", "EACCES")
open_up(root / "a")
print("scan-after", sorted(scan(root / "a", [], "/kiln/store").found))
print("nar", nar.hash_path(root / "a")[1] > 0)
rmtree_iter(os.fsencode(root / "b"))
print("removed", not (root / "b").exists())
from kiln.store.outputcanon import canonicalise_output
c = root / "c"
c.mkdir()
(c / "f").write_text("z")
try:
    os.setxattr(c / "f", "user.kiln", b"v")
    os.chmod(c / "f", 0o444)  # removing the attribute needs write access
    canonicalise_output(c)
    print("xattrs", os.listxattr(c / "f"))
except OSError as e:
    print("xattrs", "unsupported" if e.errno == 95 else repr(e))
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_open_up_and_removal_as_an_unprivileged_user(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    work.chmod(0o777)
    tmp_path.chmod(0o755)
    r = subprocess.run(
        ["unshare", "--user", "--map-user=1234", "--map-group=1234", sys.executable, "-c", SCRIPT, str(work)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode != 0 and "unshare" in r.stderr and "Operation not permitted" in r.stderr:
        pytest.skip("user namespaces are not available here")
    assert r.returncode == 0, r.stderr
    got = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert got.pop("xattrs") in ("[]", "unsupported")
    assert got == {"scan-before": "EACCES", "scan-after": "[]", "nar": "True", "removed": "True"}
