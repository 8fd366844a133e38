"""GC roots on the command line: a root NAME as an argument, the note when a root is
replaced, and ``kiln store add-root | roots | remove-root | why``.

Root names are per store: ``gcroots/NAME`` is one name shared by every recipe and
project using the store, so ``kiln build`` in two projects with the same attribute name
replaces one root. Every command that replaces a root that named another path says so
on stderr (``add_root``: ``note: root NAME now points to NEW (was OLD, ...)``); ``kiln
build --root NAME`` chooses a per-project name, ``--no-root`` makes none.

A root NAME given to a command (``kiln run``, ``log``, ``verify``, ``sbom``, ``store
info``, ``push``) is read by ``root_path`` the way GC reads it (``kiln.store.roots``):
its logical store path, however the store root was moved or reached. A root that names
no store path, or a path no longer valid, is an error naming the root.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.store.localstore import LocalStore
    from kiln.store.roots import RootChange

    from .buildglue import Target


def root_path(store: LocalStore, name: str, keep: bool = False) -> str | None:
    """The valid logical store path the root ``gcroots/<name>`` names, None if there is
    no root of that name; ``KilnError`` naming the root if it names no store path or one
    that is not valid. ``keep``: make the path a temp root first (then checked: a GC
    cannot take it between the check and its use)."""
    from kiln.store.errors import KilnError
    from kiln.store.roots import root_at

    root = root_at(store, name)
    if root is None:
        return None
    where = store.root / "gcroots" / name
    if root.path is None:
        raise KilnError(
            f"GC root {name!r} ({where} -> {root.target}) names no path in the store {store.store_dir}"
        )
    if keep:
        store.keep([root.path])
    if not store.is_valid(root.path):
        raise KilnError(
            f"GC root {name!r} ({where}) names {root.path}, which is not valid in the store at "
            f"{store.root} (collected or quarantined): build it again, or remove the root "
            f"(kiln store remove-root {name})"
        )
    return root.path


def add_root(store: LocalStore, name: str, path: str) -> RootChange:
    """``store.add_root``, saying on stderr when it replaced a root that named another
    path (which GC may now delete)."""
    change = store.add_root(name, path)
    if change.moved:
        print(
            f"note: root {name} now points to {path} (was {change.was}, which GC may now delete "
            "unless another root keeps it)",
            file=sys.stderr,
        )
    return change


def root_outputs(store: LocalStore, targets: list[Target], chosen: str | None, none: bool) -> None:
    """``kiln build``'s GC roots: one per output, named after the attribute (``root_name``)
    or ``chosen`` (``--root``; ``<chosen>-<output>`` for an output other than ``out``);
    none if ``none`` (``--no-root``). Replacing a root that named another path is said."""
    if none:
        return
    for t in targets:
        for name, out in t.outputs.items():
            base = chosen or t.attr
            full = base if name == "out" else f"{base}-{name}"
            add_root(store, full if chosen else root_name(full), out)


def root_name(attr: str) -> str:
    """The GC root name for an attribute as given on the command line: itself if it is a
    plain name; a variant such as ``zlib(static = true)`` becomes ``zlib-static-true-``
    plus 8 hex digits of the exact text, so two variants never share (and overwrite) a
    root."""
    if attr and all(c.isalnum() or c in "-_.+" for c in attr) and not attr.startswith("."):
        return attr
    import hashlib
    import re

    words = "-".join(w for w in re.split(r"[^A-Za-z0-9_.+]+", attr) if w).lstrip(".")[:80]
    return f"{words or 'attr'}-{hashlib.sha256(attr.encode()).hexdigest()[:8]}"


def add_parsers(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """The root subcommands of ``kiln store`` (``cmd(name, help)`` makes one); each one's
    ``run(store, args)`` is its ``cmd_*`` here."""
    sp = cmd("add-root", "make gcroots/NAME point at PATH (root names are per store, shared by every recipe)")
    sp.add_argument("name")
    sp.add_argument("path")
    sp.set_defaults(run=cmd_add_root)
    sp = cmd("roots", "list the GC roots: NAME -> store path, marking those that keep nothing")
    sp.set_defaults(run=cmd_roots)
    sp = cmd("remove-root", "remove the GC root NAME (a link or file in gcroots/, nothing else)")
    sp.add_argument("name")
    sp.set_defaults(run=cmd_remove_root)
    sp = cmd("why", "which roots keep PATH alive, and through which references")
    sp.add_argument("path")
    sp.set_defaults(run=cmd_why)


def cmd_add_root(store: LocalStore, args: argparse.Namespace) -> int:
    from .cmd_store import _path
    from .targets import resolve_path_or_root

    # (a path, a base name or hash part, another root's name; kept, then checked valid)
    path, _ = _path(store, resolve_path_or_root(store, args.path))
    change = add_root(store, args.name, path)
    # what the link holds (as ls -l shows it), then the store path it names
    print(f"{change.link} -> {change.target} ({path})")
    return 0


def cmd_roots(store: LocalStore, args: argparse.Namespace) -> int:
    """Each root as ``NAME -> PATH``; one that keeps nothing is marked."""
    from kiln.store.locks import FileLock
    from kiln.store.roots import each_root

    lines = []
    with FileLock(store.gc_lock_path, shared=True):  # (no GC between reading and checking)
        for r in each_root(store):
            if r.path is None:
                lines.append(f"{r.name} -> {r.target} (names no store path: keeps nothing)")
            elif not store.is_valid(r.path):
                lines.append(
                    f"{r.name} -> {r.path} (dangling: not valid in the store, collected or quarantined)"
                )
            else:
                lines.append(f"{r.name} -> {r.path}")
    # printed after the lock is released: a pager left open must not hold GC off
    for line in lines:
        print(line)
    return 0


def cmd_remove_root(store: LocalStore, args: argparse.Namespace) -> int:
    from kiln.store.roots import remove_root

    r = remove_root(store, args.name)
    print(f"removed root {r.name} (-> {r.path or r.target})")  # (what it did: stdout holds nothing else)
    return 0


def cmd_why(store: LocalStore, args: argparse.Namespace) -> int:
    """What keeps PATH alive (``kiln.store.keptby``); exit 0 whether or not anything does."""
    from kiln.store.keptby import kept_by

    from .targets import resolve_path_or_root

    path = resolve_path_or_root(store, args.path)
    keepers = kept_by(store, path)
    if not keepers:
        print(f"{path}: no root keeps it alive; the next 'kiln store gc' will delete it")
        return 0
    print(f"{path} is kept alive by {len(keepers)} root(s):")
    for k in keepers:
        print(f"  {k.root}: {' -> '.join(k.chain)}")
    return 0
