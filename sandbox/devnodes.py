"""The device nodes bound into the sandbox's /dev: the host's, or copies no build can change.

The sandbox's /dev holds null, zero, full, random, urandom and tty (``DEV_NODES``),
bound from host files (``bwrapargv.dev_flags``). Whoever owns such a file may change its
attributes (``chmod``, ``chown`` within its groups, ``utimes`` with explicit times,
an ACL) without any capability: the kernel checks the owner. The build's uid is
kiln's own on the host (the user namespace maps uid 1000 to kiln's uid). An unprivileged
kiln does not own the host's nodes (root does), so its builds cannot change them; a
root kiln does, and its builds could: ``chmod 600 /dev/null`` in a recipe changed the
host's /dev/null, and every non-root program on the host then failed to open it.
(``--remount-ro`` does not help: a read-only bind is also made nodev, unusable.)

So when kiln owns the host's nodes (``needs_copies``), builds get copies instead
(``copies()``): made once per kiln process with ``mknod`` (each host node's device
numbers, mode 0666) in a 0700 directory of kiln's own, and owned by uid and gid 65534,
ids the sandbox's user namespace does not map. A build has no capability over an
owner outside its namespace, so ``chmod``, ``chown``, ``touch -d`` and ``setfacl``
fail (EPERM) as under an unprivileged kiln, and ``ls -l /dev`` shows ``65534``
(``nobody``) in both; reading and writing work (0666). As no build can change them, one
set serves every build (concurrent ones too): nothing is made per build. (A build may
still ``touch`` one to the current time, which needs only write permission, as on the
host's.) Each run checks that the copies are still there and intact (a ``/tmp``
cleaner may remove old files) and makes a new set if not.

Where: the first of ``$TMPDIR`` (``tempfile.gettempdir()``), ``/var/tmp``, ``/dev/shm``
where a copy works once made: a file system mounted ``nodev`` (systemd's tmpfs
``/tmp``, ``/dev/shm``) takes the ``mknod`` but refuses to open the node, and so would
the bind. Removed when kiln exits (``atexit``, Ctrl-C included); a kiln killed
outright leaves its ``kiln-dev-*`` directory (0700; its nodes grant nothing the host's
0666 ones do not), which the next kiln to make copies there removes: each kiln holds
a ``flock`` on its own (``sweep``).

Fallback: a kiln that owns the host's nodes but cannot make copies (no ``CAP_MKNOD``,
e.g. a container started without it; no such file system) binds the host's, and
``describe()`` says that builds can change them (``isolation()``, ``devNodes``).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Mapping

#: Host device nodes bound into the sandbox's /dev (what bwrap's --dev binds, minus pts).
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
#: Owner of the copies: an id outside the sandbox's user namespace (there ``nobody``).
OWNER = 65534
MODE = 0o666
HOST: Mapping[str, str] = {name: "/dev/" + name for name in DEV_NODES}


def _places() -> tuple[str, ...]:
    return (tempfile.gettempdir(), "/var/tmp", "/dev/shm")


def needs_copies(euid: int | None = None) -> bool:
    """Whether a build could change a host node: kiln's ``euid`` (default: ours) owns
    one. (A node that does not exist is bwrap's to report.)"""
    euid = os.geteuid() if euid is None else euid
    for path in HOST.values():
        with contextlib.suppress(OSError):
            if os.stat(path).st_uid == euid:
                return True
    return False


_PREFIX = "kiln-dev-"
#: A directory of copies whose lock is free is left alone this long (s): it may be one
#: being made (``_make`` locks it just after ``mkdtemp``).
_ORPHAN_AGE = 60


def _make(parent: str) -> tuple[str, int]:
    """A new 0700 directory in ``parent`` holding the copies, checked to work (a
    ``nodev`` mount refuses to open them), and an fd holding a ``flock`` on it for as
    long as this process lives (``sweep``). ``OSError`` (nothing left) if not."""
    d = tempfile.mkdtemp(prefix=_PREFIX, dir=parent)
    fd = -1
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for name, host in HOST.items():
            st = os.stat(host)
            if not stat.S_ISCHR(st.st_mode):
                raise OSError(f"{host} is not a character device")
            path = os.path.join(d, name)
            os.mknod(path, stat.S_IFCHR | MODE, st.st_rdev)
            os.chown(path, OWNER, OWNER)
            os.chmod(path, MODE)  # (after the umask and the chown)
        os.close(os.open(os.path.join(d, "null"), os.O_WRONLY | os.O_CLOEXEC))  # EACCES if nodev
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        if fd >= 0:
            os.close(fd)
        raise
    return d, fd


def sweep(parent: str) -> None:
    """Remove the copies a kiln killed outright left in ``parent`` (their lock is free)."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(_PREFIX)]
    except OSError:
        return
    for name in names:
        d = os.path.join(parent, name)
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if st.st_uid == os.geteuid() and time.time() - st.st_mtime > _ORPHAN_AGE:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass  # (locked: its kiln is alive)
        finally:
            os.close(fd)


class _Set:
    """One directory of copies and the device numbers they must have."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.sources: Mapping[str, str] = {name: os.path.join(directory, name) for name in DEV_NODES}
        self.rdevs = {name: os.lstat(path).st_rdev for name, path in self.sources.items()}

    def intact(self) -> bool:
        """Whether the copies are still those ``_make`` made (six ``lstat``s)."""
        for name, path in self.sources.items():
            try:
                st = os.lstat(path)
            except OSError:
                return False
            if (st.st_mode, st.st_rdev, st.st_uid, st.st_gid) != (_CHR, self.rdevs[name], OWNER, OWNER):
                return False
        return True


_CHR = stat.S_IFCHR | MODE
_lock = threading.Lock()
_made: list[str] = []  # every directory made, removed at exit
_held: list[int] = []  # the fds holding their locks
_current: _Set | None = None
_failure = ""


def copies() -> Mapping[str, str] | None:
    """The paths of this process's copies, by node name, made on the first call and
    checked on every one (remade if they are no longer intact); ``None`` if they
    cannot be made at first (``failure()`` says why). ``OSError`` if they cannot be
    remade."""
    current = _current
    if current is not None and current.intact():
        return current.sources
    with _lock:
        return _copies_locked()


def _copies_locked() -> Mapping[str, str] | None:
    global _current, _failure
    if _current is None and _failure:
        return None
    if _current is not None and _current.intact():
        return _current.sources
    errors = []
    for parent in dict.fromkeys(_places()):
        if not _made:
            sweep(parent)
        try:
            d, fd = _make(parent)
        except OSError as e:
            errors.append(f"{parent}: {e.strerror or e}")
            continue
        if not _made:
            atexit.register(_remove, _made, os.getpid())
        _made.append(d)
        _held.append(fd)
        _current = _Set(d)
        return _current.sources
    if _current is not None:
        raise OSError(f"cannot remake the copies of the host's device nodes: {'; '.join(errors)}")
    _failure = "; ".join(errors)
    return None


def failure() -> str:
    """Why ``copies()`` returned ``None`` (empty if it did not)."""
    return _failure


def _remove(made: list[str], pid: int) -> None:
    if os.getpid() == pid:  # (not in a forked child)
        for d in made:
            shutil.rmtree(d, ignore_errors=True)


def describe(copied: bool, needed: bool) -> str:
    """``isolation()``'s ``devNodes``: whose nodes builds get (``copied``: kiln's
    copies; ``needed``: ``needs_copies()``)."""
    if copied:
        return "kiln's copies (owned by an unmapped id: builds cannot change them)"
    if not needed:
        return "host's (not kiln's: builds cannot change them)"
    return f"host's, which builds can chmod/chown (kiln owns them and could not copy them: {_failure})"
