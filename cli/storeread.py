"""``kiln store cat``, ``ls`` and ``dump``: reading a store path's verified object to
stdout; and ``info``: what the store records of a path.

Invariant: nothing unverified reaches stdout as if it were good. ``cat`` spools the file
(in memory up to ``CAT_IN_MEMORY``, then in the store's ``tmp/``) until the whole archive
has verified; ``dump`` streams one piece behind, so a corrupt object ends in a truncated
NAR (which ``kiln store restore`` and ``nix-store --restore`` refuse) and a failure. Every
write to stdout is checked: a short write (a file size limit, a full disk) is an error,
never a silent truncation. Names are printed with backslash escapes (``shown``).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from kiln.store.shownname import shown_name as shown

from .common import WRITE_LIMIT_ERRNOS

if TYPE_CHECKING:
    import argparse

    from kiln.store.localstore import LocalStore

#: ``store cat`` keeps this much of a file in memory; the rest is spooled to the store's
#: ``tmp/`` until the archive is verified (no unverified byte reaches stdout)
CAT_IN_MEMORY = 32 << 20


def cat(store: LocalStore, path: str, subpath: str) -> None:
    """Write the file at ``subpath`` inside ``path`` to stdout, once all of it verified."""
    import tempfile

    from kiln.store import nar

    spool = store.root / "tmp"
    with tempfile.SpooledTemporaryFile(CAT_IN_MEMORY, dir=str(spool), prefix=f"{os.getpid()}-cat-") as f:
        try:
            nar.cat_into(store.nar(path), subpath, f.write)
        except OSError as e:  # the spool's disk is full: not the store's contents
            if e.filename is not None or e.errno not in WRITE_LIMIT_ERRNOS:
                raise
            from kiln.store.errors import StoreError

            raise StoreError(f"cannot hold {path} in {spool} while it is verified: {e.strerror}") from None
        f.seek(0)
        for piece in iter(lambda: f.read(1 << 20), b""):
            write_stdout(piece)


def ls(store: LocalStore, path: str, subpath: str, recursive: bool) -> None:
    """Print the entries under ``subpath`` inside ``path``, one line each."""
    from kiln.store import nar

    for e in nar.ls(store.nar(path), subpath, recursive=recursive):
        extra = (
            f" -> {shown(e.target or '')}"
            if e.type == "symlink"
            else (f" {e.size}" if e.type != "directory" else "")
        )
        print(f"{e.type:<10} {shown(e.path) if e.path else '.'}{extra}")


def dump(store: LocalStore, path: str) -> None:
    """Write the NAR of ``path`` to stdout, one piece behind its verification."""
    sys.stdout.flush()
    held = None
    for chunk in store.nar(path):
        if held is not None:
            write_stdout(held)
        held = chunk
    if held is not None:
        write_stdout(held)


def write_stdout(data: bytes | memoryview) -> None:
    """Write all of ``data`` to stdout, or raise (``sys.stdout.buffer.write`` may return
    a short count for a big buffer, e.g. at a file size limit, and say nothing)."""
    from kiln.store.nar_restore import write_all

    write_all(sys.stdout.fileno(), data)


def info(args: argparse.Namespace) -> int:
    """Print what the store records about PATH (``--json``: one object, ``ok`` then Nix's
    field names where Nix has one, hashes ``sha256:<nix32>`` as Nix prints them). ``closurePaths``/``closureSize`` count the closure's paths that
    are valid in the store; ``closureMissing`` maps each path the closure references but
    the store no longer holds (quarantined by ``kiln store verify --repair``, or deleted)
    to the closure members referencing it, ``{}`` when the closure is complete. The text
    form marks such a closure ``INCOMPLETE`` and lists the missing paths. Exit 0 either
    way: ``kiln verify`` is the check, this only describes. Works on a full disk: the
    path is kept from GC by the shared GC lock for the command's short run, not by a temp
    root, which would have to be written. ``ultimate`` (Nix's name; text: ``made here``)
    is true for a path built or added in this store, false for one imported (copied,
    substituted), null when unknown (registered before kiln recorded it: treated as
    imported; ``store.madehere``)."""
    from kiln.store.errors import StoreError
    from kiln.store.locks import FileLock
    from kiln.store.madehere import describe, made_here

    from .cmd_store import _human, _open
    from .jsonout import hash_text

    with _open(args, full_disk_read=True) as s, FileLock(s.gc_lock_path, shared=True):
        from .targets import resolve_path_or_root

        path = resolve_path_or_root(s, args.path)
        info = s.query(path)
        if info is None:
            raise StoreError(f"path {path} is not valid in the store at {s.root}")
        # (not closure(): a hole must show, not make the closure look smaller and whole)
        closure, holes = s.closure_with_holes([path])
        # (a member quarantined meanwhile by ``verify --repair``, which holds the GC lock
        # shared too, is no longer valid: not counted)
        members = [i for i in map(s.query, closure) if i is not None]
        closure_size = sum(i.nar_size for i in members)
        ultimate = made_here(s.conn, path)
        d = {
            "path": info.path,
            "narHash": hash_text(info.nar_hash),
            "narSize": info.nar_size,
            "fileHash": hash_text(info.file_hash) if info.file_hash else None,
            "fileSize": info.file_size,
            "references": list(info.references),
            "deriver": info.deriver,
            "signatures": list(info.sigs),
            "ca": info.ca,
            "registrationTime": info.registration_time,
            "ultimate": ultimate,
            "closureSize": closure_size,
            "closurePaths": len(members),
            "closureMissing": {h: list(by) for h, by in holes.items()},
            "realPath": str(s.real_path(path)),
            "object": str(s.object_path(path)),
        }
    if args.json:  # (``ok``: exit 0; an incomplete closure is described, not a failure)
        from .jsonout import emit

        emit(True, d, sort_keys=False)
        return 0
    print(f"path:          {d['path']}")
    print(f"nar hash:      {d['narHash']}")
    print(f"nar size:      {info.nar_size} ({_human(info.nar_size)})")
    print(f"file size:     {info.file_size} ({_human(info.file_size or 0)}, zstd)")
    print(f"deriver:       {d['deriver'] or '-'}")
    print(f"ca:            {d['ca'] or '-'}")
    print(f"made here:     {describe(ultimate)}")
    if holes:
        print(
            f"closure:       INCOMPLETE, {d['closurePaths']} paths, {_human(closure_size)} "
            f"and {len(holes)} missing (quarantined by 'kiln store verify --repair', or deleted: "
            "build or substitute again)"
        )
        print("missing:")
        for h, by in holes.items():
            print(f"  {h}  (referenced by {', '.join(by)})")
    else:
        print(f"closure:       {d['closurePaths']} paths, {_human(closure_size)}")
    print("references:" + ("" if info.references else "    -"))
    for r in info.references:
        print(f"  {r}")
    print("signatures:" + ("" if info.sigs else "    -"))
    for sig in info.sigs:
        print(f"  {sig}")
    return 0
