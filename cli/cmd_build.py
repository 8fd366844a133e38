"""``kiln build FILE [ATTR...]`` and ``kiln log PATH``.

``kiln log`` writes the log's bytes as they are to a pipe or file; on a terminal, with
its control characters escaped (``buildlogs.TerminalSafe``), as ``-L`` does on one.

Build options mirror Nix's where Nix has one: ``--jobs/-j``, ``--cores``, ``-L``
(print build logs), ``--keep-failed/-K``, ``--check``, ``--rounds N``, ``--timeout``,
``--max-silent-time``, ``--max-log-size``, ``--keep-going/-k``. Registries to substitute from are given with ``--substituter
URL`` (repeatable) plus ``--trusted-key`` (public key text or file), and ``--attester-key``
for keys that sign substituted paths' attestations only; ``--no-substitute`` turns them
off (the options: ``buildargs``). An attestation of a substituted path refused as
tampered with or not as listed (``buildglue``) fails the command, exit 1, after the
build: its outputs are still built, rooted and printed first.
Outputs are printed on stdout, one per line; a GC root named after
the attribute (``storeroots.root_name``) is created so ``kiln run ATTR`` finds the result, or named
``--root NAME`` (one attribute; another output ``NAME-<output>``), or none with
``--no-root`` (the outputs are then temp roots of the command only). Root names are
per store, shared by every recipe: replacing one that named another path is said on
stderr (``storeroots.add_root``).

There is no option to build without the sandbox: if bubblewrap cannot run, the build
is refused with the reason. ``KILN_BWRAP`` names the bwrap binary (default: on PATH).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from .buildargs import build_parser as _parser
from .common import UsageError, add_store_arg, store_root, terminate_as_interrupt

if TYPE_CHECKING:
    from kiln.lang import Evaluation
    from kiln.store.dsse import Signer
    from kiln.store.localstore import LocalStore
    from kiln.store.signing import SecretKey

    from .buildglue import Target
    from .buildsubst import AttestationsRefused


def main(argv: list[str]) -> int:
    if argv[0] == "log":
        return _log(argv[1:])
    args = _parser().parse_args(argv[1:])
    args.vary = args.vary or args.vary_only is not None
    if args.vary and not args.check:
        flag = "--vary-only" if args.vary_only is not None else "--vary"
        raise UsageError(f"{flag} goes with --check (it varies the conditions of the rebuild)")
    if args.root is not None:
        from kiln.store.localstore import check_root_name

        check_root_name(args.root)  # before anything is evaluated or built
    if args.dry_run and (args.check or args.rounds > 1):
        raise UsageError("--dry-run says what a build would do; it goes without --check and --rounds")
    if args.signer_key and not args.signer_cmd:
        # (ignored, kiln made a new key on the build machine: the opposite of the intent)
        raise UsageError("--signer-key names the public key of --signer-cmd; give both, or --sign-key FILE")
    from kiln.store.build import BuildFailures
    from kiln.store.localstore import LocalStore

    from .buildsubst import AttestationsRefused

    with terminate_as_interrupt(), LocalStore.open(store_root(args)) as store:
        ev, targets = _targets(store, args)
        if args.dry_run:
            from .builddry import dry_run

            dry_run(store, ev, targets, args)
            return 0
        try:
            _realise(store, ev, targets, args)
        except BuildFailures as e:  # -k: what was built is printed (and rooted) too
            _print(store, targets, {r.drv_path for r in e.results}, args.json, ok=False)
            raise
        except AttestationsRefused:  # built and rooted: printed, then the command fails
            _print(store, targets, {t.drv_path for t in targets}, args.json, ok=False)
            raise
        _print(store, targets, {t.drv_path for t in targets}, args.json, ok=True)
    return 0


def _print(store: LocalStore, targets: list[Target], realised: set[str], as_json: bool, ok: bool) -> None:
    """The outputs of the ``realised`` targets, a path a line; or (``as_json``) one JSON
    object (``jsonout``: ``ok``, the command's exit status is 0) whose ``targets`` lists
    every target, in the order given: ``attribute``, ``drvPath``, ``outputs`` and
    ``realised`` (all its outputs are valid now), for a script to tell which of ``-k``'s
    targets failed."""
    if not as_json:
        for t in targets:
            if t.drv_path in realised:
                for out in t.outputs.values():
                    print(out)
        return
    from .jsonout import emit

    targets_doc = [
        {
            "attribute": t.attr,
            "drvPath": t.drv_path,
            "outputs": dict(t.outputs),
            "realised": t.drv_path in realised and all(store.is_valid(p) for p in t.outputs.values()),
        }
        for t in targets
    ]
    emit(ok, {"targets": targets_doc})


def build(store: LocalStore, args: argparse.Namespace) -> list[Target]:
    """Evaluate ``args.file`` (or read ``.drv`` targets), build or substitute what is
    missing, root the outputs (``_root``); return the targets. Raises on failure."""
    ev, targets = _targets(store, args)
    _realise(store, ev, targets, args)
    return targets


def _targets(store: LocalStore, args: argparse.Namespace) -> tuple[Evaluation | None, list[Target]]:
    """The evaluation of ``args.file`` (None for ``.drv`` targets) and the targets, checked
    against the options (``--require-clean``, ``--root``); kept alive with ``--no-root``."""
    from .buildglue import evaluate

    drv = _as_drv(store, args.file)
    if drv is not None:
        ev, targets = None, drv_targets(store, [drv, *(_as_drv(store, a) or a for a in args.attrs)])
    else:
        protect = (args.sign_key,) if getattr(args, "sign_key", None) else ()
        ev, targets = evaluate(store, args.file, args.attrs, use_cache=not args.no_cache, protect=protect)
    if getattr(args, "require_clean", False):
        # before anything is built or found built: a CI gate on it passed on outputs
        # that were valid already
        _require_clean(args.file if ev is not None else None, args.file)
    if getattr(args, "root", None) is not None and len(targets) != 1:
        raise UsageError(f"--root {args.root} names the root of one attribute, not of {len(targets)}")
    if getattr(args, "no_root", False):  # what is valid now must stay so until printed
        store.keep([p for t in targets for p in t.outputs.values()])
    return ev, targets


def _realise(
    store: LocalStore, ev: Evaluation | None, targets: list[Target], args: argparse.Namespace
) -> None:
    """Build or substitute what ``targets`` miss and root their outputs (``_root``). Raises
    ``BuildFailures`` (``-k``: what was realised is rooted first) or, once all is built and
    rooted, ``AttestationsRefused``."""
    from kiln.store.errors import KilnError

    missing = [p for t in targets for p in t.outputs.values() if not store.is_valid(p)]
    if args.check and missing:
        # as Nix: --check compares with an existing output; a first build made by it
        # would also be left unsigned and without provenance (check creates no key)
        raise KilnError(
            f"--check rebuilds and compares with the existing output, but {missing[0]} is not built "
            "yet: build it first (without --check)"
        )
    from kiln.store import hookmarks

    # a valid output whose builder was killed before signing it: the builder runs its hook
    outputs = [p for t in targets for p in t.outputs.values()]
    refused = None
    if args.check or args.rounds > 1 or missing or hookmarks.any_left(store, outputs):
        from kiln.store.build import BuildFailures

        try:
            refused = _build(store, ev, targets, args)
        except BuildFailures as e:  # -k: root what was realised before failing
            done = {r.drv_path for r in e.results}
            _root(store, [t for t in targets if t.drv_path in done], args)
            raise
    _root(store, targets, args)
    from .buildvalid import say_valid_before

    say_valid_before(store, [p for p in outputs if p not in missing], args)
    if refused is not None:  # attestations refused (``buildglue``): the outputs stand, the command fails
        refused.targets = targets
        raise refused


def _require_clean(recipe: str | None, given: str) -> None:
    """``--require-clean``: refuse (``KilnError``) unless the recipe file ``recipe`` is in
    a git repository without uncommitted changes (``given``: what the user named; a
    ``.drv`` target, ``recipe`` None, has no recipe repository)."""
    from kiln.store.errors import KilnError

    from .gitinfo import git_info

    commit, dirty = git_info(os.path.dirname(os.path.abspath(recipe))) if recipe else (None, False)
    if commit is None or dirty:
        why = "is not in a git repository" if commit is None else "has uncommitted changes"
        raise KilnError(f"--require-clean: the recipe repository of {given} {why}")


def _as_drv(store: LocalStore, arg: str) -> str | None:
    """The ``.drv`` store path ``arg`` names (logical, or physical under the store root),
    else None; a store path that is not a derivation is an error (not a recipe file)."""
    from kiln.store.errors import KilnError, StoreError

    if not arg.startswith(store.store_dir + "/"):
        arg = os.path.abspath(arg)  # a physical path may be relative
        if not arg.startswith(str(store.real_store) + "/"):
            return None
    try:
        path, sub = store.resolve(arg)
    except StoreError:
        return None
    if sub or not path.endswith(".drv"):
        raise KilnError(
            f"{arg} is a store path, not a recipe file or a .drv: build a recipe attribute or its .drv "
            "(kiln store info PATH shows its deriver)"
        )
    return path


def build_attrs(store: LocalStore, file: str, attrs: list[str]) -> list[str]:
    """``kiln build FILE ATTR...`` with the default options, printing nothing (for
    ``kiln run -f``): the main output of each attribute, rooted as ``kiln build`` roots
    it."""
    targets = build(store, _parser().parse_args([file, *attrs]))
    return [t.outputs.get("out") or next(iter(t.outputs.values())) for t in targets]


def _build(
    store: LocalStore, ev: Evaluation | None, targets: list[Target], args: argparse.Namespace
) -> AttestationsRefused | None:
    """Write the derivations and realise ``targets``; returns the attestation refusals to
    raise once the outputs are rooted (``buildsubst.make_substituter``), or None."""
    import functools

    from kiln.store.build import Builder, BuildOptions

    from .buildglue import load_sign_key, make_executor, write_drvs
    from .buildprov import ProvenanceHook
    from .buildsubst import make_substituter
    from .gitinfo import git_info

    recipe = args.file if ev is not None else None
    commit, dirty = git_info(os.path.dirname(os.path.abspath(recipe))) if recipe else (None, False)
    roots = [t.drv_path for t in targets]
    if ev is not None:
        write_drvs(store, ev, roots)
    executor = make_executor()
    cores = args.cores or os.cpu_count() or 1
    key: SecretKey | tuple[str, Signer] | None
    if args.signer_cmd:
        from kiln.store.attestations import load_named_signer

        key = load_named_signer(signer_cmd=args.signer_cmd, signer_public=args.signer_key)
    else:
        # --check only compares, so it does not need (or create) a signing key
        key = load_sign_key(store, args.sign_key, create=not args.check)
    hook = None
    if key is not None:
        hook = ProvenanceHook(
            store,
            key,
            os.path.relpath(recipe) if recipe else "",
            {t.drv_path: t.attr for t in targets},
            commit,
            dirty,
            cores,
            executor.isolation(),
        )
    sub = (
        None
        if args.no_substitute
        else make_substituter(args.substituter, args.trusted_key, args.sigs_needed, args.attester_key)
    )
    opts = BuildOptions(
        jobs=args.jobs,
        cores=cores,
        keep_failed=args.keep_failed,
        keep_going=args.keep_going,
        check=args.check,
        vary=args.vary,
        vary_only=args.vary_only,
        rounds=args.rounds,
        timeout=args.timeout,
        max_silent=args.max_silent_time,
        **({"max_log_bytes": args.max_log_size} if args.max_log_size else {}),
        print_logs=args.print_build_logs,
        mirrors=tuple(args.source_mirror),
    )
    builder = Builder(
        store, executor, opts, substituter=functools.partial(sub, store) if sub else None, after_build=hook
    )
    if hook is not None:
        hook.get_drv = builder.get_drv  # reuse the parsed derivation graph
    try:
        builder.realise(roots)
    except Exception:
        if sub is not None and (refused := sub.refusal()) is not None:  # (said too: what fails is the build)
            print(f"error: {refused}", file=sys.stderr)
        raise
    finally:
        if sub is not None:
            sub.close()  # its HTTP sessions and event loop
    return sub.refusal() if sub is not None else None


def drv_targets(store: LocalStore, drv_paths: list[str]) -> list[Target]:
    """Targets for ``.drv`` paths given directly (like ``nix-store -r``)."""
    from kiln.store.drvparse import decode, parse
    from kiln.store.errors import KilnError
    from kiln.store.paths import StorePath

    from .buildglue import Target

    out = []
    # rooted before they are checked and read (Nix's addTempRoot, then isValid): a GC
    # running meanwhile keeps them and, through references, the whole graph below
    store.keep([str(StorePath.parse(p, store.store_dir)) for p in drv_paths])
    for p in drv_paths:
        sp = StorePath.parse(p, store.store_dir)
        if not sp.name.endswith(".drv") or not store.is_valid(p):
            raise KilnError(f"{p} is not a valid derivation in the store")
        d = parse(decode(store.real_path(p).read_bytes(), p), sp.name[:-4], store.store_dir)
        out.append(Target(d.name, p, {k: o.path for k, o in d.outputs}))
    return out


def _root(store: LocalStore, targets: list[Target], args: argparse.Namespace) -> None:
    """The outputs' GC roots (``storeroots.root_outputs``): ``--root NAME``, ``--no-root``."""
    from .storeroots import root_outputs

    root_outputs(store, targets, getattr(args, "root", None), getattr(args, "no_root", False))


def _log(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kiln log", description="print the build log of a derivation or output")
    add_store_arg(p)
    p.add_argument("path", help=".drv path, output path, or GC root name")
    p.add_argument(
        "--check", action="store_true", help="the log of the latest --check or rebuild, not of the build"
    )
    args = p.parse_args(argv)
    import shutil

    from kiln.store.buildlogs import LogStore
    from kiln.store.errors import KilnError
    from kiln.store.localstore import LocalStore

    with LocalStore.open(store_root(args), create=False) as store:
        path = args.path
        if "/" in path:  # a path (logical, physical or ./result): the store path it names
            path = store.resolve(path)[0]
        else:
            from kiln.store.roots import root_at

            # (read as GC reads it: through a moved store too; a root naming a collected
            # .drv still finds its log, which GC keeps)
            root = root_at(store, path)
            if root is None:
                raise KilnError(f"no GC root named {path!r}: give a .drv or output path, or a root name")
            from .storeroots import root_path

            # an output must be valid (its deriver is in its row): root_path's error names the root
            path = (
                root.path if root.path is not None and root.path.endswith(".drv") else root_path(store, path)
            )
        if not path.endswith(".drv"):
            info = store.query(path)
            if info is None:
                raise KilnError(f"{path} is not a valid path in the store at {store.root}")
            if not info.deriver:
                raise KilnError(f"{path} was not built here (it has no deriver), so there is no build log")
            path = info.deriver
        logs = store.root / "logs"
    if args.check:
        from kiln.store.buildproduce import check_log_key

        path = check_log_key(path)
    with LogStore(logs).open(path) as f:
        if not sys.stdout.isatty():
            shutil.copyfileobj(f, sys.stdout.buffer)  # the log's exact bytes, to a file or pipe
            return 0
        # on a terminal the build's escape sequences are shown, not acted on
        from kiln.store.buildlogs import TerminalSafe

        safe = TerminalSafe()
        for piece in iter(lambda: f.read(1 << 16), b""):
            sys.stdout.buffer.write(safe.feed(piece))
        sys.stdout.buffer.write(safe.flush())
    return 0
