"""``kiln sbom``, ``kiln verify`` and the rebuilder commands.

- ``kiln sbom PATH [--format cyclonedx|spdx] [--build] [-o FILE]`` prints a deterministic
  SBOM of PATH's runtime closure (``--build``: build closure). ``--attest`` also signs it
  as an in-toto statement and stores it as PATH's ``sbom`` attestation, with ``--key FILE``
  or ``--signer-cmd CMD --signer-key PUB`` (the command reads the bytes to sign on stdin
  and prints a base64 ed25519 signature; for KMS/HSM keys). A PATH whose runtime closure
  has a hole (a dependency quarantined by ``kiln store verify --repair``) is refused, with
  or without ``--build``: its SBOM would leave the dependency out (``sbom.collect``).
- ``kiln verify TARGET [--policy FILE] [--json] [--closure] [--verbose]`` checks a local
  store path, named by path or by its NAR digest ``sha256:...`` (``--closure``: every
  path of its runtime closure): content against the recorded NAR hash, signatures,
  provenance, SBOM and rebuilder attestations against the policy. One line per check,
  and what the path's provenance records (``verifyshow``). Exit status: 0 every check
  passed; 1 a check failed (rejected); 2 usage error (bad arguments, unreadable or
  invalid policy, no store); 3 no check failed but some could not be run (TARGET not in
  the store, an object, tree or attestation missing or unreadable, a registry that
  refused or that answered 4xx); 75 the same, but only for reasons a later attempt may
  not meet (a registry unreachable, answering 5xx or too slowly). A failure wins: with
  ``--closure``, one failing path makes it 1 whatever could not be checked.
  A registry target, ``URL#PATH`` (PATH: store path, hash part or ``sha256:`` NAR digest)
  or ``--registry URL PATH``, is fetched (narinfo, NAR checked against its digests,
  closure, attestations) into a temporary store and checked the same way
  (``kiln.registry.admission.verify_remote``); no local store is needed.
- ``kiln rebuild PATH [--key FILE | --signer-cmd CMD --signer-key PUB] [--deep] [--json]``
  rebuilds PATH from its derivation in a fresh sandbox, compares NAR hashes and signs a
  SLSA VSA (PASSED "reproduced" / FAILED) stored beside it (``rebuilders``); ``--deep``
  also every derivation below it (``rebuilddeep``). Exit 0 reproduced (every one), 1 not
  reproduced (differing files printed), 2 usage error.
- ``kiln challenge PATH... --registry URL [--registry URL...] [--rebuild] [--json]``
  compares what registries serve with the local build (``challenge``). Exit 0 when no
  two sources disagree, 1 otherwise.
- ``kiln report reproducibility FILE... [--json]`` builds, rebuilds and reports every
  package of recipe files. Exit 0 when all reproduce, 1 otherwise.

PATH arguments are store paths (logical or physical), base names, hash parts, NAR
digests ``sha256:...``, or GC root names (what ``kiln build`` creates per attribute).

Invariants of ``kiln verify``'s report:

- Every path verified locally (the target; with ``--closure``, every member) must have
  its references: ``LocalStore.closure`` skips one that is not valid (quarantined by
  ``kiln store verify --repair``, say), so each gets a ``closure`` check naming its
  dangling references, and the target's names every hole of its closure, however deep
  (``LocalStore.closure_with_holes``); a path or a closure with a hole never passes.
- Every text in the printed report that may come from outside (a path, a registry's
  answer, an attestation's subject names) goes through ``buildlogs.shown_output``, with
  newlines shown as ``\\n`` too: one check is one line, so a hostile finding can neither
  drive the terminal nor print a fake check or result line (``verifyshow``).
- A failure to read or fetch is never reported as a rejection, nor as a pass: it is a
  failed check marked ``unchecked`` (``policy`` module doc), and an error escaping the
  checks becomes one (``_unchecked``), so the exit status and ``--json``'s ``verdict``
  tell "this is bad" (1) from "I could not tell" (3, 75).

Every ``--json`` here prints one object with ``ok`` (the exit status is 0) on stdout,
NAR hashes as ``sha256:<nix32>`` (``jsonout``); ``verify``'s has ``paths``, a report per
path, with or without ``--closure`` (``verifyshow.document``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from kiln.store import attestations, intoto, sbom
from kiln.store.errors import FormatError, KilnError
from kiln.store.hashes import Hash
from kiln.store.paths import StorePath
from kiln.store.policy import TRANSIENT, UNAVAILABLE, Check, Policy, PolicyError, Report, load, verify_path

from .common import add_store_arg, nonempty
from .jsonout import emit
from .targets import EXIT_USAGE, UsageError, open_store, resolve_target, signer_args
from .tokenargs import TOKEN, add_token_args, check_not_token, resolve
from .verifyshow import document, exit_status
from .verifyshow import render as render
from .version import full_version

# ---------------------------------------------------------------------------- sbom


def _stored_sbom(store: Any, path: str) -> object:
    """The predicate of ``path``'s stored SBOM attestation (None: none, or unreadable)."""
    try:
        env = attestations.read(store, path, "sbom")
        return intoto.parse_statement(env.payload).predicate if env is not None else None
    except KilnError:
        return None


def _sbom(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        path = resolve_target(store, args.path)
        if not store.is_valid(path):
            raise KilnError(f"{path} is not valid in the store at {store.root}")
        graph = sbom.collect(store, path, build=args.build)
        doc = sbom.document(graph, args.format, tool_version=full_version())
        text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        if args.attest:
            signer = attestations.load_signer(
                args.key, signer_cmd=args.signer_cmd, signer_public=args.signer_key
            )
            info = store.query(path)
            assert info is not None
            ptype = intoto.CYCLONEDX_TYPE if args.format == "cyclonedx" else intoto.SPDX_TYPE
            st = intoto.statement([intoto.subject(StorePath.parse(path).base, info.nar_hash.hex)], ptype, doc)
            old = _stored_sbom(store, path)
            written = attestations.write(store, path, "sbom", attestations.sign(st, [signer]))
            print(f"stored signed SBOM attestation {written}", file=sys.stderr)
            if old is not None and old != doc:  # (it was replaced without a word)
                print(
                    f"note: it replaced {path}'s SBOM attestation, which described other content (a path "
                    "keeps one: of its runtime closure, or of its build closure with --build, whichever "
                    "was attested last)",
                    file=sys.stderr,
                )
        if args.output:
            from .outfile import write_output

            write_output(args.output, text)
        else:
            sys.stdout.write(text)
    finally:
        store.close()
    return 0


# ---------------------------------------------------------------------------- verify


def _remote_target(args: argparse.Namespace) -> tuple[str, str] | None:
    """``(registry URL, path or digest)`` for a registry target, else None."""
    if args.registry:
        return args.registry, args.target
    # a store path never holds '#' (store names: [A-Za-z0-9+-._?=]): DIR#PATH names a
    # registry directory by a plain path (as every registry option takes one), never the
    # local store's copy of PATH, which would leave the media unread
    if "://" not in args.target and "#" not in args.target:
        return None
    url, sep, what = args.target.partition("#")
    if not sep or not what:
        raise UsageError(
            f"{args.target}: name the path as URL#PATH (or URL#sha256:DIGEST, or --registry URL PATH)"
        )
    return url, what


def _check_digest(what: str) -> None:
    """A ``sha256:`` target must be a digest: a malformed one is a usage error, not a path
    that cannot be found."""
    if what.startswith(("sha256:", "sha256-")):
        try:
            Hash.parse(what)
        except FormatError as e:
            raise UsageError(f"{what!r} is not a NAR digest: {e}") from None


def _check_url(url: str) -> None:
    """A registry URL that is no URL (``http://[::1``, ``HOST:PORT``) or of a scheme no
    client speaks is a usage error, not a registry that could not be asked."""
    from kiln.registry.client import parse_registry_url

    try:
        scheme = parse_registry_url(url).scheme
    except KilnError as e:
        raise UsageError(str(e)) from None
    if scheme not in ("http", "https", "file", ""):
        raise UsageError(
            f"unsupported registry URL scheme {scheme!r} (expected http://, https:// or file:///dir)"
        )


def _unchecked(target: str, policy: Policy, name: str, why: str, how: str = UNAVAILABLE) -> Report:
    """The report of a ``target`` that could not be checked (check ``name``), and ``why``."""
    return Report(target, policy.source, (Check(name, False, why, unchecked=how),))


def _verify(args: argparse.Namespace) -> int:
    try:
        policy = load(args.policy) if args.policy else Policy()
    except PolicyError as e:
        raise UsageError(str(e)) from None
    check_not_token(args.target, "TARGET")  # (the report, on stdout, would show it: not filtered)
    check_not_token(args.registry or "", "--registry")
    remote = _remote_target(args)
    if remote is not None:
        if args.closure:
            raise UsageError(
                "--closure is for local targets: a registry target's closure is always judged "
                "(its 'dependencies' check), in one report"
            )
        _check_digest(remote[1])
        _check_url(remote[0])
        resolve(args, TOKEN)
        reports = [_verify_remote(remote[0], remote[1], policy, args.token)]
    else:
        _check_digest(args.target)
        try:
            store = open_store(args)
        except KilnError as e:  # (there, but unusable: its database damaged)
            return _show([_unchecked(args.target, policy, "valid", str(e))], args)
        try:
            reports = _verify_local(store, args.target, policy, args.closure)
        finally:
            store.close()
    return _show(reports, args)


def _show(reports: list[Report], args: argparse.Namespace) -> int:
    """Print ``reports`` (``verifyshow``); return the exit status."""
    if args.json:  # (JSON escapes every control character itself)
        doc = document(reports, args.closure)
        emit(doc["ok"], doc)
    else:
        print("\n".join(render(reports, args.closure, args.verbose)))
    return exit_status(reports)


def _verify_remote(url: str, what: str, policy: Policy, token: str | None) -> Report:
    """``verify_remote``'s report; an error it raises (a directory that is no registry,
    no room for its temporary store) is a check that could not be run."""
    from kiln.registry.admission import verify_remote
    from kiln.registry.retryable import retryable
    from kiln.store.errors import redact_urls

    try:
        return verify_remote(url, what, policy, token=token)
    except (KilnError, OSError) as e:
        why = redact_urls(f"cannot verify it at {url}: {e}")  # (stdout is not filtered)
        return _unchecked(what, policy, "valid", why, TRANSIENT if retryable(e) else UNAVAILABLE)


def _verify_local(store: Any, target: str, policy: Policy, closure: bool) -> list[Report]:
    """The reports of ``target`` (``closure``: and of its closure) in ``store``. A target
    not in the store, or an error while checking a path (a database or disk that fails
    under the checks), gives a report of a check that could not be run."""
    try:
        path = resolve_target(store, target)
        valid = store.is_valid(path)
        members, holes = store.closure_with_holes([path]) if valid else ([path], {})
    except (KilnError, OSError, sqlite3.DatabaseError) as e:
        return [_unchecked(target, policy, "valid", str(e))]
    # The target first, then (--closure) its dependencies.
    paths = [path, *(p for p in members if p != path)] if closure else [path]
    reports = []
    for p in paths:
        try:
            # every path verified must have its references: a path whose dependency is
            # gone (quarantined) cannot be used, with or without --closure; the target
            # answers for its whole closure (a hole further down too)
            reports.append(_with_closure_check(store, verify_path(store, p, policy), holes, whole=p == path))
        except (KilnError, OSError, sqlite3.DatabaseError) as e:
            reports.append(_unchecked(p, policy, "verify", f"the checks could not run: {e}"))
    return reports


def _with_closure_check(
    store: Any, report: Report, holes: dict[str, tuple[str, ...]], whole: bool = False
) -> Report:
    """``report`` plus a ``closure`` check: every path its closure references is valid.
    ``holes`` are those of the target's closure (``LocalStore.closure_with_holes``, which
    ``LocalStore.closure`` leaves out silently): the target (``whole``) fails for every
    one, another member for those it references itself."""
    info = store.query(report.path)
    if info is None:  # (its ``valid`` check failed already)
        return report
    refs = [r for r in info.references if r != report.path]
    gone = [h for h, by in holes.items() if whole or report.path in by]
    check = (
        Check(
            "closure",
            False,
            f"references {len(gone)} path(s) not valid in the store (quarantined by 'kiln store verify "
            "--repair', or deleted), so the closure is incomplete: "
            + ", ".join(h if report.path in holes[h] else f"{h} (via {', '.join(holes[h])})" for h in gone),
        )
        if gone
        else Check(
            "closure",
            True,
            (
                f"its {len(refs)} reference(s) are valid in the store"
                if refs
                else "it references no other path"
            )
            + (", and so is the rest of its closure" if whole and refs else ""),
        )
    )
    return replace(report, checks=(*report.checks, check))


# ---------------------------------------------------------------------------- dispatch


def _sbom_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiln sbom", description="print an SBOM for a store path")
    p.add_argument("path", metavar="PATH", help="store path (logical, physical, base name or hash part)")
    p.add_argument("--format", choices=("cyclonedx", "spdx"), default="cyclonedx")
    p.add_argument("--build", action="store_true", help="the build closure (from the derivation) instead")
    p.add_argument("-o", "--output", type=nonempty, metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument(
        "--attest", action="store_true", help="also sign it and store it as the path's attestation"
    )
    signer_args(p, "--attest")
    p.set_defaults(fn=_sbom)
    return p


def _verify_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kiln verify",
        description="verify a store path against a policy",
        epilog="exit status: 0 all checks passed; 1 a check failed (rejected); 2 usage error (bad "
        "arguments, policy file missing or invalid, no store); 3 could not check (TARGET not in the store "
        "or registry, an object or file unreadable, a registry refusing); 75 could not check for now "
        "(registry unreachable or answering 5xx: try again later). A failed check wins over one that "
        "could not run. --json gives it as 'verdict' (passed, rejected, unchecked, tempfail) and "
        "'exit_status'",
    )
    p.add_argument(
        "target",
        metavar="TARGET",
        help="store path (logical, physical, base name, hash part, sha256: digest) or URL#PATH of a registry",
    )
    p.add_argument("--registry", metavar="URL", help="verify TARGET as this registry serves it")
    add_token_args(p, TOKEN, "bearer token of a private registry")
    p.add_argument("--policy", metavar="FILE", help="TOML policy (default: check content only)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--closure", action="store_true", help="verify every path of the runtime closure")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="show every fact the provenance records, one a line"
    )
    p.set_defaults(fn=_verify)
    return p


def _rebuilder_parser(name: str) -> argparse.ArgumentParser:
    from . import cmd_rebuild  # imports the build loop; verify and sbom do not need it

    return cmd_rebuild.PARSERS[name]()


_PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "sbom": _sbom_parser,
    "verify": _verify_parser,
    **{name: functools.partial(_rebuilder_parser, name) for name in ("rebuild", "challenge", "report")},
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
        if cmd in ("rebuild", "challenge", "report"):  # they build: SIGTERM unwinds (common.py)
            from .common import terminate_as_interrupt

            with terminate_as_interrupt():
                return args.fn(args)
        return args.fn(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
