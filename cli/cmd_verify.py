"""``kiln sbom`` and ``kiln verify`` (and the not-yet-available rebuilder commands).

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
- ``kiln rebuild|challenge|report`` are not implemented yet: they say so and exit 2.
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


def _resolve(store: LocalStore, arg: str) -> str:
    """A store path from a logical or physical path, a base name, a hash part, or the
    NAR digest of its content (``sha256:...``)."""
    if arg.startswith(("sha256:", "sha256-")):
        return _by_digest(store, arg)
    try:
        path, sub = store.resolve(arg)
    except (KilnError, ValueError):
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
        path = _resolve(store, args.path)
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


def _verify(args: argparse.Namespace) -> int:
    if "://" in args.target:
        raise _Usage(f"{args.target}: verifying a registry URL is not supported yet; fetch the path first")
    try:
        policy = load(args.policy) if args.policy else Policy()
    except PolicyError as e:
        raise _Usage(str(e)) from None
    store = _open_store(args)
    try:
        path = _resolve(store, args.target)
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


# ---------------------------------------------------------------------------- dispatch


def _not_yet(name: str) -> int:
    print(f"kiln {name}: not available yet", file=sys.stderr)
    return EXIT_USAGE


def _parser(cmd: str) -> argparse.ArgumentParser:
    if cmd == "sbom":
        p = argparse.ArgumentParser(prog="kiln sbom", description="print an SBOM for a store path")
        p.add_argument("path", metavar="PATH", help="store path (logical, physical, base name or hash part)")
        p.add_argument("--format", choices=("cyclonedx", "spdx"), default="cyclonedx")
        p.add_argument("--build", action="store_true", help="the build closure (from the derivation) instead")
        p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
        p.add_argument(
            "--attest", action="store_true", help="also sign it and store it as the path's attestation"
        )
        p.add_argument("--key", metavar="FILE", help="secret key file for --attest (mode 0600)")
        p.add_argument(
            "--signer-cmd",
            metavar="CMD",
            help="external signer for --attest (stdin: data; stdout: base64 sig)",
        )
        p.add_argument(
            "--signer-key", metavar="PUB", help="public key of --signer-cmd (name:base64 or a .pub file)"
        )
        p.set_defaults(fn=_sbom)
    else:
        p = argparse.ArgumentParser(
            prog="kiln verify",
            description="verify a store path against a policy",
            epilog="exit status: 0 all checks passed, 1 a check failed, 2 usage error",
        )
        p.add_argument(
            "target", metavar="TARGET", help="store path (logical, physical, base name or hash part)"
        )
        p.add_argument("--policy", metavar="FILE", help="TOML policy (default: check content only)")
        p.add_argument("--json", action="store_true", help="machine-readable report")
        p.add_argument("--closure", action="store_true", help="verify every path of the runtime closure")
        p.set_defaults(fn=_verify)
    add_store_arg(p)
    return p


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "verify"
    if cmd in ("rebuild", "challenge", "report"):
        return _not_yet(cmd)
    args = _parser(cmd).parse_args(argv[1:] if argv and argv[0] in ("sbom", "verify") else argv)
    try:
        return args.fn(args)
    except _Usage as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
