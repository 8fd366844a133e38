"""Deliberately varied rebuilds (``kiln build --check --vary``).

A hermetic build must not depend on anything outside its derivation. A plain rebuild
on the same machine repeats most accidental inputs, so it misses non-determinism that
shows up elsewhere. ``--vary`` changes, for the rebuild only:

==========================  ===============================================  ============
condition                   how                                              needs
==========================  ===============================================  ============
host build/store dirs       a different, deeper scratch directory            —
``KILN_CORES``              1 if the first build had more, else 2            —
CPUs the build can use      1 (its CPU affinity: ``nproc`` says 1) where     2 CPUs
                            builds here see more; on a 1-CPU machine not
                            varied, and ``describe`` says so
umask                       077 instead of 022                               —
directory order             every directory the build lists (/build, the     disorderfs
                            scratch store dir, each input and the toolchain)
                            listed in the reverse of the order the file
                            system gives, by disorderfs FUSE mounts
wall clock                  ten years ahead: the host's libfaketime is        libfaketime
                            preloaded into the rebuild (``FAKETIME=+3650d``)
==========================  ===============================================  ============

``--vary-only NAMES`` (``dirs``, ``cores``, ``cpus``, ``umask``, ``order``, ``clock``,
comma-separated) changes only those (``only``): a check that fails under ``--vary``
names the conditions it changed, and one at a time finds which one the build depends on.

Where disorderfs is installed but cannot mount (FUSE not usable by this user, as in
some containers), ``varied`` finds it out with a trial mount and the rebuild goes
without reordering, as without disorderfs; ``describe`` says why. The mounts are made
without ``allow_other``, which ``fusermount`` grants only to root unless
``user_allow_other`` is set in /etc/fuse.conf: the sandbox's user namespace maps its uid
back to the user who mounted them, which FUSE lets in.

The CPU count is this machine's (``kiln.sandbox.procstate.visible_cpus``: what an
ordinary build's ``nproc`` says here), not the first build's, which provenance does not
record: an output first built on a 1-CPU machine and checked here on one CPU is not
caught. Only what reads the affinity sees the change (``nproc``, ``sched_getaffinity``,
which e.g. ninja, Rust's ``available_parallelism`` and Go's ``NumCPU`` use); glibc's
``get_nprocs`` (``getconf _NPROCESSORS_ONLN``, ``sysconf``) counts the CPUs online in
``/sys`` or ``/proc/stat``, and ``/proc/cpuinfo`` lists them all: those are not varied.

Linux time namespaces cannot shift ``CLOCK_REALTIME``, hence libfaketime. It is a host
library, so it is mounted only into the varied rebuild, never into a build whose output
is registered, and it reaches only dynamically linked programs (a static binary reads
the real clock). ``describe`` says exactly which variations applied.

Directory order is *reversed*, not shuffled: a shuffle of a directory of two entries
gives the first build's order half the time, and the check would pass by luck; the
reverse of the order the file system gives differs from it for every directory of two
entries or more, and the first build saw that order (the same store, and, for the
directories the build makes, the same file system and names). The inputs (store paths
of the closure, the toolchain) are read through one read-only disorderfs view of the
store dir, mounted under the rebuild's scratch directory (``INPUTS_VIEW``) and bound into
the sandbox in place of the store's own paths: readdir order of a store path depends
on the file system the store is on (ext4's hash seed, tmpfs's creation order), so a
build that archives an input (``tar -C $src .``) gets another NAR hash on another
machine. Through disorderfs inputs also have another ``st_dev`` and one more
``st_blocks``; inode numbers are the file system's (disorderfs passes them through), so
a build that records its inputs' inode numbers (``cpio``) is not caught.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .buildtmp import owned_tmpdir, release_tmpdir
from .errors import StoreError
from .mounts import fuse_unmount, mounts_below
from .sigshield import finish


@dataclass(frozen=True, slots=True)
class Variation:
    cores: int | None = None
    umask: int | None = None
    tmp_parent: Path | None = None
    reorder_dirents: bool = False  # disorderfs: see the module docstring
    faketime: str | None = None  # host path of libfaketime.so.1 to preload, or None
    #: why directory order is not varied, when disorderfs is there but could not mount
    reorder_skipped: str | None = None
    #: at most this many CPUs for the rebuild (``SandboxSpec.cpus``), or None: all, as
    #: the first build (a 1-CPU machine: ``cpus_seen`` says how many that is)
    cpus: int | None = None
    cpus_seen: int | None = None  # how many CPUs an ordinary build sees here
    #: the conditions (``NAMES``) left as the first build had them because ``--vary-only``
    #: did not name them
    not_asked: frozenset[str] = frozenset()

    def varied(self) -> list[str]:
        """What this variation actually changes, as stable labels (no host paths) for a
        VSA's ``kiln_rebuild.varied``: only what took effect on this machine."""
        label = {
            "dirs": "build-directory",
            "cores": f"KILN_CORES={self.cores}",
            "cpus": f"cpus={self.cpus}",
            "umask": f"umask={self.umask or 0:03o}",
            "order": "directory-order",
            "clock": f"clock+{FAKETIME_OFFSET}",
        }
        return [label[n] for n in self.names()]

    def names(self) -> list[str]:
        """The ``NAMES`` of the conditions this variation changes (what ``--vary-only``
        takes: a mismatch under several says to try them one at a time)."""
        took = {
            "dirs": self.tmp_parent is not None,
            "cores": self.cores is not None,
            "cpus": self.cpus is not None,
            "umask": self.umask is not None,
            "order": self.reorder_dirents,
            "clock": bool(self.faketime),
        }
        return [n for n in NAMES if took[n]]

    def describe(self) -> list[str]:
        out = []
        if self.tmp_parent is not None:
            out.append(f"host build directory under {self.tmp_parent}")
        if self.cores is not None:
            out.append(f"KILN_CORES={self.cores}")
        if self.cpus is not None:
            seen = f" instead of {self.cpus_seen}" if self.cpus_seen is not None else ""
            out.append(f"{_cpus(self.cpus)} visible (nproc){seen}")
        elif self.cpus_seen is not None and "cpus" not in self.not_asked:
            out.append(f"CPUs visible: not varied (builds here see {_cpus(self.cpus_seen)})")
        if self.umask is not None:
            out.append(f"umask {self.umask:03o}")
        if self.reorder_dirents:
            out.append("directory order reversed in /build, the outputs and the inputs (disorderfs)")
        elif "order" not in self.not_asked:
            out.append(f"directory order: not varied ({self.reorder_skipped or 'disorderfs not installed'})")
        if self.faketime:
            out.append(f"wall clock +{FAKETIME_OFFSET} (libfaketime)")
        elif "clock" not in self.not_asked:
            out.append("wall clock: not shifted (libfaketime not installed)")
        if self.not_asked:
            out.append(f"not asked for (--vary-only): {', '.join(n for n in NAMES if n in self.not_asked)}")
        return out


#: the conditions ``--vary`` changes, as ``--vary-only`` names them (module docstring):
#: host build/store dirs, ``KILN_CORES``, the CPUs visible, umask, directory order, clock
NAMES = ("dirs", "cores", "cpus", "umask", "order", "clock")


def parse_names(text: str) -> frozenset[str]:
    """``--vary-only``'s comma-separated ``NAMES``; ``ValueError`` saying which are known."""
    got = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in got if n not in NAMES]
    if bad or not got:
        raise ValueError(
            f"{', '.join(bad) or 'nothing'}: expected one or more of {', '.join(NAMES)}, comma-separated"
        )
    return frozenset(got)


def only(v: Variation, names: frozenset[str] | None) -> Variation:
    """``v`` changing only the conditions in ``names`` (all when None): the others are as
    the first build had them, and ``describe`` says they were not asked for."""
    if names is None:
        return v
    keep = names.__contains__
    return replace(
        v,
        tmp_parent=v.tmp_parent if keep("dirs") else None,
        cores=v.cores if keep("cores") else None,
        cpus=v.cpus if keep("cpus") else None,
        umask=v.umask if keep("umask") else None,
        reorder_dirents=v.reorder_dirents and keep("order"),
        faketime=v.faketime if keep("clock") else None,
        not_asked=frozenset(NAMES) - names,
    )


def _cpus(n: int) -> str:
    return f"{n} CPU" if n == 1 else f"{n} CPUs"


FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
)
FAKETIME_OFFSET = "3650d"
#: where the library appears inside the sandbox (not under a path the sandbox reserves)
FAKETIME_IN_SANDBOX = "/kiln-vary/libfaketime.so.1"


def faketime_env() -> dict[str, str]:
    return {
        "LD_PRELOAD": FAKETIME_IN_SANDBOX,
        "FAKETIME": f"+{FAKETIME_OFFSET}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


def standard(top: Path, avoid_cores: Iterable[int], cpus_seen: int | None = None) -> Variation:
    """The variation ``--vary`` uses against a first build made with any of
    ``avoid_cores`` (``first_build_cores``): KILN_CORES is the smallest count not among
    them, so it really differs. ``top`` is a fresh directory (``varied``) the host
    build directory goes three levels under, so its path differs in length too.
    ``cpus_seen``: how many CPUs an ordinary build sees (default: here,
    ``procstate.visible_cpus``); the rebuild sees 1 if that is more, else all (not
    varied)."""
    if cpus_seen is None:
        from kiln.sandbox.procstate import visible_cpus

        cpus_seen = visible_cpus()
    avoid = set(avoid_cores)
    return Variation(
        cores=next(n for n in range(1, len(avoid) + 2) if n not in avoid),
        cpus=1 if cpus_seen > 1 else None,
        cpus_seen=cpus_seen,
        umask=0o077,
        tmp_parent=top / "a" / "deeper" / "path",
        reorder_dirents=shutil.which("disorderfs") is not None and os.path.exists("/dev/fuse"),
        # resolved: the sandbox makes an input that is a symlink as that symlink
        faketime=next((os.path.realpath(p) for p in FAKETIME_LIBS if os.path.exists(p)), None),
    )


@contextlib.contextmanager
def varied(
    store_root: Path, gc_lock: Path | None, avoid_cores: Iterable[int], names: frozenset[str] | None = None
) -> Iterator[Variation]:
    """``standard`` (changing only ``names``, when given: ``only``) in a ``tmp/vary-*``
    directory this process owns (``buildtmp``) until the body ends, when it is removed:
    after a kill, GC removes it (and unmounts the disorderfs mounts a killed rebuild left
    in it, ``mounts``)."""
    top, owner = owned_tmpdir(store_root / "tmp", "vary-", gc_lock)
    try:
        v = only(standard(top, avoid_cores), names)
        if v.reorder_dirents and (why := mount_problem(top)) is not None:
            v = replace(v, reorder_dirents=False, reorder_skipped=f"disorderfs cannot mount here: {why}")
        yield v
    finally:
        release_tmpdir(top, owner)


def mount_problem(top: Path) -> str | None:
    """Why disorderfs cannot mount in ``top`` (as this user, here: ``/dev/fuse`` not
    open to them, no ``fusermount``, a container without FUSE), or None: a trial mount of
    an empty directory, taken down at once. A rebuild whose mounts would fail goes
    without reordering, as where disorderfs is not installed, and says why."""
    src, point = top / ".probe", top / ".probe-view"
    try:
        src.mkdir(mode=0o700)
        point.mkdir(mode=0o700)
        try:
            return _try_mount(src, point, "ro")
        finally:
            finish(lambda: _unmount(point))  # (a signal meanwhile: raised once it is down)
    except OSError as e:
        return f"{e.strerror or e}: {e.filename}"
    finally:
        for d in (point, src):
            with contextlib.suppress(OSError):
                d.rmdir()


def first_build_cores(store: Any, drv: Any, current: int) -> set[int]:
    """The KILN_CORES the registered outputs of ``drv`` may have been built with: what
    their provenance records (``internalParameters.sandbox.cores``), plus ``current``
    (the count a build here would use), since an output may have no provenance."""
    from . import attestations
    from .errors import FormatError
    from .intoto import parse_statement

    found = {current}
    for _, o in drv.outputs:
        try:
            env = attestations.read(store, o.path, "provenance")
            pred = parse_statement(env.payload).predicate if env is not None else {}
        except (FormatError, OSError):
            continue
        cores: Any = pred
        for key in ("buildDefinition", "internalParameters", "sandbox", "cores"):
            cores = cores.get(key) if isinstance(cores, dict) else None  # (any shape: a miss)
        if isinstance(cores, int) and not isinstance(cores, bool) and cores > 0:
            found.add(cores)
    return found


#: where a varied rebuild's inputs are read from: a read-only disorderfs view of the store
#: dir, in the rebuild's scratch directory (so a GC after a kill takes it down, ``mounts``)
INPUTS_VIEW = "inputs"

#: every listing in the reverse of the order the file system underneath gives (see the
#: module docstring); inode numbers are passed through whatever the options
_DISORDERFS = ("disorderfs", "--shuffle-dirents=no", "--reverse-dirents=yes", "--quiet")

#: the view's mount options. Store paths do not change while they are inputs, so the
#: kernel may keep their pages, names and attributes (FUSE drops them on every open and
#: after a second by default): reading the toolchain through FUSE otherwise made the
#: hello check 2.5 times slower. Listings are never cached (FUSE 2), so each is reversed.
_VIEW_OPTIONS = "ro,kernel_cache,entry_timeout=3600,attr_timeout=3600,negative_timeout=3600"


def inputs_view(tmp: Path) -> Path:
    """Where ``reordered`` mounts the store's view for a rebuild in ``tmp``: a store path
    ``P`` of the closure is read as ``inputs_view(tmp) / P's base name``."""
    return tmp / INPUTS_VIEW


@contextlib.contextmanager
def reordered(dirs: list[Path], view: tuple[Path, Path] | None = None) -> Iterator[None]:
    """For the body, mount a directory-order-reversing disorderfs over each of ``dirs``
    (read-write; the contents stay in place: they live in a sibling ``.real`` directory
    during the mount and are moved back after) and, if ``view`` is ``(source, point)``,
    a read-only one of ``source`` at the new directory ``point`` (``inputs_view``).
    Everything mounted is unmounted on every way out, a failed mount included
    (``StoreError``); a mount that is busy is detached (``fusermount -z``), so nothing
    is left mounted under the scratch directory that is removed next (its removal
    would otherwise descend into the store through the view)."""
    mounted: list[Path] = []
    moved: list[tuple[Path, Path]] = []
    try:
        for d in dirs:
            real = d.with_name(d.name + ".real")
            d.rename(real)
            moved.append((d, real))
            d.mkdir()
            mounted.append(d)  # (before mounting: an interrupt during the mount is undone too)
            _mount(real, d, "rw")
        if view is not None:
            source, point = view
            point.mkdir()
            mounted.append(point)
            _mount(source, point, _VIEW_OPTIONS)
        yield
    finally:
        stuck: list[str] = []

        def take_down() -> None:  # (repeatable: each step looks first)
            stuck.clear()
            for point in reversed(mounted):  # (all of them, whatever one of them does)
                _unmount(point)
                try:
                    point.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as e:
                    stuck.append(f"{point}: {e.strerror}")
            for d, real in reversed(moved):
                if not os.path.lexists(d):
                    real.rename(d)

        # to the end although a signal comes meanwhile: one cutting it left disorderfs
        # daemons running and the scratch dir unremovable until the next GC
        finish(take_down)
        if stuck:
            raise StoreError(f"could not take down the disorderfs mounts: {'; '.join(stuck)}")


def _mount(source: Path, point: Path, mode: str) -> None:
    if (why := _try_mount(source, point, mode)) is not None:
        raise StoreError(f"disorderfs could not mount {point}: {why}")


def _try_mount(source: Path, point: Path, mode: str) -> str | None:
    """Mount ``source`` at ``point`` reordered; what went wrong, or None. No
    ``allow_other``: the sandbox's user namespace maps its uid back to this user, whom
    FUSE lets in (root too), and the option needs ``user_allow_other`` in
    /etc/fuse.conf, which a stock system lacks: ``fusermount`` refused it to every user
    but root, and with it every non-root ``--vary``."""
    try:
        r = subprocess.run(
            [*_DISORDERFS, "-o", mode, str(source), str(point)], capture_output=True, text=True
        )
    except OSError as e:
        return e.strerror or str(e)
    if r.returncode != 0:
        return r.stderr.strip() or f"disorderfs exited with status {r.returncode}"
    return None


def _unmount(point: Path) -> None:
    """Unmount the disorderfs at ``point`` if it is mounted; detach it if it is busy."""
    if not mounts_below(point):
        return
    if fuse_unmount(point) is not None:
        fuse_unmount(point, lazy=True)  # (if that fails too, rmdir says so: still a mount)
