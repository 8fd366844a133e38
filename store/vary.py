"""Deliberately varied rebuilds (``kiln build --check --vary``).

A hermetic build must not depend on anything outside its derivation. A plain rebuild
on the same machine repeats most accidental inputs, so it misses non-determinism that
shows up elsewhere. ``--vary`` changes, for the rebuild only:

==========================  ===============================================  ============
condition                   how                                              needs
==========================  ===============================================  ============
host build/store dirs       a different, deeper scratch directory            —
``KILN_CORES``              1 if the first build had more, else 2            —
umask                       077 instead of 022                               —
directory order             readdir order of /build and the output dir       disorderfs
                            shuffled by a disorderfs FUSE mount
wall clock                  ten years ahead: the host's libfaketime is        libfaketime
                            preloaded into the rebuild (``FAKETIME=+3650d``)
==========================  ===============================================  ============

Linux time namespaces cannot shift ``CLOCK_REALTIME``, hence libfaketime. It is a host
library, so it is mounted only into the varied rebuild, never into a build whose output
is registered, and it reaches only dynamically linked programs (a static binary reads
the real clock). ``describe`` says exactly which variations applied.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .buildtmp import owned_tmpdir, release_tmpdir
from .errors import StoreError
from .mounts import fuse_unmount


@dataclass(frozen=True, slots=True)
class Variation:
    cores: int | None = None
    umask: int | None = None
    tmp_parent: Path | None = None
    shuffle_dirents: bool = False
    faketime: str | None = None  # host path of libfaketime.so.1 to preload, or None

    def varied(self) -> list[str]:
        """What this variation actually changes, as stable labels (no host paths) for a
        VSA's ``kiln_rebuild.varied``: only what took effect on this machine."""
        out = []
        if self.tmp_parent is not None:
            out.append("build-directory")
        if self.cores is not None:
            out.append(f"KILN_CORES={self.cores}")
        if self.umask is not None:
            out.append(f"umask={self.umask:03o}")
        if self.shuffle_dirents:
            out.append("directory-order")
        if self.faketime:
            out.append(f"clock+{FAKETIME_OFFSET}")
        return out

    def describe(self) -> list[str]:
        out = []
        if self.tmp_parent is not None:
            out.append(f"host build directory under {self.tmp_parent}")
        if self.cores is not None:
            out.append(f"KILN_CORES={self.cores}")
        if self.umask is not None:
            out.append(f"umask {self.umask:03o}")
        out.append(
            "directory order shuffled (disorderfs)"
            if self.shuffle_dirents
            else "directory order: not varied (disorderfs not installed)"
        )
        if self.faketime:
            out.append(f"wall clock +{FAKETIME_OFFSET} (libfaketime)")
        else:
            out.append("wall clock: not shifted (libfaketime not installed)")
        return out


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


def standard(top: Path, avoid_cores: Iterable[int]) -> Variation:
    """The variation ``--vary`` uses against a first build made with any of
    ``avoid_cores`` (``first_build_cores``): KILN_CORES is the smallest count not among
    them, so it really differs. ``top`` is a fresh directory (``varied``) the host
    build directory goes three levels under, so its path differs in length too."""
    avoid = set(avoid_cores)
    return Variation(
        cores=next(n for n in range(1, len(avoid) + 2) if n not in avoid),
        umask=0o077,
        tmp_parent=top / "a" / "deeper" / "path",
        shuffle_dirents=shutil.which("disorderfs") is not None and os.path.exists("/dev/fuse"),
        # resolved: the sandbox makes an input that is a symlink as that symlink
        faketime=next((os.path.realpath(p) for p in FAKETIME_LIBS if os.path.exists(p)), None),
    )


@contextlib.contextmanager
def varied(store_root: Path, gc_lock: Path | None, avoid_cores: Iterable[int]) -> Iterator[Variation]:
    """``standard`` in a ``tmp/vary-*`` directory this process owns (``buildtmp``) until
    the body ends, when it is removed: after a kill, GC removes it (and unmounts the
    disorderfs mounts a killed rebuild left in it, ``mounts``)."""
    top, owner = owned_tmpdir(store_root / "tmp", "vary-", gc_lock)
    try:
        yield standard(top, avoid_cores)
    finally:
        release_tmpdir(top, owner)


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


@contextlib.contextmanager
def shuffled(dirs: list[Path]) -> Iterator[None]:
    """Mount a directory-order-shuffling disorderfs over each of ``dirs`` for the body;
    the contents stay in place (they live in a sibling ``.real`` directory during the
    mount and are moved back after)."""
    mounted: list[tuple[Path, Path]] = []
    try:
        for d in dirs:
            real = d.with_name(d.name + ".real")
            d.rename(real)
            d.mkdir()
            r = subprocess.run(
                [
                    "disorderfs",
                    "--shuffle-dirents=yes",
                    "--reverse-dirents=no",
                    "--quiet",
                    "-o",
                    "allow_other",
                    str(real),
                    str(d),
                ],
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                d.rmdir()
                real.rename(d)
                raise StoreError(f"disorderfs could not mount {d}: {r.stderr.strip()}")
            mounted.append((d, real))
        yield
    finally:
        for d, real in reversed(mounted):
            fuse_unmount(d)  # (if it fails, rmdir below says so: the dir is still a mount)
            d.rmdir()
            real.rename(d)
