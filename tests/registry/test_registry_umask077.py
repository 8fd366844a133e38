"""A registry written under ``umask 077`` (as CI scripts and hardened accounts run):
its files came out 0644 but every directory kiln made (the registry itself, ``nar/``,
``blobs/``, ``index/``, ``.kiln/``...) 0700, so no other user (the static server's,
``nobody``) could read what it publishes: "Permission denied". A registry's directories
now get their mode exactly, whatever the umask (``kiln.store.perms.make_dir(...,
exact=True)``), those made lazily on the way to a key too; a store made under the same
umask stays private (its modes are only narrowed by it)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from attkit import attested_store
from regkit import kiln

from kiln.registry.dirlock import INDEX_LOCK, dir_lock
from kiln.registry.storage import FileStorage
from kiln.store.localstore import LocalStore
from kiln.store.perms import make_dir

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to read as another user)")


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A scratch directory every user can reach (pytest's base directory is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="kiln-umask077-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def dirs_not_0755(root: Path, skip_att: bool = False) -> list[str]:
    out = [] if mode(root) == 0o755 else [f"{oct(mode(root))} ."]
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            p = Path(dirpath, name)
            if mode(p) != 0o755 and not (skip_att and name.endswith(".att")):
                out.append(f"{oct(mode(p))} {p.relative_to(root)}")
    return sorted(out)


def unreadable_by_nobody(root: Path, skip_att: bool = False) -> list[str]:
    """The published files (all but ``.kiln/``) user ``nobody`` cannot read."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != ".kiln" and not (skip_att and d.endswith(".att"))]
        for name in filenames:
            p = Path(dirpath, name)
            r = subprocess.run(["cat", str(p)], user=NOBODY, capture_output=True)
            if r.returncode != 0:
                out.append(f"{p.relative_to(root)}: {r.stderr.decode().strip()}")
    return out


def test_storage_directories_are_0755_under_umask_077(public_tmp):
    root = public_tmp / "a" / "reg"  # (``a`` made on the way, as by ``kiln registry init``)
    old = os.umask(0o077)
    try:
        st = FileStorage(root)
        st.put_bytes("nar/abc.nar.zst", b"nar")
        st.put_bytes(".kiln/nars/abc", b"record")  # made on the way (``_place``)
        st.put_bytes("x1y2.att/provenance.dsse.json", b"{}")  # a path's attestations, one PUT
        with dir_lock(st, INDEX_LOCK):
            pass
    finally:
        os.umask(old)
    assert dirs_not_0755(public_tmp) == []
    assert mode(root / "nar" / "abc.nar.zst") == 0o644
    assert mode(root / INDEX_LOCK) == 0o600  # (private: another user could hold it)


def test_a_directory_that_was_there_is_left_as_it_is(tmp_path):
    d = tmp_path / "mine"
    d.mkdir(mode=0o700)
    assert not make_dir(d, exact=True)
    assert not make_dir(d / "..", exact=True)
    assert mode(d) == 0o700
    assert make_dir(d / "new", exact=True) and mode(d / "new") == 0o755


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
@needs_root
def test_exact_without_read_access_to_the_directory_made(tmp_path):
    """Under umask 0477 the directory made is 0300: not openable for reading by its owner
    (root here without CAP_DAC_OVERRIDE), so its mode is set through an ``O_PATH``
    descriptor."""
    code = (
        "import os, sys; from kiln.store.perms import make_dir; os.umask(0o477); "
        "make_dir(sys.argv[1] + '/p/q', exact=True)"
    )
    r = subprocess.run(
        [
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            sys.executable,
            "-c",
            code,
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert mode(tmp_path / "p") == 0o755 and mode(tmp_path / "p" / "q") == 0o755


def test_a_store_made_under_umask_077_stays_private(tmp_path):
    """The store's modes are narrowed by the umask, never widened (docs/store.md)."""
    old = os.umask(0o077)
    try:
        LocalStore.open(tmp_path / "s", store_dir="/kiln/store")
    finally:
        os.umask(old)
    s = tmp_path / "s"
    for d in (s, s / "objects", s / "gcroots", s / "tmp", s / "kiln" / "store", s / "locks", s / "temproots"):
        assert mode(d) == 0o700, d


def _push_under_077(tmp_path: Path, reg: Path, keys) -> None:  # noqa: ANN001
    store, paths = attested_store(tmp_path / "store", tmp_path, keys, 2)
    for args in (
        ["registry", "init", "--dir", str(reg)],
        [
            "push",
            *paths,
            "--to",
            f"file://{reg}",
            "--store",
            str(store.root),
            "--sign-key",
            str(keys.sk_file),
        ],
    ):
        r = subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, umask=0o077)
        assert r.returncode == 0, r.stderr
    assert list(reg.glob("*.att"))  # (the attestations were pushed)


@needs_root
def test_push_under_umask_077_is_readable_by_another_user(tmp_path, public_tmp, keys):
    reg = public_tmp / "reg"
    _push_under_077(tmp_path, reg, keys)
    assert dirs_not_0755(public_tmp, skip_att=True) == []
    assert unreadable_by_nobody(reg, skip_att=True) == []
    assert kiln("registry", "verify", "--dir", str(reg)).returncode == 0


@needs_root
def test_pushed_attestation_directories_are_0755_under_umask_077(tmp_path, public_tmp, keys):
    reg = public_tmp / "reg"
    _push_under_077(tmp_path, reg, keys)
    assert dirs_not_0755(reg) == []
    assert unreadable_by_nobody(reg) == []
