"""/dev's nodes (``kiln.sandbox.devnodes``): a build of a kiln that owns the host's nodes
(root) gets copies it cannot change, so nothing it does reaches the host's; an audit's
root build ran ``chmod 666 /dev/null`` and ``chown 1000:1000 /dev/null`` on the host's."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.sandbox import devnodes

copying = pytest.mark.skipif(not devnodes.needs_copies(), reason="kiln does not own the host's nodes here")


def _host_stat(names) -> dict[str, tuple[int, ...]]:
    out = {}
    for n in names:
        st = os.stat("/dev/" + n)
        out[n] = (st.st_mode, st.st_uid, st.st_gid, st.st_rdev, st.st_ctime_ns, st.st_mtime_ns)
    return out


@copying
def test_a_builds_chmod_and_chown_do_not_reach_the_hosts_nodes(sh, executor) -> None:
    """The audit's build, on every node whose change would be a no-op on the host (0666
    root:root, so even a kiln without the fix leaves the host working): only its ctime
    would tell, and it must not change either. Inside, the changes are refused and the
    nodes work."""
    names = [
        n
        for n, (mode, uid, gid, *_) in _host_stat(devnodes.DEV_NODES).items()
        if (mode & 0o7777, uid, gid) == (0o666, 0, 0)
    ]
    assert "null" in names
    before = _host_stat(names)
    script = "; ".join(
        f"chmod 666 /dev/{n} 2>/dev/null && echo chmod-{n}; chown 1000:1000 /dev/{n} 2>/dev/null && echo chown-{n}"
        for n in names
    )
    r = sh(script + "; echo x > /dev/null && head -c 2 /dev/zero | od -An -tx1 && ls -ln /dev/null")
    assert r.result.ok, r.log
    assert _host_stat(names) == before
    lines = r.log.splitlines()
    assert len(lines) == 2 and lines[0] == " 00 00", r.log  # no chmod-/chown- lines: refused
    assert lines[1].split()[2:4] == ["65534", "65534"], r.log  # as under an unprivileged kiln
    assert executor.isolation()["devNodes"].startswith("kiln's copies")


def test_isolation_says_whose_nodes_builds_get(executor) -> None:
    want = "kiln's copies" if devnodes.needs_copies() else "host's (not kiln's"
    assert executor.isolation()["devNodes"].startswith(want)


@copying
def test_copies_removed_meanwhile_are_remade(sh, executor) -> None:
    """A /tmp cleaner may remove old files: the next build gets a new set."""
    old = devnodes.copies()
    assert old is not None
    shutil.rmtree(os.path.dirname(old["null"]))
    r = sh("echo x > /dev/null && echo ok")
    assert r.result.ok and r.log == "ok\n", r.log
    new = devnodes.copies()
    assert new is not None and new != old and stat.S_ISCHR(os.lstat(new["null"]).st_mode)


#: ``python HELPER place...``: an executor whose copies go in the first working place;
#: prints ``devNodes``, the copies' directory, then runs ``sys.argv`` build SCRIPT.
HELPER = """
import io, os, sys, tempfile
from kiln.sandbox import BwrapExecutor, SandboxSpec, devnodes
script, places = sys.argv[1], tuple(sys.argv[2:])
devnodes._places = lambda: places
ex = BwrapExecutor()
src = devnodes.copies() if devnodes.needs_copies() else None
print(ex.isolation()["devNodes"])
print(os.path.dirname(src["null"]) if src else "-", flush=True)
build = tempfile.mkdtemp(prefix="b", dir=places[-1])
buf = io.BytesIO()
r = ex.run(SandboxSpec(argv=("/bin/sh", "-c", script), build_dir=build, env={"PATH": "/bin"}, rootfs=os.environ["ROOTFS"]), buf)
print(r.reason, buf.getvalue().decode(), end="")
"""


def _helper(tmp_path: Path, rootfs: Path, script: str, places, wrap=()) -> subprocess.Popen:
    helper = tmp_path / "helper.py"
    helper.write_text(HELPER)
    env = {**os.environ, "ROOTFS": str(rootfs)}
    argv = [*wrap, sys.executable, str(helper), script, *map(str, places)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@copying
def test_a_nodev_place_is_skipped_and_none_left_means_the_hosts_nodes(tmp_path, rootfs) -> None:
    """Copies on a ``nodev`` mount cannot be opened (nor bound): the next place is used;
    with none left, the host's nodes, and ``isolation()`` says builds can change them."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("cannot make a mount namespace here")
    nodev, good = tmp_path / "nodev", tmp_path / "good"
    nodev.mkdir()
    good.mkdir()
    mount = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o nodev,size=1m tmpfs {nodev} && exec "$@"', "-"]
    script = "echo x > /dev/null && echo null-ok"
    p = _helper(tmp_path, rootfs, script, [nodev, good], mount)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("kiln's copies") and os.path.dirname(lines[1]) == str(good), out
    assert lines[2:] == ["ok null-ok"], out
    assert not os.path.exists(lines[1])  # removed at exit
    p = _helper(tmp_path, rootfs, script, [nodev], mount)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("host's, which builds can chmod/chown") and str(nodev) in lines[0], out
    assert lines[1:] == ["-", "ok null-ok"], out


@copying
def test_copies_are_removed_when_kiln_is_interrupted(tmp_path, rootfs) -> None:
    place = tmp_path / "place"
    place.mkdir()
    p = _helper(tmp_path, rootfs, "sleep 30", [place])
    assert p.stdout is not None
    p.stdout.readline()
    directory = p.stdout.readline().strip()
    assert os.path.isdir(directory)
    time.sleep(0.5)  # in the build
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert "KeyboardInterrupt" in err and p.returncode != 0, err
    assert not os.path.exists(directory) and not _copies_in(place)


def _copies_in(place: Path) -> list[str]:
    return sorted(n for n in os.listdir(place) if n.startswith("kiln-dev-"))


@copying
def test_copies_left_by_a_killed_kiln_are_removed_by_the_next(tmp_path, rootfs) -> None:
    """``kill -9``: no ``atexit``. The next kiln making copies there removes the
    directory, whose lock died with its kiln; never a live kiln's, however old."""
    place = tmp_path / "place"
    place.mkdir()
    dirs = {}
    procs = {}
    for name in ("live", "killed"):
        procs[name] = p = _helper(tmp_path, rootfs, "sleep 30", [place])
        assert p.stdout is not None
        p.stdout.readline()
        dirs[name] = p.stdout.readline().strip()
    procs["killed"].kill()
    procs["killed"].communicate(timeout=30)
    old = time.time() - 3600
    for d in dirs.values():
        os.utime(d, (old, old))
    p = _helper(tmp_path, rootfs, "true", [place])
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert _copies_in(place) == [os.path.basename(dirs["live"])], out
    procs["live"].send_signal(signal.SIGINT)
    procs["live"].communicate(timeout=30)
    assert not _copies_in(place)
