"""``kiln store diff A B``: what differs between two store paths (two builds of one
package, say), as trees — or, with ``--closure``, as closures, package by package (Nix's
``nix store diff-closures``).

Tree diff: every file that is only in one, of another type, executable bit, size,
contents or link target (``checkdiff.differing_files``, what ``kiln build --check``
reports), then ``diffoscope`` on the two trees when it is installed and asked for
(``--diffoscope``).

Closure diff: each closure's paths grouped by package name, the name and version split
as Nix splits them (the version starts at the first ``-`` followed by a character that
is not a letter: ``hello-2.10`` is ``hello`` at ``2.10``); a line per package whose
paths differ: the versions on each side (``(none)`` where it is absent), ``rebuilt`` when
only the content changed, and the change in NAR size. Packages with the same paths on
both sides are not listed.

Both read the two paths under temp roots (``_path``: no GC can remove them meanwhile)
and exit 0 whether or not they differ (a refusal, an invalid path, exits 1).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.store.localstore import LocalStore


def add_parser(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """The ``diff`` subcommand of ``kiln store`` (``run(store, args)`` is ``cmd_diff``)."""
    sp = cmd("diff", "what differs between two store paths (two builds), as trees or closures")
    sp.add_argument("a", metavar="PATH_A")
    sp.add_argument("b", metavar="PATH_B")
    sp.add_argument("--closure", action="store_true", help="compare the closures, package by package")
    sp.add_argument("--diffoscope", action="store_true", help="also run diffoscope on the two trees")
    sp.set_defaults(run=cmd_diff)


def cmd_diff(store: LocalStore, args: argparse.Namespace) -> int:
    from .cmd_store import _path
    from .targets import resolve_path_or_root

    a, _ = _path(store, resolve_path_or_root(store, args.a))
    b, _ = _path(store, resolve_path_or_root(store, args.b))
    if args.closure:
        lines = closure_diff(store, a, b)
        print("\n".join(lines) if lines else "the closures hold the same paths")
        return 0
    from kiln.store.checkdiff import differing_files

    lines = differing_files(store.real_path(a), store.real_path(b), names=(a, b)) or []
    print("\n".join(line.strip() for line in lines) if lines else "no file differs")
    if args.diffoscope and lines:
        if shutil.which("diffoscope") is None:
            print("note: diffoscope is not installed", file=sys.stderr)
        else:
            sys.stdout.flush()
            subprocess.run(["diffoscope", str(store.real_path(a)), str(store.real_path(b))], check=False)
    return 0


def split_name(base_name: str) -> tuple[str, str]:
    """``(package name, version)`` of a store path's name (after its hash), as Nix's
    ``DrvName`` splits it; version ``""`` when there is none."""
    for i, c in enumerate(base_name):
        if c == "-" and i + 1 < len(base_name) and not base_name[i + 1].isalpha():
            return base_name[:i], base_name[i + 1 :]
    return base_name, ""


def closure_diff(store: LocalStore, a: str, b: str) -> list[str]:
    """A line per package whose paths differ between the closures of ``a`` and ``b``
    (see the module docstring), sorted by package name."""
    ga, gb = _by_package(store, store.closure([a])), _by_package(store, store.closure([b]))
    out = []
    for name in sorted(ga.keys() | gb.keys()):
        pa, pb = ga.get(name, {}), gb.get(name, {})
        if pa.keys() == pb.keys():
            continue
        # (absent on one side: "(none)"; present without a version: "(no version)")
        va = _versions(pa.values()) or "(no version)" if pa else "(none)"
        vb = _versions(pb.values()) or "(no version)" if pb else "(none)"
        delta = sum(size for _, size in pb.values()) - sum(size for _, size in pa.values())
        change = f"{va} -> {vb}" if va != vb else f"{va} rebuilt"
        out.append(f"{name}: {change}{_signed(delta)}")
    return out


def _by_package(store: LocalStore, paths: Iterable[str]) -> dict[str, dict[str, tuple[str, int]]]:
    """package name -> {path: (version, NAR size)}."""
    out: dict[str, dict[str, tuple[str, int]]] = {}
    for p in paths:
        info = store.query(p)
        name, version = split_name(p.rsplit("/", 1)[1][33:])
        out.setdefault(name, {})[p] = (version, info.nar_size if info is not None else 0)
    return out


def _versions(entries: Iterable[tuple[str, int]]) -> str:
    return ", ".join(sorted({v for v, _ in entries}))


def _signed(delta: int) -> str:
    if delta == 0:
        return ""
    sign, n = ("+" if delta > 0 else "-"), abs(delta)
    size: float = n
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f", {sign}{size:.1f} {unit}" if unit != "B" else f", {sign}{n} B"
        size /= 1024
    return ""
