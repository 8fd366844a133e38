"""The rebuilder commands: ``kiln rebuild``, ``kiln challenge`` and ``kiln report
reproducibility`` (usage in ``cmd_verify``'s docstring; dispatched from there). The work
is in ``rebuilders`` and ``challenge``; this module parses arguments and prints. Each
``--json`` is one object on stdout with ``ok`` (the exit status is 0) and NAR hashes as
``sha256:<nix32>`` (``jsonout``): ``rebuild``'s ``outputs``, ``challenge``'s ``summary``
and ``paths``, ``report``'s ``summary`` and ``packages``."""

from __future__ import annotations

import argparse
import sys

from kiln.store.localstore import LocalStore

from .buildargs import add_vary_only
from .common import store_root, whole_number
from .jsonout import emit
from .targets import open_store, resolve_target, signer_args


def _rebuild(args: argparse.Namespace) -> int:
    from kiln.store.dsse import keyid

    from . import rebuilders

    store = open_store(args)
    try:
        path = resolve_target(store, args.path)
        signer = rebuilders.load_rebuilder_signer(store, args.key, args.signer_cmd, args.signer_key)
        if rebuilders.provenance_signed_by(store, path, signer.public_key):
            print(
                f"warning: key {keyid(signer.public_key)[:16]} also signed the provenance of {path}; "
                "verifiers will not count its verdict as an independent rebuild (give a rebuilder key with --key)",
                file=sys.stderr,
            )
        builder = rebuilders.make_builder(store, cores=args.cores, mirrors=tuple(args.source_mirror))
        if args.deep:
            from .rebuilddeep import rebuild_deep

            drv = rebuilders.deriver_of(store, path)
            verdicts = rebuild_deep(store, builder, drv, signer, rebuilders.stderr_say, vary=_vary(args))
        else:
            verdicts = rebuilders.rebuild_path(store, builder, path, signer, vary=_vary(args))
    finally:
        store.close()
    # a rebuild that compared nothing proves nothing (--deep of a fetch's output: its
    # closure holds nothing to rebuild)
    ok = bool(verdicts) and all(v.identical for v in verdicts)
    if not verdicts:
        print(
            f"kiln rebuild: nothing to rebuild for {path} (a fetch's output is pinned by its hash)",
            file=sys.stderr,
        )
    if args.json:
        emit(ok, {"outputs": [v.to_dict() for v in verdicts]})
    else:
        print("\n".join(rebuilders.render_verdicts(verdicts)))
    return 0 if ok else 1


def _challenge(args: argparse.Namespace) -> int:
    from . import challenge

    store = open_store(args)
    try:
        locals_ = challenge.local_hashes(
            store, args.paths, rebuild=args.rebuild, mirrors=tuple(args.source_mirror), resolve=resolve_target
        )
        results = challenge.challenge(store.store_dir, locals_, args.registry)
    finally:
        store.close()
    # a registry that could not answer is reported and the others still asked, but the
    # run did not check what it was asked to: exit 1, as the help says
    bad = any(r.verdict == "inconsistent" or any(a.status == "error" for a in r.answers) for r in results)
    if args.json:
        emit(not bad, {"summary": challenge.summary(results), "paths": [r.to_dict() for r in results]})
    else:
        print("\n".join(challenge.render(results)))
    return 1 if bad else 0


def _report(args: argparse.Namespace) -> int:
    from . import rebuilders

    store = LocalStore.open(store_root(args))
    try:
        signer = (
            rebuilders.load_rebuilder_signer(store, args.key, args.signer_cmd, args.signer_key)
            if args.key or args.signer_cmd
            else None
        )
        results = rebuilders.reproducibility(
            store,
            args.files,
            signer=signer,
            mirrors=tuple(args.source_mirror),
            cores=args.cores,
            vary=_vary(args),
        )
    finally:
        store.close()
    # a report that checked nothing says so and fails: an empty "all reproducible" proves nothing
    ok = bool(results) and all(r.reproduced for r in results)
    if not results:
        print(f"kiln report: no package in {', '.join(args.files)} was checked", file=sys.stderr)
    if args.json:
        emit(ok, {"summary": rebuilders.summary(results), "packages": [r.to_dict() for r in results]})
        return 0 if ok else 1
    print("\n".join(rebuilders.render_report(results)))
    return 0 if ok else 1


def _vary(args: argparse.Namespace) -> bool | frozenset[str]:
    """``rebuilders``' ``vary``: the ``--vary-only`` names, else whether ``--vary``."""
    return args.vary_only if args.vary_only is not None else args.vary


def _source_mirror_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source-mirror", action="append", default=[], metavar="DIR|URL", help="hashed source mirror"
    )


def _build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--vary",
        action="store_true",
        help="rebuild under varied host conditions (dirs, KILN_CORES, one CPU, umask, directory order, clock +10 years)",
    )
    add_vary_only(p)
    p.add_argument(
        "--cores", type=whole_number(0), default=0, help="KILN_CORES for the builds (default: all cores)"
    )
    _source_mirror_arg(p)


def _rebuild_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kiln rebuild",
        description="rebuild a path from its derivation in a fresh sandbox and attest whether it reproduced",
        epilog="exit status: 0 reproduced, 1 not reproduced (or an error), 2 usage error",
    )
    p.add_argument(
        "path", metavar="PATH", help="store path, base name, hash part, GC root name or sha256:<NAR digest>"
    )
    signer_args(p, "the verification summary (default: the store's build key)")
    p.add_argument(
        "--deep",
        action="store_true",
        help="also rebuild every derivation below it (inputs first; not fetches), each with its own verdict",
    )
    _build_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(fn=_rebuild)
    return p


def _challenge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kiln challenge",
        description="compare the NAR hashes registries serve with the local build",
        epilog="exit status: 0 no disagreement, 1 some sources disagree (or an error), 2 usage error",
    )
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="store paths (need not be valid here) or GC roots"
    )
    p.add_argument(
        "--registry", action="append", required=True, metavar="URL", help="registry to ask (repeat)"
    )
    p.add_argument("--rebuild", action="store_true", help="rebuild each path locally first and use that hash")
    _source_mirror_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(fn=_challenge)
    return p


def _report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kiln report reproducibility",
        description="build, rebuild and report every package of recipe files",
        epilog="exit status: 0 every package reproduced, 1 otherwise, 2 usage error",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="recipe files")
    signer_args(p, "a verification summary per output (default: none signed)")
    _build_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(fn=_report)
    return p


PARSERS = {"rebuild": _rebuild_parser, "challenge": _challenge_parser, "report": _report_parser}
