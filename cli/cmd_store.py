"""``kiln store``: inspect and maintain the local store.

Subcommands: init, add (``dashvalue``: a --name starting with '-'), cat, ls, dump,
restore, info, verify, gc (``storegc``), sign, unsign (``storeunsign``), and the roots'
add-root, roots, remove-root, why (``storeroots``), diff (``storediff``).
Paths may be given as logical store paths (``/kiln/store/<hash>-<name>[/sub]``) or as
real paths under the store root (or symlinks to either, like a ``result`` link).
Exit status: 0 success, 1 error or (verify) problems found, 2 usage.

Streams (README, "In scripts"): ``--json`` (``info``, ``verify``) prints one object with
``ok`` on stdout (``jsonout``); otherwise the summary of what a command did goes to
stdout when stdout carries nothing else (``verify``'s ``checked N paths``, ``sign``'s
``signed N paths``), findings, warnings and progress to stderr. ``gc`` lists what it
deleted on stdout, so its summary goes to stderr, as ``nix-store --gc`` does; so does
``unsign``, which lists the signatures it removed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .common import WRITE_LIMIT_ERRNOS, UsageError, add_store_arg, nonempty_path, store_root, whole_number

if TYPE_CHECKING:
    from collections.abc import Callable

    from kiln.store.localstore import LocalStore


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiln store", description="inspect and maintain the local store")
    # also accepted before the subcommand (``kiln store --store DIR verify``)
    p.add_argument(
        "--store", dest="store_top", type=Path, default=None, metavar="DIR", help=argparse.SUPPRESS
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        add_store_arg(sp)
        return sp

    sp = cmd("init", "create a store")
    sp.add_argument(
        "--store-dir", default=None, metavar="DIR", help="logical store dir (default /kiln/store)"
    )
    sp = cmd("add", "add a file or directory as a content-addressed path; prints the path")
    sp.add_argument("path", type=nonempty_path)
    sp.add_argument(
        "--name",
        default=None,
        help="name of the store path (default: the file name); it may start with '-' (--name -x)",
    )
    p.set_defaults(add_options=frozenset(sp._option_string_actions))  # (``dashvalue``)
    sp.add_argument(
        "--add-root",
        metavar="NAME",
        default=None,
        help="also make gcroots/NAME point at it (no GC can come in between, as it can after the command)",
    )
    sp = cmd("cat", "print a file inside a store path (read from its verified object)")
    sp.add_argument("path")
    sp.add_argument("subpath", nargs="?", default="")
    sp = cmd("ls", "list a directory inside a store path")
    sp.add_argument("path")
    sp.add_argument("subpath", nargs="?", default="")
    sp.add_argument("-R", "--recursive", action="store_true")
    sp = cmd("dump", "write the NAR of a store path to stdout")
    sp.add_argument("path")
    sp = cmd("restore", "unpack a NAR from stdin into DIR (must not exist)")
    sp.add_argument("dir", type=Path)
    sp = cmd("info", "show what the store knows about a path")
    sp.add_argument("path")
    sp.add_argument("--json", action="store_true")
    sp = cmd("verify", "re-hash every object and tree; exit 1 on problems")
    sp.add_argument("--repair", action="store_true", help="re-materialise / rebuild / quarantine bad paths")
    sp.add_argument(
        "--trusted-key",
        action="append",
        default=[],
        metavar="PUB",
        help="public key file or text (repeatable); when given, $KILN_TRUSTED_KEYS is ignored",
    )
    sp.add_argument(
        "--sigs-needed",
        type=whole_number(0),
        default=None,
        metavar="N",
        help="valid trusted signatures each path needs (default: 1 with --trusted-key, else 0; "
        "a content-addressed path is proved by its content instead)",
    )
    sp.add_argument("--json", action="store_true")
    from .storegc import add_gc_parser

    add_gc_parser(cmd)  # gc
    from .targets import signer_args

    sp = cmd("sign", "sign paths with a secret key or an external signer (KMS/HSM)")
    signer_args(sp, "the paths")
    sp.add_argument("paths", nargs="*")
    sp.add_argument("--all", action="store_true", help="sign every valid path")
    from .storediff import add_parser
    from .storeroots import add_parsers
    from .storeunsign import add_parser as add_unsign

    add_unsign(cmd)  # unsign
    add_parsers(cmd)  # add-root, roots, remove-root, why
    add_parser(cmd)  # diff
    return p


def _open(args: argparse.Namespace, create: bool = False, full_disk_read: bool = False) -> LocalStore:
    """The store; ``full_disk_read``: a command that reads, and ends soon, still opens it
    on a disk too full for SQLite's shared-memory file (``LocalStore.open``)."""
    from kiln.store.localstore import LocalStore

    return LocalStore.open(store_root(args), create=create, full_disk_read=full_disk_read)


def _path(store: LocalStore, arg: str) -> tuple[str, str]:
    """(store path, path inside it) ``arg`` names: a logical or physical path, or (as
    ``kiln run`` and ``store info`` take them) a GC root name, base name or hash part,
    optionally followed by ``/`` and a path inside (``hello/bin/hello``)."""
    from kiln.store.errors import KilnError, StoreError

    from .targets import resolve_target

    try:
        path, sub = store.resolve(arg)
    except (KilnError, ValueError) as e:
        head, _, sub = arg.partition("/")
        sub = sub.strip("/")
        try:
            # (a file of that name here, even a dangling ./result, is what was meant)
            path = resolve_target(store, head) if head and not os.path.lexists(head) else ""
        except KilnError:
            path = ""
        if not path:
            raise e from None
    store.keep([path])  # a temp root first (with its closure): a concurrent GC must not
    # delete what the command is about to read; then check, as a GC may have run before
    if not store.is_valid(path):
        raise StoreError(f"path {path} is not valid in the store at {store.root}")
    return path, sub


def _human(n: int) -> str:
    size: float = n
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return f"{n} B"


def main(argv: list[str]) -> int:
    argv = argv[1:] if argv and argv[0] == "store" else argv
    parser = _parser()
    from .dashvalue import dash_name

    args = parser.parse_args(dash_name(argv, parser.get_default("add_options")))
    if args.store is None:
        args.store = args.store_top
    try:
        if (run := getattr(args, "run", None)) is not None:  # (``storeroots``: on the open store)
            with _open(args) as s:
                return run(s, args)
        return globals()["_cmd_" + args.cmd.replace("-", "_")](args)
    except OSError as e:
        # tree walkers use bytes paths: report the file name as text, not b'...'
        if e.strerror and (isinstance(e.filename, bytes) or isinstance(e.filename2, bytes)):
            raise type(e)(e.errno, e.strerror, _text(e.filename), None, _text(e.filename2)) from None
        raise


def _text(name: str | bytes | None) -> str | None:
    return os.fsdecode(name) if isinstance(name, bytes) else name


def _cmd_init(args: argparse.Namespace) -> int:
    from kiln.store.localstore import LocalStore

    with LocalStore.open(store_root(args), store_dir=args.store_dir, create=True) as s:
        print(f"store at {s.root} (store dir {s.store_dir})")
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    if args.add_root is not None:
        from kiln.store.localstore import check_root_name

        check_root_name(args.add_root)  # before the copy, not after it
    with _open(args, create=True) as s:
        try:
            path = s.add_path(args.path, name=args.name).path
        except OSError as e:
            if e.filename is not None or e.errno not in WRITE_LIMIT_ERRNOS:
                raise
            # a write of the object or the copy (full disk, size limit) names no file
            from kiln.store.errors import StoreError

            raise StoreError(f"cannot write into the store at {s.root}: {e.strerror}") from None
        if args.add_root is not None:
            from .storeroots import add_root

            add_root(s, args.add_root, path)  # still held by this store object's temp root
        print(path)
    return 0


def _cmd_cat(args: argparse.Namespace) -> int:
    from .storeread import cat

    with _open(args) as s:
        path, sub = _path(s, args.path)
        cat(s, path, _join(sub, args.subpath))
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    from .storeread import ls

    with _open(args) as s:
        path, sub = _path(s, args.path)
        ls(s, path, _join(sub, args.subpath), args.recursive)
    return 0


def _join(sub: str, subpath: str) -> str:
    """The path inside a store path: the argument's own part, then SUBPATH."""
    return "/".join(x for x in (sub, subpath.strip("/")) if x)


def _cmd_dump(args: argparse.Namespace) -> int:
    from .storeread import dump

    with _open(args) as s:
        path, sub = _path(s, args.path)
        if sub:
            from kiln.store.errors import StoreError

            raise StoreError("dump takes a store path, not a path inside one")
        dump(s, path)
    return 0


#: how a ``nix-store --export`` stream begins: u64 1 ("a path follows"), then that path's
#: NAR, whose first token is the magic; an export of no paths is u64 0 alone
_EXPORT_HEAD = (1).to_bytes(8, "little") + (13).to_bytes(8, "little") + b"nix-archive-1"
_EMPTY_EXPORT = bytes(8)


def _cmd_restore(args: argparse.Namespace) -> int:
    """Unpack the NAR on stdin at DIR. A ``nix-store --export`` stream (a NAR framed with
    path metadata) is refused from its first bytes, before anything is made, with the
    way across (the NAR reader alone would only say its magic is wrong)."""
    import itertools

    from kiln.store import nar
    from kiln.store.errors import KilnError

    from .common import terminate_as_interrupt

    with terminate_as_interrupt():  # SIGTERM/SIGHUP unwind: the half-made tree is removed
        stdin = sys.stdin.buffer
        head = b""
        while len(head) < len(_EXPORT_HEAD) and (more := stdin.read(len(_EXPORT_HEAD) - len(head))):
            head += more
        if head in (_EXPORT_HEAD, _EMPTY_EXPORT):
            raise KilnError(
                "stdin is a 'nix-store --export' stream, not a NAR: kiln does not import those. "
                "To bring store paths across: nix copy --to 'file://DIR?compression=zstd&secret-key=SK' "
                "PATH..., then kiln copy --from file://DIR --to store --trusted-key PUB PATH... "
                "(PUB: SK's public key); to unpack one path's tree: nix-store --dump PATH | kiln store restore DIR"
            )
        nar.restore(itertools.chain((head,), iter(lambda: stdin.read(1 << 20), b"")), args.dir)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .storeread import info

    return info(args)


def _cmd_verify(args: argparse.Namespace) -> int:
    from .common import trusted_keys

    # --trusted-key names the keys asked about: $KILN_TRUSTED_KEYS (a substituter
    # setting) then counts for nothing, else a key it trusts would satisfy the check
    trusted = trusted_keys(args.trusted_key, env=not args.trusted_key)
    # keys given here mean "check the signatures" (as registry verify); keys only in
    # $KILN_TRUSTED_KEYS do not make every local build a problem
    needed = args.sigs_needed if args.sigs_needed is not None else (1 if args.trusted_key else 0)
    with _open(args, full_disk_read=True) as s:
        # (GC waits for the shared GC lock verify holds: the meter says why it takes long)
        r = s.verify(
            repair=args.repair,
            trusted=trusted,
            sigs_needed=needed,
            progress=_meter("verifying (a GC waits until this is done)"),
        )
    from .storeverifyshow import show

    return show(r, sigs_checked=needed > 0, repair=args.repair, as_json=args.json)


def _meter(what: str) -> Callable[[int, int], None] | None:
    """A ``progress(done, total)`` that shows ``what: done/total`` on stderr when it is a
    terminal (else None), at most ten times a second, cleared at the end."""
    if not sys.stderr.isatty():
        return None
    import time

    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.1:
            return
        last[0] = now
        end = "\r\x1b[K" if done == total else ""
        sys.stderr.write(f"\r\x1b[K{what}: {done}/{total}{end}")
        sys.stderr.flush()

    return show


def _cmd_gc(args: argparse.Namespace) -> int:
    from .storegc import cmd_gc

    return cmd_gc(args)


def _cmd_sign(args: argparse.Namespace) -> int:
    """``--key FILE`` or ``--signer-cmd CMD --signer-key PUB`` (the signature is checked
    against PUB before it is added: ``signcmd``). Ed25519 signatures are deterministic, so a
    path that carries this key's signature already is counted apart, not signed again."""
    from kiln.store.attestations import load_named_signer, sign_path
    from kiln.store.signing import PublicKey

    if args.all == bool(args.paths):
        raise UsageError("give store paths to sign, or --all (not both)")
    if not (args.key or args.signer_cmd):
        raise UsageError("give the signing key: --key FILE, or --signer-cmd CMD --signer-key PUB")
    if args.signer_key and not args.signer_cmd:
        raise UsageError("--signer-key is only meaningful with --signer-cmd")
    name, signer = load_named_signer(args.key, signer_cmd=args.signer_cmd, signer_public=args.signer_key)
    with _open(args) as s:
        if args.all:
            paths = s.all_paths()
            s.keep(paths)  # (a path a GC deleted before this is skipped below)
        else:
            paths = [_path(s, p)[0] for p in args.paths]
        pub = PublicKey(name, signer.public_key)
        signed = already = 0
        for p in paths:
            info = s.query(p)
            if info is None:
                continue
            # (not signed again: with --signer-cmd that would be a KMS call per path)
            if any(pub.verify(info.fingerprint(), sig) for sig in info.sigs):  # (name checked too)
                already += 1
                continue
            sign_path(s, p, name, signer, info)
            signed += 1
    # (what it did, on stdout: it prints nothing else)
    print(
        f"signed {signed} paths" + (f" ({already} carried this key's signature already)" if already else "")
    )
    return 0
