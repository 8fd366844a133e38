"""``kiln sbom``, ``kiln verify`` and the rebuilder commands.

- ``kiln sbom PATH [--format cyclonedx|spdx] [--build] [-o FILE]`` prints a deterministic
  SBOM of PATH's runtime closure (``--build``: build closure). ``--attest`` also signs it
  as an in-toto statement and stores it as PATH's ``sbom`` attestation, with ``--key FILE``
  or ``--signer-cmd CMD --signer-key PUB`` (the command reads the bytes to sign on stdin
  and prints a base64 ed25519 signature; for KMS/HSM keys).
- ``kiln verify TARGET [--policy FILE] [--json] [--closure]`` checks a local store path,
  named by path or by its NAR digest ``sha256:...`` (``--closure``: every path of its runtime closure): content against the recorded NAR
  hash, signatures, provenance, SBOM and rebuilder attestations against the policy. One
  line per check. Exit status: 0 every check passed, 1 a check
  failed, 2 usage error (bad arguments, unreadable or invalid policy, no store).
  A registry target, ``URL#PATH`` (PATH: store path, hash part or ``sha256:`` NAR digest)
  or ``--registry URL PATH``, is fetched (narinfo, NAR checked against its digests,
  closure, attestations) into a temporary store and checked the same way
  (``kiln.registry.admission.verify_remote``); no local store is needed.
- ``kiln rebuild PATH [--key FILE | --signer-cmd CMD --signer-key PUB] [--json]`` rebuilds
  PATH from its derivation in a fresh sandbox, compares NAR hashes and signs a SLSA VSA
  (PASSED "reproduced" / FAILED) stored beside it (``rebuilders``). Exit 0 reproduced,
  1 not reproduced (differing files printed), 2 usage error.
- ``kiln challenge PATH... --registry URL [--registry URL...] [--rebuild] [--json]``
  compares what registries serve with the local build (``challenge``). Exit 0 when no
  two sources disagree, 1 otherwise.
- ``kiln report reproducibility FILE... [--json]`` builds, rebuilds and reports every
  package of recipe files. Exit 0 when all reproduce, 1 otherwise.

PATH arguments are store paths (logical or physical), base names, hash parts, NAR
digests ``sha256:...``, or GC root names (what ``kiln build`` creates per attribute).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kiln.store import attestations, intoto, sbom
from kiln.store.errors import FormatError, KilnError, StoreError
from kiln.store.hashes import Hash
from kiln.store.localstore import LocalStore
from kiln.store.paths import StorePath
from kiln.store.policy import Policy, PolicyError, load, verify_path

from . import __version__
from .common import add_store_arg, store_root

EXIT_USAGE = 2


def _open_store(args: argparse.Namespace) -> LocalStore:
    try:
        return LocalStore.open(store_root(args), create=False)
    except StoreError as e:
        raise _Usage(str(e)) from None


class _Usage(Exception):
    """A usage error: printed, exit status 2."""


def _by_digest(store: LocalStore, arg: str) -> str:
    """The valid path whose NAR hash is ``arg`` (``sha256:<hex|nix32>`` or SRI)."""
    try:
        want = Hash.parse(arg)
    except FormatError as e:
        raise KilnError(f"{arg!r} is not a NAR digest: {e}") from None
    found = [p for p in store.all_paths() if (i := store.query(p)) is not None and i.nar_hash == want]
    if not found:
        raise KilnError(f"no path in the store at {store.root} has NAR hash {want.to_hex()}")
    if len(found) > 1:
        raise KilnError(f"{len(found)} paths have NAR hash {want.to_hex()}: {', '.join(found)}; name one")
    return found[0]


def resolve_target(store: LocalStore, arg: str) -> str:
    """A store path from a logical or physical path, a base name, a hash part, the NAR
    digest of its content (``sha256:...``), or a GC root name."""
    if arg.startswith(("sha256:", "sha256-")):
        return _by_digest(store, arg)
    try:
        path, sub = store.resolve(arg)
    except (KilnError, ValueError):
        root = store.root / "gcroots" / arg
        if "/" not in arg and root.is_symlink():
            path, _ = store.resolve(os.readlink(root))
            return path
        base = arg.rstrip("/").rsplit("/", 1)[-1]
        info = store.query_by_hash_part(base[:32]) if len(base) >= 32 else None
        if info is None or (len(base) > 32 and StorePath.parse(info.path).base != base):
            raise KilnError(f"{arg!r} is not a path in the store at {store.root}") from None
        return info.path
    if sub:
        raise KilnError(f"{arg!r} is inside {path}; give the store path itself")
    return path


# ---------------------------------------------------------------------------- sbom


def _sbom(args: argparse.Namespace) -> int:
    store = _open_store(args)
    try:
        path = resolve_target(store, args.path)
        if not store.is_valid(path):
            raise KilnError(f"{path} is not valid in the store at {store.root}")
        graph = sbom.collect(store, path, build=args.build)
        doc = sbom.document(graph, args.format, tool_version=__version__)
        text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        if args.attest:
            signer = attestations.load_signer(
                args.key, signer_cmd=args.signer_cmd, signer_public=args.signer_key
            )
            info = store.query(path)
            assert info is not None
            ptype = intoto.CYCLONEDX_TYPE if args.format == "cyclonedx" else intoto.SPDX_TYPE
            st = intoto.statement([intoto.subject(StorePath.parse(path).base, info.nar_hash.hex)], ptype, doc)
            written = attestations.write(store, path, "sbom", attestations.sign(st, [signer]))
            print(f"stored signed SBOM attestation {written}", file=sys.stderr)
        if args.output:
            _write_atomic(Path(args.output), text)
        else:
            sys.stdout.write(text)
    finally:
        store.close()
    return 0


def _write_atomic(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------------------- verify


def _remote_target(args: argparse.Namespace) -> tuple[str, str] | None:
    """``(registry URL, path or digest)`` for a registry target, else None."""
    if args.registry:
        return args.registry, args.target
    if "://" not in args.target:
        return None
    url, sep, what = args.target.partition("#")
    if not sep or not what:
        raise _Usage(
            f"{args.target}: name the path as URL#PATH (or URL#sha256:DIGEST, or --registry URL PATH)"
        )
    return url, what


def _verify(args: argparse.Namespace) -> int:
    try:
        policy = load(args.policy) if args.policy else Policy()
    except PolicyError as e:
        raise _Usage(str(e)) from None
    remote = _remote_target(args)
    if remote is not None:
        if args.closure:
            raise _Usage("--closure is not supported for registry targets")
        from kiln.registry.admission import verify_remote

        reports = [verify_remote(remote[0], remote[1], policy, token=args.token)]
    else:
        store = _open_store(args)
        try:
            path = resolve_target(store, args.target)
            paths = store.closure([path]) if args.closure and store.is_valid(path) else [path]
            # The target first, then its dependencies.
            paths = [path, *(p for p in paths if p != path)]
            reports = [verify_path(store, p, policy) for p in paths]
        finally:
            store.close()
    ok = all(r.ok for r in reports)
    if args.json:
        doc = (
            reports[0].to_dict() if not args.closure else {"ok": ok, "paths": [r.to_dict() for r in reports]}
        )
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0 if ok else 1
    for report in reports:
        print(f"verifying {report.path} against {report.policy}")
        for line in report.lines():
            print(f"  {line}")
    if args.closure:
        bad = sum(not r.ok for r in reports)
        print(
            f"result: PASS ({len(reports)} paths)"
            if ok
            else f"result: FAIL ({bad} of {len(reports)} paths failed)"
        )
    else:
        n = len(reports[0].failures())
        print("result: PASS" if ok else f"result: FAIL ({n} check{'s' if n != 1 else ''} failed)")
    return 0 if ok else 1


# ---------------------------------------------------------------------------- rebuilders


def _signer_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--key", metavar="FILE", help=f"secret key that signs {what} (mode 0600)")
    p.add_argument(
        "--signer-cmd", metavar="CMD", help="external signer (stdin: data; stdout: base64 ed25519 signature)"
    )
    p.add_argument(
        "--signer-key", metavar="PUB", help="public key of --signer-cmd (name:base64 or a .pub file)"
    )


def _rebuild(args: argparse.Namespace) -> int:
    from kiln.store.dsse import keyid

    from . import rebuilders

    store = _open_store(args)
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
        verdicts = rebuilders.rebuild_path(store, builder, path, signer, vary=args.vary)
    finally:
        store.close()
    ok = all(v.identical for v in verdicts)
    if args.json:
        print(json.dumps({"ok": ok, "outputs": [v.to_dict() for v in verdicts]}, indent=2, sort_keys=True))
    else:
        print("\n".join(rebuilders.render_verdicts(verdicts)))
    return 0 if ok else 1


def _challenge(args: argparse.Namespace) -> int:
    from . import challenge

    store = _open_store(args)
    try:
        locals_ = challenge.local_hashes(
            store, args.paths, rebuild=args.rebuild, mirrors=tuple(args.source_mirror), resolve=resolve_target
        )
        results = challenge.challenge(store.store_dir, locals_, args.registry)
    finally:
        store.close()
    bad = any(r.verdict == "inconsistent" for r in results)
    if args.json:
        doc = {"ok": not bad, "summary": challenge.summary(results), "paths": [r.to_dict() for r in results]}
        print(json.dumps(doc, indent=2, sort_keys=True))
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
            vary=args.vary,
        )
    finally:
        store.close()
    ok = all(r.reproduced for r in results)
    if args.json:
        doc = {"ok": ok, "summary": rebuilders.summary(results), "packages": [r.to_dict() for r in results]}
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0 if ok else 1
    print("\n".join(rebuilders.render_report(results)))
    return 0 if ok else 1


# ---------------------------------------------------------------------------- dispatch


def _sbom_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiln sbom", description="print an SBOM for a store path")
    p.add_argument("path", metavar="PATH", help="store path (logical, physical, base name or hash part)")
    p.add_argument("--format", choices=("cyclonedx", "spdx"), default="cyclonedx")
    p.add_argument("--build", action="store_true", help="the build closure (from the derivation) instead")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument(
        "--attest", action="store_true", help="also sign it and store it as the path's attestation"
    )
    _signer_args(p, "--attest")
    p.set_defaults(fn=_sbom)
    return p


def _verify_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kiln verify",
        description="verify a store path against a policy",
        epilog="exit status: 0 all checks passed, 1 a check failed, 2 usage error",
    )
    p.add_argument(
        "target",
        metavar="TARGET",
        help="store path (logical, physical, base name, hash part, sha256: digest) or URL#PATH of a registry",
    )
    p.add_argument("--registry", metavar="URL", help="verify TARGET as this registry serves it")
    p.add_argument(
        "--token", default=os.environ.get("KILN_REGISTRY_TOKEN"), help="bearer token (private registry)"
    )
    p.add_argument("--policy", metavar="FILE", help="TOML policy (default: check content only)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--closure", action="store_true", help="verify every path of the runtime closure")
    p.set_defaults(fn=_verify)
    return p


def _build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--vary",
        action="store_true",
        help="rebuild under varied host conditions (dirs, KILN_CORES, umask, directory order)",
    )
    p.add_argument("--cores", type=int, default=0, help="KILN_CORES for the builds (default: all cores)")
    p.add_argument(
        "--source-mirror", action="append", default=[], metavar="DIR|URL", help="hashed source mirror"
    )


def _rebuild_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kiln rebuild",
        description="rebuild a path from its derivation in a fresh sandbox and attest whether it reproduced",
        epilog="exit status: 0 reproduced, 1 not reproduced (or an error), 2 usage error",
    )
    p.add_argument("path", metavar="PATH", help="store path, base name, hash part or GC root name")
    _signer_args(p, "the verification summary (default: the store's build key)")
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
    p.add_argument(
        "--source-mirror", action="append", default=[], metavar="DIR|URL", help="hashed source mirror"
    )
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
    _signer_args(p, "a verification summary per output (default: none signed)")
    _build_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(fn=_report)
    return p


_PARSERS = {
    "sbom": _sbom_parser,
    "verify": _verify_parser,
    "rebuild": _rebuild_parser,
    "challenge": _challenge_parser,
    "report": _report_parser,
}


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv and argv[0] in _PARSERS else "verify"
    rest = argv[1:] if argv and argv[0] in _PARSERS else argv
    if cmd == "report":
        if not rest or rest[0] in ("-h", "--help"):
            print(
                "usage: kiln report REPORT ...\nreports:\n  reproducibility FILE...  build, rebuild and "
                "report every package of recipe files\n(kiln report reproducibility --help for its options)",
                file=sys.stdout if rest else sys.stderr,
            )
            return 0 if rest else EXIT_USAGE
        if rest[0] != "reproducibility":
            print(f"kiln report: unknown report {rest[0]!r} (available: reproducibility)", file=sys.stderr)
            return EXIT_USAGE
        rest = rest[1:]
    p = _PARSERS[cmd]()
    add_store_arg(p)
    args = p.parse_args(rest)
    if getattr(args, "signer_cmd", None) and getattr(args, "key", None):
        p.error("give either --key or --signer-cmd, not both")
    try:
        return args.fn(args)
    except _Usage as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
