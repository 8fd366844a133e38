"""``kiln prefetch`` and ``kiln mirror-sources``: pinning and mirroring fixed-output sources.

``kiln prefetch URL`` downloads URL (``debian:`` URLs included) to a temporary directory
and prints the sha256 to pin in a ``fetchurl``. ``--unpack`` prints instead the NAR hash
of the tree a tar (plain, gzip, bzip2, xz or zstd) or zip archive unpacks to, a single
top-level entry stripped, as ``nix-prefetch-url --unpack`` computes it; the archive is
never extracted (``kiln.store.archivehash`` reads it into an in-memory tree within
limits, so no member can write outside it). ``--git REV`` exports a git revision and
prints the NAR hash a ``fetchgit`` needs. ``--mirror DIR`` also copies the downloaded
file (with ``--git``, the NAR of the exported tree) into a hashed mirror.

``kiln mirror-sources DIR FILE...`` evaluates each recipe file and puts the file of every
``builtin:fetchurl`` / ``builtin:fetchgit`` derivation in the closure into
``DIR/sha256/<hex>``, fetched through the normal fetcher (so other mirrors in
``KILN_SOURCE_MIRRORS`` are used first). A NAR-hashed source (``fetchgit``, recursive
fetchurl) is stored as its NAR serialisation, whose sha256 *is* the recursive hash, so the
same flat layout serves both (``kiln.store.fetch.fetch_tree_from_mirror`` reads it back).
Entries already present with the right hash are skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from kiln.store.hashes import Hash

    #: a mirrorer: put the source a fixed-output derivation's ``env`` names, of hash
    #: ``expected``, into the mirror directory
    Mirrorer = Callable[[dict[str, str], Hash, Path], None]


def _prefetch_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiln prefetch", description="download a URL and print the hash to pin")
    p.add_argument("url", metavar="URL", help="http(s)/file URL, debian:<pool path>, or a git URL with --git")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--unpack", action="store_true", help="print the NAR hash of the unpacked archive")
    g.add_argument("--git", metavar="REV", help="export git revision REV and print its NAR hash")
    p.add_argument("--format", choices=("hex", "nix32", "sri"), default="hex", help="hash form (default hex)")
    p.add_argument(
        "--mirror",
        type=Path,
        metavar="DIR",
        help="also copy the file (--git: the tree's NAR) into this hashed mirror",
    )
    return p


def _mirror_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kiln mirror-sources", description="copy every source a recipe set needs into a hashed mirror"
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    return p


def _show(h: Hash, fmt: str) -> str:
    return {"hex": h.hex, "nix32": h.nix32, "sri": h.sri}[fmt]


def _download_name(url: str) -> str:
    """A safe file name for the download of ``url``: its last path component, or
    "download" when that is empty, ``.`` or ``..`` (renaming onto a directory fails with a
    confusing error) or too long for a file name."""
    name = url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return name if name not in ("", ".", "..") and len(name.encode()) <= 200 else "download"


def prefetch(argv: list[str]) -> int:
    args = _prefetch_parser().parse_args(argv)
    from kiln.store import nar
    from kiln.store.fetch import copy_to_mirror, fetch_git, fetch_url
    from kiln.store.hashes import Hash
    from kiln.store.systemp import owned_tmpdir

    # (not TemporaryDirectory: a kill -9 would leave the download in $TMPDIR for good)
    with owned_tmpdir("prefetch") as work:
        if args.git:
            fetch_git(args.url, args.git, work / "tree")
            h, _ = nar.hash_path(work / "tree")
            if args.mirror:  # the tree's NAR under its hash, where fetchgit looks first
                from kiln.store.fetchmirror import put_tree_in_mirror

                put_tree_in_mirror(work / "tree", args.mirror, h)
                print(f"mirrored as {args.mirror / 'sha256' / h.hex}", file=sys.stderr)
            print(_show(h, args.format))
            return 0
        from kiln.store.fetch import FetchError
        from kiln.store.fetchtext import refuse_credentials

        # (first: the file's name, which messages show, comes from the URL)
        refuse_credentials(args.url, FetchError)
        dest = work / _download_name(args.url)
        fetch_url([args.url], None, dest, mirrors=[], progress=True)
        digest = hashlib.sha256()
        with open(dest, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        flat = Hash("sha256", digest.digest())
        if args.mirror:
            copy_to_mirror(dest, args.mirror)
            print(f"mirrored as {args.mirror / 'sha256' / flat.hex}", file=sys.stderr)
        if args.unpack:
            from kiln.store.archivehash import unpacked_nar_hash

            h = unpacked_nar_hash(dest, work)
            print(f"file sha256 {flat.hex}; unpacked tree NAR hash:", file=sys.stderr)
            print(_show(h, args.format))
        else:
            print(_show(flat, args.format))
    return 0


def mirror_sources(argv: list[str]) -> int:
    args = _mirror_parser().parse_args(argv)
    from kiln.lang import evaluate_file
    from kiln.store.errors import KilnError
    from kiln.store.hashes import Hash

    wanted: dict[str, tuple[str, dict[str, str], str]] = {}  # hex -> (builder/mode, env, name)
    skipped: list[str] = []
    for file in args.files:
        ev = evaluate_file(file)
        ev.attributes()  # a binding that fails to evaluate is an error here: its sources would be missed
        for drv in ev.drvs.values():
            out = drv.outputs_map.get("out")
            if not drv.builder.startswith("builtin:fetch") or out is None or not out.is_fixed:
                continue
            kind = f"{drv.builder.removeprefix('builtin:')}:{out.hash_algo}"
            if kind not in _MIRRORABLE:
                skipped.append(f"{drv.name} ({drv.builder}, {out.hash_algo})")
                continue
            wanted.setdefault(out.hash, (kind, drv.env_map, drv.name))
    fetched = present = 0
    errors: list[str] = []
    for hexd, (kind, env, name) in sorted(wanted.items(), key=lambda kv: kv[1][2]):
        target = args.dir / "sha256" / hexd
        if target.is_file() and _sha256_file(target) == hexd:
            present += 1
            continue
        try:
            _MIRRORABLE[kind](env, Hash("sha256", bytes.fromhex(hexd)), args.dir)
            fetched += 1
            print(f"{hexd}  {name}")
        except KilnError as e:  # one failed source must not stop the others
            errors.append(f"{name}: {e}")
    for s in skipped:
        print(f"not mirrored: {s}", file=sys.stderr)
    for err in errors:
        print(f"error: {err}", file=sys.stderr)
    print(
        f"{fetched} fetched, {present} already present, {len(errors)} failed, {len(skipped)} not mirrorable",
        file=sys.stderr,
    )
    return 1 if errors else 0


def _urls(env: dict[str, str]) -> list[str]:
    from kiln.store.fetch import split_urls

    return split_urls(env.get("urls", "")) or [env["url"]]


def _mirror_flat(env: dict[str, str], expected: Hash, mirror: Path) -> None:
    from kiln.store.fetch import fetch_url

    size = env.get("size", "")  # a lock entry's exact size, when the derivation carries it
    fetch_url(
        _urls(env),
        expected,
        mirror / "sha256" / expected.hex,
        mirrors=[],
        progress=True,
        size=int(size) if size.isdigit() else None,
    )


def _mirror_tree(produce: Callable[[dict[str, str], Hash, Path], None]) -> Mirrorer:
    """A mirrorer for NAR-hashed sources: ``produce(env, expected, tree)`` makes the tree
    in a temp dir, its NAR is stored."""

    def run(env: dict[str, str], expected: Hash, mirror: Path) -> None:
        from kiln.store.fetch import put_tree_in_mirror
        from kiln.store.systemp import owned_tmpdir

        with owned_tmpdir("mirror") as tmp:
            tree = tmp / "out"
            produce(env, expected, tree)
            put_tree_in_mirror(tree, mirror, expected)

    return run


def _git_tree(env: dict[str, str], expected: Hash, tree: Path) -> None:
    from kiln.store.fetch import fetch_git

    fetch_git(env["url"], env["rev"], tree)


def _url_tree(env: dict[str, str], expected: Hash, tree: Path) -> None:
    from kiln.store.fetch import fetch_url

    # the NAR hash checked per URL: one with other content is passed over for the next
    fetch_url(_urls(env), expected, tree, mirrors=[], progress=True, recursive=True)


#: "<builtin>:<hash algo>" -> how to put it in a mirror
_MIRRORABLE: dict[str, Mirrorer] = {
    "fetchurl:sha256": _mirror_flat,
    "fetchurl:r:sha256": _mirror_tree(_url_tree),
    "fetchgit:r:sha256": _mirror_tree(_git_tree),
}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main(argv: list[str]) -> int:
    if argv and argv[0] == "mirror-sources":
        return mirror_sources(argv[1:])
    return prefetch(argv[1:] if argv and argv[0] == "prefetch" else argv)
