"""Deliberately varied rebuilds (``kiln build --check --vary``).

A hermetic build must not depend on anything outside its derivation. A plain rebuild
on the same machine repeats most accidental inputs, so it misses non-determinism that
shows up elsewhere. ``--vary`` changes, for the rebuild only:

==========================  ===============================================  =========
condition                   how                                              needs
==========================  ===============================================  =========
host build/store dirs       a different, deeper scratch directory            —
``KILN_CORES``              1 if the first build had more, else 2            —
umask                       077 instead of 022                               —
directory order             readdir order of /build and the output dir       disorderfs
                            shuffled by a disorderfs FUSE mount
wall clock                  the rebuild runs at another time (later), which  —
                            changes any embedded timestamp
==========================  ===============================================  =========

The wall clock itself is not shifted: Linux time namespaces virtualise only the
monotonic and boot clocks, not ``CLOCK_REALTIME``, and the hermetic toolchain has no
libfaketime. So an embedded date is caught when it differs between the two runs
(seconds apart), not years apart. ``describe`` says exactly which variations applied.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import StoreError


@dataclass(frozen=True, slots=True)
class Variation:
    cores: int | None = None
    umask: int | None = None
    tmp_parent: Path | None = None
    shuffle_dirents: bool = False

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
        out.append("wall clock: later run (not shifted)")
        return out


def standard(store_root: Path, cores: int) -> Variation:
    """The variation ``--vary`` uses against a first build made with ``cores``."""
    parent = store_root / "tmp" / f"vary-{secrets.token_hex(4)}" / "a" / "deeper" / "path"
    return Variation(
        cores=1 if cores != 1 else 2,
        umask=0o077,
        tmp_parent=parent,
        shuffle_dirents=shutil.which("disorderfs") is not None and os.path.exists("/dev/fuse"),
    )


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
            subprocess.run(["fusermount", "-u", str(d)], capture_output=True)
            d.rmdir()
            real.rename(d)
