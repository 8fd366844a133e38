"""Programs built without a run path to a library a dependency holds: the build loop's
warning for the mistake the linker does not catch. ``-L${dep}/lib -lgreet`` links
against ``${dep}/lib/libgreet.so.1`` at build time, but at run time the loader looks only
in the program's run path (``-Wl,-rpath,${dep}/lib``), then ``glibc-runtime`` and the
host's directories: the program fails to start ("cannot open shared object file"), or
loads another copy, and it does not even reference the dependency (a GC may remove it).

``unlinked(out_path, tree, programs, providers)`` reports, per ELF program of the
output (``refscan.ScanResult.programs``; a shared library's own needs are met by what
the program loading it loads), each needed library (``elfdyn``) that

- no directory of its run path holds (``$ORIGIN`` expanded; entries outside the store
  dir are not looked at: a host directory is the host's), and
- that a ``lib/`` or ``lib64/`` of one of ``providers`` holds (the build's inputs and
  the derivation's own outputs, by logical path and where the tree is now).

A library in no provider (``libc.so.6`` from the toolchain's runtime, which the cc
wrappers' run path covers, or a host library) is none of this check's business. Reading
is bounded: the programs the scan listed, each one's dynamic section (``elfdyn``), and
one directory listing per provider. Nothing here raises for a hostile output: a file
that cannot be read is skipped.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping
from pathlib import Path

from .elfdyn import dynamic

_LIB_DIRS = ("lib", "lib64")


def unlinked(
    out_path: str, tree: Path, programs: Iterable[str], providers: Mapping[str, Path]
) -> list[tuple[str, str, str]]:
    """``(file relative to the output, library, the directory that holds it)`` for each
    needed library of ``out_path``'s ``programs`` (``tree``: where its files are now) that
    only a provider holds (module docstring). ``providers``: logical store path -> its
    tree now (outputs of the build included)."""
    store_dir = posixpath.dirname(out_path)
    held: dict[str, str] = {}  # library name -> the provider directory that holds it (first)
    for logical, real in providers.items():
        for sub in _LIB_DIRS:
            try:
                names = os.listdir(real / sub)
            except OSError:
                continue
            for name in sorted(names):
                if ".so" in name:
                    held.setdefault(name, f"{logical}/{sub}")
    if not held:
        return []
    found: list[tuple[str, str, str]] = []
    for rel in programs:
        try:
            fd = os.open(tree / rel if rel else tree, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            dyn = dynamic(fd)
        finally:
            os.close(fd)
        if dyn is None:
            continue
        here = posixpath.dirname(posixpath.join(out_path, rel)) if rel else store_dir
        dirs = [_expand(e, here) for e in dyn.runpath]
        for lib in dyn.needed:
            where = held.get(lib)
            if where is None or "/" in lib:
                continue
            if not any(_holds(d, lib, store_dir, providers) for d in dirs):
                found.append((rel, lib, where))
    return found


def _expand(entry: str, origin: str) -> str:
    """A run path entry with ``$ORIGIN`` (``${ORIGIN}``) replaced by the file's directory."""
    return posixpath.normpath(entry.replace("${ORIGIN}", origin).replace("$ORIGIN", origin))


def _holds(directory: str, lib: str, store_dir: str, providers: Mapping[str, Path]) -> bool:
    """Whether ``directory`` (logical) of one of ``providers`` has ``lib``."""
    if not directory.startswith(store_dir + "/"):
        return False
    base = directory[len(store_dir) + 1 :].split("/", 1)
    logical = f"{store_dir}/{base[0]}"
    real = providers.get(logical)
    if real is None:
        return False
    return os.path.lexists(real / base[1] / lib if len(base) > 1 else real / lib)


def unlinked_warning(drv_path: str, out_path: str, found: list[tuple[str, str, str]]) -> str:
    """The build's warning for ``unlinked``'s findings: the first named with the fix, the
    others counted."""
    rel, lib, where = found[0]
    what = f"{out_path}/{rel}" if rel else out_path
    more = (
        f" (and {len(found) - 1} more such librar{'y' if len(found) == 2 else 'ies'})"
        if len(found) > 1
        else ""
    )
    return (
        f"warning: {drv_path}: {what} needs {lib}, which {where} holds, but has no run path there{more}: "
        f"it will not find it when run (nor keep that package alive); link with -Wl,-rpath,{where}"
    )
