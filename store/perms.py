"""Who may write a store: the modes kiln gives what it makes there, and the check that a
store it opens is writable by nobody but its owner.

Modes are explicit. Every directory and file kiln makes in a store (or in a registry's
``.kiln/``) is created with the mode it means (``DIR_MODE``, ``PRIVATE_DIR_MODE``...):
the umask can only take bits away, so a umask of 000 no longer makes the store, its
trees' directory or its locks world-writable (it did: another local user then swapped a
materialised toolchain and the owner's next build ran their ``ls`` and signed the
result). The kiln command also narrows its umask by 022 (``cli/common.py``), for what
the rest of kiln makes with a default mode.

A store's modes are narrowed by the umask (a user under umask 077 keeps a private
store). A registry directory is published to other users (a static server, ``kiln serve``
run as another user), so what kiln makes there has its mode exactly, whatever the umask
(``make_dir(..., exact=True)``): the mode is set on the directory just made through a
descriptor opened without following symbolic links, so nothing swapped in at its name
meanwhile is changed. Directories that were there already are left as they are.

Opening a store refuses one that another user could change (``check_store``): the
root, each directory down to the store dir, the store's own entries (``ENTRIES``) and
``keys/`` must be owned by the user running kiln (or by root) and writable by neither
group nor others, as ssh treats ``~/.ssh``. Root may use a store any user owns (``sudo
-E kiln build`` with the user's ``KILN_HOME``), but not one group or others can write.

ACLs: a store made under a directory with a default POSIX ACL (``setfacl -d -m
u:nobody:r-x``) would pass it down to everything made in it: its trees would carry an
ACL their NAR does not record (a build listing its input with ``ls -l`` sees ``+``, so
the same path gave different outputs), and in a directory with a default ACL the umask
no longer applies (a mask ``rwx`` made ``logs/`` 0775 and the store then refused
itself). So opening a writable store removes the ACLs of its root, the directories down
to its store dir and its own entries (``strip_store_acls``; one ``listxattr`` each when
there are none), before anything is made in them, as ``buildtmp`` does for build
directories; what is made beneath then inherits none.
"""

from __future__ import annotations

import errno
import os
import shlex
import stat
from pathlib import Path

from .errors import StoreError
from .fsstate import on_read_only_fs, state_of
from .paths import STORE_ROOT_ENTRIES

#: a directory others may read (the store's trees are meant to be readable)
DIR_MODE = 0o755
#: a directory only its owner may enter: ``locks/``, ``temproots/``, ``keys/``
PRIVATE_DIR_MODE = 0o700
FILE_MODE = 0o644
#: lock files: another user who can open one can ``flock`` it and hang builds and GC
PRIVATE_FILE_MODE = 0o600

#: the store root's entries that are checked when present (``keys/`` besides)
ENTRIES = (
    "objects",
    "gcroots",
    "temproots",
    "quarantine",
    "tmp",
    "locks",
    "attestations",
    "logs",
    "eval-cache",
    "config.json",
    "db.sqlite",
    "gc.lock",
    "reserved",
)
#: entries narrowed to the owner when they are ours and others may read them (an older
#: kiln made them 0755/0644): another user could open a lock and hold it
PRIVATE_ENTRIES = {"locks": PRIVATE_DIR_MODE, "temproots": PRIVATE_DIR_MODE, "gc.lock": PRIVATE_FILE_MODE}
#: the POSIX ACLs, as extended attributes: the default one is inherited by what is made in
#: a directory (and replaces the umask there), the access one is a file's own
ACL_XATTRS = ("system.posix_acl_default", "system.posix_acl_access")


def make_dir(
    path: str | os.PathLike, mode: int = DIR_MODE, parents_mode: int = DIR_MODE, *, exact: bool = False
) -> bool:
    """``mkdir -p`` with explicit modes: ``path`` gets ``mode``, each missing parent
    ``parents_mode``, narrowed by the umask only, or with ``exact`` set to exactly those
    modes whatever the umask (a registry's directories; module docstring). Only the
    directories made here are set. True if ``path`` was made here; ``FileExistsError``
    if something else than a directory is at its name."""
    path = Path(path)
    try:
        _mkdir(path, mode, exact)
        return True
    except FileNotFoundError:
        if path.parent == path:
            raise
        make_dir(path.parent, parents_mode, parents_mode, exact=exact)
        try:
            _mkdir(path, mode, exact)
            return True
        except FileExistsError:
            pass
    except FileExistsError:
        pass
    if not path.is_dir():
        raise FileExistsError(errno.EEXIST, "exists and is not a directory", str(path))
    return False


def _mkdir(path: Path, mode: int, exact: bool) -> None:
    """``mkdir`` ``path``; with ``exact``, then give the directory made exactly ``mode``."""
    os.mkdir(path, mode)
    if exact:
        _set_made_dir_mode(path, mode)


def _set_made_dir_mode(path: Path, mode: int) -> None:
    """Give the directory just made at ``path`` exactly ``mode``, through a descriptor
    opened without following a symbolic link (``O_NOFOLLOW``) and only if it is a
    directory this user owns: whatever another user could have put at the name since
    the ``mkdir`` is not changed. Read access is not needed (a umask of 0277 leaves the
    directory made unreadable to its owner): where ``O_RDONLY`` is refused, an
    ``O_PATH`` descriptor is changed through ``/proc/self/fd``, as glibc's
    ``fchmodat(AT_SYMLINK_NOFOLLOW)`` does."""
    flags = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, os.O_RDONLY | flags)
        by_path = False
    except PermissionError:
        fd = os.open(path, os.O_PATH | flags)
        by_path = True
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) == mode:
            return
        if by_path:
            os.chmod(f"/proc/self/fd/{fd}", mode)
        else:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _user(uid: int) -> str:
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def owner_text(uid: int) -> str:
    """``owned by uid 0 (root)``."""
    return f"owned by {_user(uid)}"


def problem(st: os.stat_result, euid: int | None = None) -> str | None:
    """Why a user other than the owner (or root) could change what ``st`` describes, or
    None. ``euid``: who asks (default: this process)."""
    euid = os.geteuid() if euid is None else euid
    if euid != 0 and st.st_uid not in (euid, 0):
        return f"{owner_text(st.st_uid)}, not by you ({_user(euid)})"
    who = [w for bit, w in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others")) if st.st_mode & bit]
    if who and not stat.S_ISLNK(st.st_mode):
        return f"writable by {' and '.join(who)} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


class UnsafeStore(StoreError):
    """A store (or a keys directory) that another user could change: refused."""


def refuse(
    what: str,
    bad: list[tuple[Path, str]],
    euid: int,
    root: Path | None = None,
    harm: str = "what kiln builds, runs and signs there",
) -> UnsafeStore:
    """The refusal of ``what`` for the ``(path, problem)`` list ``bad``: each path with why,
    then the commands that fix it (``root``: the store root, to fix as a whole); ``harm``:
    what another user could change."""
    lines = [f"  {p}: {why}" for p, why in bad]
    fixes = []
    writable = [p for p, why in bad if why.startswith("writable")]
    foreign = [p for p, why in bad if why.startswith("owned")]
    if writable:
        fixes.append(f"  chmod go-w {' '.join(shlex.quote(str(p)) for p in writable)}")
        if root is not None:
            fixes.append(
                f"  (what kiln made in it under the same umask is open too: chmod -R go-w {shlex.quote(str(root))};"
                " then check what it holds: kiln store verify)"
            )
    if foreign:
        chown = f"chown -R {euid} {' '.join(shlex.quote(str(p)) for p in foreign)}"
        if any(on_read_only_fs(p) for p in foreign):
            # chown cannot run on read-only media: it is done where the store is written
            chown = f"{chown} where it is writable, before it is mounted read-only"
        fixes.append(
            "  a directory another user owns is theirs to change: use another KILN_HOME or --store, or "
            f"have root give it to you: {chown}"
        )
    return UnsafeStore(
        f"refusing to use {what}: another user could change {harm}:\n"
        + "\n".join(lines)
        + "\nto fix it:\n"
        + "\n".join(fixes)
    )


def store_chain(root: Path, store_dir: str) -> list[Path]:
    """The root and each directory from it down to the store's trees' directory."""
    out = [root]
    here = root
    for part in store_dir.strip("/").split("/"):
        here = here / part
        out.append(here)
    return out


def check_store(root: Path, store_dir: str) -> None:
    """Refuse (``UnsafeStore``) the store at ``root`` if another user could change it (see
    the module docstring); narrow ``PRIVATE_ENTRIES`` that are ours and open to others.
    Absent entries are skipped; symbolic links are judged by what they point to."""
    euid = os.geteuid()
    bad: list[tuple[Path, str]] = []
    for p in [*store_chain(root, store_dir), *(root / e for e in ENTRIES), root / "keys"]:
        try:
            st = os.stat(p)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise StoreError(f"cannot check the permissions of {p}: {e.strerror}") from None
        if (why := problem(st, euid)) is not None:
            bad.append((p, why))
        elif (
            (want := PRIVATE_ENTRIES.get(p.name)) is not None
            and p.parent == root
            and st.st_uid == euid
            and stat.S_IMODE(st.st_mode) & 0o077
        ):
            try:
                os.chmod(p, stat.S_IMODE(st.st_mode) & want)
            except OSError as e:
                if e.errno != errno.EROFS:  # (a read-only store: cannot be narrowed there)
                    raise
    if bad:
        raise refuse(f"the store at {root}", bad, euid, root)


def check_keys_dir(d: Path) -> None:
    """Refuse (``UnsafeStore``) the keys directory ``d`` and the directory it is in if
    another user could change them: they could plant or replace a key kiln signs with."""
    check_chain([d.parent, d], f"the keys directory {d}")


def check_chain(paths: list[Path], what: str, harm: str | None = None) -> None:
    """Refuse (``UnsafeStore``, naming ``what`` and, if given, the ``harm``) if another
    user could change any of ``paths`` (each a directory or file; absent ones are
    skipped, symbolic links judged by what they point to)."""
    euid = os.geteuid()
    bad = []
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        if (why := problem(st, euid)) is not None:
            bad.append((p, why))
    if bad:
        raise refuse(what, bad, euid) if harm is None else refuse(what, bad, euid, harm=harm)


def strip_acls(p: Path, mode: int | None = None, *, follow_symlinks: bool = False) -> bool:
    """Remove the POSIX ACLs (``ACL_XATTRS``) of ``p``, then give it ``mode`` if given
    (removing the access ACL leaves its mask in the group bits), else take the group's
    and others' write bits away if an access ACL was removed. True if an ACL was there.
    One ``listxattr`` when there is none; a file system without xattrs has none.
    ``OSError`` otherwise (``FileNotFoundError`` if ``p`` is missing)."""
    try:
        names = os.listxattr(p, follow_symlinks=follow_symlinks)
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        names = []
    found = [n for n in ACL_XATTRS if n in names]
    for name in found:
        try:
            os.removexattr(p, name, follow_symlinks=follow_symlinks)
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise
    if mode is not None:
        os.chmod(p, mode)  # (Linux cannot chmod a symbolic link itself: buildtmp's are directories)
    elif ACL_XATTRS[1] in found and (m := stat.S_IMODE(os.stat(p).st_mode)) & 0o022:
        os.chmod(p, m & ~0o022)
    return bool(found)


def strip_store_acls(root: Path, store_dir: str) -> None:
    """Remove the ACLs of the store at ``root`` (its root, each directory down to
    ``store_dir`` and its entries, ``paths.STORE_ROOT_ENTRIES``, symbolic links followed;
    module docstring). Nothing on a read-only file system; an entry another user owns
    (root's, in a user's store) is left as it is. ``StoreError`` if an ACL of ours
    cannot be removed."""
    if (state := state_of(root)) is None or state.read_only:
        return
    for p in [*store_chain(root, store_dir), *(root / e for e in sorted(STORE_ROOT_ENTRIES))]:
        try:
            strip_acls(p, follow_symlinks=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            if e.errno == errno.EPERM and os.stat(p).st_uid != os.geteuid():
                continue  # (not ours to change: root's directory in a user's store)
            raise StoreError(f"cannot remove the inherited ACL of {p}: {e.strerror}") from None


def give_to_owner_of(fd: int, directory: Path) -> None:
    """When root made the file open at ``fd`` in a directory another user owns (``sudo -E
    kiln ...`` in that user's store), hand it to that user: a root-owned lock file 0600
    would lock its owner out of their own store. A no-op for everyone but root."""
    if os.geteuid() != 0:
        return
    try:
        st = os.fstat(fd)
        if st.st_uid != 0:
            return
        owner = os.stat(directory)
        if owner.st_uid != 0:
            os.fchown(fd, owner.st_uid, owner.st_gid)
    except OSError:
        pass
