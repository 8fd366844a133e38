"""``--check --vary`` for a user who is not root: the disorderfs mounts passed ``-o
allow_other``, which ``fusermount`` refuses to every user but root unless
``user_allow_other`` is set in /etc/fuse.conf (it is not on a stock Debian), so every
non-root varied rebuild failed. The option is gone (the sandbox's uid maps back to the
user who mounted, whom FUSE lets in), and where disorderfs cannot mount at all the
rebuild goes on without reordering and says why, as where it is not installed.

A stand-in ``disorderfs`` on PATH plays ``fusermount``'s part here; the real mounts are
exercised by tests/build/test_vary_inputs.py (as root) and, as a user, by hand
(docs/store.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiln.store import vary
from kiln.store.localstore import LocalStore

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")

#: as fusermount answers a user when /etc/fuse.conf lacks user_allow_other
REFUSES_ALLOW_OTHER = """#!/bin/sh
echo "$@" >> "{log}"
case "$*" in *allow_other*)
  echo "fusermount: option allow_other only allowed if 'user_allow_other' is set in /etc/fuse.conf" >&2
  exit 1;;
esac
exit 0
"""

#: as in a container without FUSE
CANNOT_MOUNT = """#!/bin/sh
echo "fuse: device not found, try 'modprobe fuse' first" >&2
exit 1
"""


def _fake_disorderfs(tmp_path: Path, monkeypatch, script: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "disorderfs.log"
    (bindir / "disorderfs").write_text(script.format(log=log))
    (bindir / "disorderfs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return log


def test_the_mounts_do_not_ask_for_allow_other(tmp_path, monkeypatch):
    log = _fake_disorderfs(tmp_path, monkeypatch, REFUSES_ALLOW_OTHER)
    with LocalStore.open(tmp_path / "home") as s, vary.varied(s.root, s.gc_lock_path, {2}) as v:
        assert v.reorder_dirents, v.describe()
        assert "directory order reversed in /build, the outputs and the inputs (disorderfs)" in v.describe()
        d = v.tmp_parent
        d.mkdir(parents=True)
        (d / "build").mkdir()
        with vary.reordered([d / "build"], view=(s.real_store, d / vary.INPUTS_VIEW)):
            pass
    calls = log.read_text().splitlines()
    assert len(calls) == 3, calls  # the trial mount, /build, the inputs' view
    assert not any("allow_other" in c for c in calls), calls
    assert calls[1].split()[:5] == ["--shuffle-dirents=no", "--reverse-dirents=yes", "--quiet", "-o", "rw"]


def test_a_mount_that_cannot_be_made_means_no_reordering_and_says_why(tmp_path, monkeypatch):
    _fake_disorderfs(tmp_path, monkeypatch, CANNOT_MOUNT)
    with LocalStore.open(tmp_path / "home") as s, vary.varied(s.root, s.gc_lock_path, {2}) as v:
        assert not v.reorder_dirents
        assert "directory-order" not in v.varied()
        said = "; ".join(v.describe())
        assert (
            "directory order: not varied (disorderfs cannot mount here: "
            "fuse: device not found, try 'modprobe fuse' first)" in said
        ), said
        top = v.tmp_parent.parents[2]
        assert os.listdir(top) == []  # (the trial's directories are gone)


def test_a_failed_mount_during_the_rebuild_still_names_the_reason(tmp_path, monkeypatch):
    _fake_disorderfs(tmp_path, monkeypatch, CANNOT_MOUNT)
    d = tmp_path / "b"
    d.mkdir()
    with (
        pytest.raises(vary.StoreError, match=rf"disorderfs could not mount {d}: fuse: device not found"),
        vary.reordered([d]),
    ):
        pass
    assert d.is_dir() and not (tmp_path / "b.real").exists()
