"""``kiln build``'s options (``build_parser``), apart from the command (``cmd_build``).

Defaults are what ``cmd_build.build_attrs`` (``kiln run -f``) builds with: it parses an
argument list with no options. ``--trusted-key`` admits substituted paths and their
attestations; ``--attester-key`` admits attestations only (``registry.attest_fetch``).
"""

from __future__ import annotations

import argparse

from .common import add_store_arg, nonempty, seconds, whole_number


def build_parser() -> argparse.ArgumentParser:
    """``kiln build``'s argument parser (the module docstring of ``cmd_build`` says what
    the options do)."""
    p = argparse.ArgumentParser(prog="kiln build", description="build packages from a recipe file")
    add_store_arg(p)
    p.add_argument("file", help="recipe file, or a .drv store path (then ATTRs are more .drv paths)")
    p.add_argument(
        "attrs",
        nargs="*",
        type=nonempty,
        help="packages to build, e.g. hello or 'zlib(static = true)' (default: all)",
    )
    p.add_argument(
        "-j", "--jobs", type=whole_number(1), default=1, help="derivations built in parallel (default 1)"
    )
    p.add_argument(
        "--cores", type=whole_number(0), default=0, help="KILN_CORES for each build (default: all cores)"
    )
    p.add_argument("-L", "--print-build-logs", action="store_true", help="stream build logs to stderr")
    p.add_argument(
        "-K", "--keep-failed", action="store_true", help="keep the build directory of a failed build"
    )
    p.add_argument(
        "-k",
        "--keep-going",
        action="store_true",
        help="after a failure, go on building what does not depend on it",
    )
    p.add_argument("--check", action="store_true", help="rebuild and compare with the existing output")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="say what would be built and what fetched from substituters; write, build, fetch and root nothing",
    )
    p.add_argument(
        "--vary",
        action="store_true",
        help="with --check: rebuild under varied conditions (dirs, cores, cpus, umask, order, clock)",
    )
    add_vary_only(p)
    p.add_argument(
        "--rounds", type=whole_number(1), default=1, help="build N times and compare (N >= 2 checks)"
    )
    p.add_argument("--timeout", type=seconds, default=None, help="wall-clock limit per build, seconds")
    p.add_argument("--max-silent-time", type=seconds, default=None, help="limit on seconds without output")
    p.add_argument(
        "--max-log-size",
        type=whole_number(1),
        default=None,
        metavar="BYTES",
        help="stop a build whose log reaches this size (default 64 MiB)",
    )
    p.add_argument("--substituter", action="append", default=[], metavar="URL", help="registry to fetch from")
    p.add_argument(
        "--no-substitute",
        action="store_true",
        help="fetch nothing from registries (neither --substituter nor KILN_SUBSTITUTERS)",
    )
    p.add_argument(
        "--trusted-key", action="append", default=[], metavar="KEY", help="trusted public key or file"
    )
    p.add_argument(
        "--attester-key",
        action="append",
        default=[],
        metavar="KEY",
        help="public key (or file) whose DSSE signatures also admit the attestations of substituted paths "
        "(provenance, SBOMs, VSAs), never the paths (repeatable; as kiln copy --attester-key)",
    )
    p.add_argument(
        "--sigs-needed",
        type=whole_number(0),
        default=None,
        help="distinct trusted signatures required (default 1)",
    )
    p.add_argument("--sign-key", metavar="FILE", help="secret key that signs outputs and provenance")
    p.add_argument(
        "--signer-cmd", metavar="CMD", help="external signer (KMS/HSM): bytes on stdin, base64 sig out"
    )
    p.add_argument(
        "--signer-key", metavar="PUB", help="public key (name:base64 or .pub file) of --signer-cmd"
    )
    p.add_argument(
        "--require-clean", action="store_true", help="refuse to build from a dirty recipe repository"
    )
    p.add_argument(
        "--source-mirror", action="append", default=[], metavar="DIR|URL", help="hashed source mirror"
    )
    p.add_argument("--no-cache", action="store_true", help="do not use the evaluation cache")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout instead of the output paths: ok, and targets, each "
        "target's attribute, drvPath, outputs and whether it was realised (-k: the failed ones too)",
    )
    roots = p.add_mutually_exclusive_group()
    roots.add_argument(
        "--root",
        metavar="NAME",
        default=None,
        help="name the GC root NAME (one attribute; default: the attribute's name, shared by every "
        "recipe using the store)",
    )
    roots.add_argument(
        "--no-root", action="store_true", help="make no GC root (the next GC may delete the outputs)"
    )
    return p


def add_vary_only(p: argparse.ArgumentParser) -> None:
    """``--vary-only NAMES``: ``--vary`` changing only the named conditions (``kiln build
    --check``, ``kiln rebuild``, ``kiln report``)."""

    def names(text: str) -> frozenset[str]:
        from kiln.store.vary import parse_names

        try:
            return parse_names(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    p.add_argument(
        "--vary-only",
        type=names,
        default=None,
        metavar="NAMES",
        help="--vary changing only these (comma-separated: dirs, cores, cpus, umask, order, clock)",
    )
