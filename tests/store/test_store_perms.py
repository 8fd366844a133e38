"""Who may write a store (``kiln.store.perms``): under a umask of 000 the store, its
trees' directory, its locks and what the kiln command makes there came out
world-writable, and another local user swapped a materialised toolchain that the
owner's next build ran and signed; a store (or ``keys/``) another user made or can
write was used without a word. Now every directory and file kiln makes there has an
explicit mode, and opening such a store is refused, saying what to run."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from clikit import kiln
from storekit import make_tree

from kiln.store import buildlocks
from kiln.store.localstore import LocalStore
from kiln.store.locks import FileLock
from kiln.store.perms import UnsafeStore

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to make files another uid owns)")


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def writable_by_others(root: Path) -> list[str]:
    """Everything under ``root`` (not in the trees' directory, not symlinks) that group
    or others may write, with its mode."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root / "kiln":
            dirnames.remove("store")
        for name in [*dirnames, *filenames]:
            p = Path(dirpath, name)
            st = os.lstat(p)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o022:
                out.append(f"{oct(st.st_mode & 0o7777)} {p.relative_to(root)}")
    st = os.stat(root)
    if st.st_mode & 0o022:
        out.append(f"{oct(st.st_mode & 0o7777)} .")
    return sorted(out)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_a_store_made_under_umask_000_is_writable_by_its_owner_only(tmp_path):
    root = tmp_path / "home"
    with umask(0), LocalStore.open(root) as s:
        info = s.add_path(make_tree(tmp_path / "t", {"a": "x"}))
        s.add_root("r", info.path)
        with FileLock(s.gc_lock_path, shared=True), s.temp_root([info.path]):
            buildlocks.prepare(s, [info.path])
            with buildlocks.output_lock(s, [info.path]):
                pass
            assert mode(root / "temproots" / str(os.getpid())) == 0o600
    assert writable_by_others(root) == []
    assert mode(root / "kiln" / "store") == 0o755 and mode(root) == 0o755
    assert mode(root / "locks") == 0o700 and mode(root / "temproots") == 0o700
    assert mode(root / "gc.lock") == 0o600 and mode(root / "config.json") == 0o644
    (build,) = (root / "locks").glob("*.build")
    assert mode(build) == 0o600


def test_the_kiln_command_under_umask_000_leaves_nothing_writable_by_others(tmp_path):
    """What other parts of kiln make with a default mode too (logs, attestations, the key
    directory's parent): the command narrows its umask by 022."""
    home = tmp_path / "home"
    env = {"KILN_HOME": str(home)}
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    recipe = tmp_path / "r.recipe"
    recipe.write_text('package p {\n  src = path "./d"\n  build = "${src}"\n}\n')
    with umask(0):
        assert kiln("key", "generate", "k1", env=env).returncode == 0
        r = kiln("store", "add", str(tmp_path / "d"), env=env)
        assert r.returncode == 0, r.stderr
        r = kiln("eval", str(recipe), env=env)  # (the evaluation cache: lang/cache.py)
        assert r.returncode == 0, r.stderr
        assert kiln("store", "gc", env=env).returncode == 0
    assert (home / "eval-cache").is_dir()
    assert writable_by_others(home) == []
    assert mode(home / "keys") == 0o700 and mode(home / "keys" / "k1.sec") == 0o600


@pytest.mark.parametrize("where", [".", "kiln", "kiln/store", "keys", "tmp", "gcroots", "db.sqlite"])
def test_a_store_others_can_write_is_refused(tmp_path, where):
    root = tmp_path / "home"
    LocalStore.open(root).close()
    (root / "keys").mkdir(mode=0o700)
    target = root / where
    os.chmod(target, mode(target) | 0o002)
    with pytest.raises(UnsafeStore) as e:
        LocalStore.open(root)
    text = str(e.value)
    assert f"{target if where != '.' else root}: writable by others" in text
    assert "chmod go-w" in text
    os.chmod(target, mode(target) & ~0o022)
    LocalStore.open(root).close()  # fixed as it says: used again


def test_group_writable_is_refused_too_and_said_so(tmp_path):
    root = tmp_path / "home"
    LocalStore.open(root).close()
    os.chmod(root / "kiln" / "store", 0o775)
    with pytest.raises(UnsafeStore, match=r"kiln/store: writable by group \(mode 0775\)"):
        LocalStore.open(root, create=False)


def _as_another_user(root: Path, monkeypatch) -> int:
    """Make ``root`` look another (non-root) user's: chowned to 4321 when root (which may
    own anything), and this process seen as uid 1234; returns the owner's uid."""
    owner = os.geteuid()
    if owner == 0:
        subprocess.run(["chown", "-R", "4321:4321", str(root)], check=True)
        owner = 4321
    monkeypatch.setattr(os, "geteuid", lambda: 1234)
    return owner


def test_a_store_another_user_owns_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "home"
    LocalStore.open(root).close()
    owner = _as_another_user(root, monkeypatch)
    with pytest.raises(UnsafeStore) as e:
        LocalStore.open(root)
    assert f"{root}: owned by uid {owner}" in str(e.value) and "chown -R 1234" in str(e.value)


def test_a_directory_another_user_made_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """A predictable KILN_HOME made (0777) by another user beforehand."""
    root = tmp_path / "shared"
    root.mkdir()
    os.chmod(root, 0o777)
    with pytest.raises(UnsafeStore, match="shared: writable by group and others"):
        LocalStore.open(root)
    assert os.listdir(root) == []


def _store(root: Path) -> None:
    """A store with its GC lock file made (a first registration makes it)."""
    with LocalStore.open(root) as s, FileLock(s.gc_lock_path):
        pass


@needs_root
def test_root_may_use_a_users_store_but_not_one_others_can_write(tmp_path):
    root = tmp_path / "home"
    _store(root)
    subprocess.run(["chown", "-R", "4321:4321", str(root)], check=True)
    LocalStore.open(root).close()  # ``sudo -E kiln build`` with the user's KILN_HOME
    assert os.stat(root / "gc.lock").st_uid == 4321  # (not taken from its owner)
    os.chmod(root / "kiln" / "store", 0o757)
    with pytest.raises(UnsafeStore, match="kiln/store: writable by others"):
        LocalStore.open(root)


@needs_root
def test_a_lock_root_makes_in_a_users_store_is_the_users(tmp_path):
    """``sudo -E kiln build``: a root-owned 0600 lock would lock the user out of it."""
    root = tmp_path / "home"
    LocalStore.open(root).close()
    subprocess.run(["chown", "-R", "4321:4321", str(root)], check=True)
    with LocalStore.open(root) as s, FileLock(s.gc_lock_path):
        buildlocks.prepare(s, ["/kiln/store/" + "1" * 32 + "-x"])
    for p in (root / "gc.lock", root / "locks" / ("1" * 32 + ".build")):
        assert (os.stat(p).st_uid, mode(p)) == (4321, 0o600), p


def test_older_stores_locks_are_made_private(tmp_path):
    """An older kiln made ``locks/`` and ``temproots/`` 0755 and ``gc.lock`` 0644:
    anyone could open the GC lock and hold it."""
    root = tmp_path / "home"
    _store(root)
    for p, m in (("locks", 0o755), ("temproots", 0o755), ("gc.lock", 0o644)):
        os.chmod(root / p, m)
    LocalStore.open(root).close()
    assert (mode(root / "locks"), mode(root / "temproots"), mode(root / "gc.lock")) == (0o700, 0o700, 0o600)


def test_key_generate_refuses_a_home_another_user_could_write(tmp_path):
    """precreate.sh: another user made KILN_HOME and keys/ 0777 before the first use."""
    home = tmp_path / "shared"
    (home / "keys").mkdir(parents=True)
    os.chmod(home, 0o777)
    os.chmod(home / "keys", 0o777)
    r = kiln("key", "generate", "victim", env={"KILN_HOME": str(home)})
    assert r.returncode == 1 and "refusing to use the keys directory" in r.stderr, r.stderr
    for p in (home, home / "keys"):
        assert f"{p}: writable by group and others (mode 0777)" in r.stderr
    assert os.listdir(home / "keys") == []


def test_keys_dir_of_another_user_is_refused(tmp_path, monkeypatch):
    from kiln.common import private_keys_dir

    d = tmp_path / "home" / "keys"
    d.mkdir(parents=True, mode=0o700)
    owner = _as_another_user(d.parent, monkeypatch)
    with pytest.raises(UnsafeStore, match=f"{d}: owned by uid {owner}"):
        private_keys_dir(d)


def test_narrow_umask_keeps_a_stricter_one():
    code = (
        "import os; from kiln.common import narrow_umask; os.umask({0}); narrow_umask(); "
        "print(oct(os.umask(0)))"
    )
    for given, want in ((0o000, "0o22"), (0o002, "0o22"), (0o077, "0o77"), (0o027, "0o27")):
        out = subprocess.run([sys.executable, "-c", code.format(given)], capture_output=True, text=True)
        assert out.stdout.strip() == want, (given, out.stderr)
