"""``kiln serve`` and ``kiln registry ...`` (init, tokens, index publishing and root
rotation, verify: in ``registry_admin``): running a registry and administering its
directory.

cli/main.py routes both command names here with ``argv[0]`` = the name; the work is in
kiln.registry (see docs/registry.md). ``kiln serve`` admits uploads by its own flags only
(``--trusted-key``, and its ``--index-key``): ``$KILN_TRUSTED_KEYS``, set for builders and
copiers, must not widen what a server accepts. ``--policy FILE`` is loaded at start-up (a
policy that does not load stops the server before it listens) and then re-read by the
workers for every ``POST /verify`` (``registry/policywatch.py``), so ``kiln key revoke
--policy FILE`` takes effect without a restart. Signals (``registry/workers.py``):
SIGTERM/SIGINT stop the server (exit 0), SIGHUP reopens the access log and serving goes
on (unlike other commands, which SIGHUP ends as ``cli/interrupts.py`` says).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.registry.indexbuild import MAX_TIMESTAMP_HOURS, MIN_TIMESTAMP_HOURS, TIMESTAMP_HOURS
from kiln.store.errors import KilnError
from kiln.store.keyfiles import load_secret_key

from .common import load_trusted_key, nonempty_path, trusted_keys, whole_number
from .registry_admin import cmd_registry

if TYPE_CHECKING:
    from aiohttp import web

    from kiln.store.policy import Policy


def _policy(path: Path | None) -> Policy | None:
    if path is None:
        return None
    from kiln.store.policy import load

    return load(path)


#: a bound on --workers: each is a process with its own database connection (100,000
#: forked until the machine gave out)
MAX_WORKERS = 256


def refresh_bounds(timestamp_hours: float) -> tuple[float, float]:
    """``(default, most)`` of ``--index-refresh`` for timestamps valid ``timestamp_hours``:
    every 6 hours or a quarter of the lifetime if that is shorter; at most the lifetime
    less an hour, or less a quarter of it if that is shorter (the refresh loop wakes up
    to 10 minutes late, and a late re-sign must still come before expiry). For the
    default 24 h: 6 and 23."""
    return min(6.0, timestamp_hours / 4), timestamp_hours - min(1.0, timestamp_hours / 4)


def _refresh_hours(text: str | None, timestamp_hours: float) -> float:
    """``--index-refresh`` as hours, or ``ValueError`` saying the bounds (``refresh_bounds``)."""
    default, most = refresh_bounds(timestamp_hours)
    if text is None:
        return default
    try:
        h = float(text)
    except ValueError:
        h = -1.0
    if not 0 <= h <= most:
        raise ValueError(f"expected hours from 0 to {most:g}, found {text!r}")
    return h


def _seconds(text: str) -> float:
    """An argparse type: a timeout in seconds, more than 0 and at most a day."""
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 < v <= 86400:
        raise argparse.ArgumentTypeError(f"expected seconds from 0 (excluded) to 86400, found {text!r}")
    return v


def _raise_nofile() -> None:
    """Raise the soft limit on open files to the hard limit: every connection is a
    descriptor, and at the common soft limit (1024, or 256) a few hundred idle sockets
    would make every further ``accept`` fail. The hard limit is the administrator's."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # (the kernel refuses an infinite soft limit; nr_open is 1 Mi by default)
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass  # not fatal: serving with the lower limit


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise KilnError(f"--listen expects HOST:PORT with a port from 0 to 65535, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _parser() -> argparse.ArgumentParser:
    """``kiln serve``'s arguments (each option's help says its contract)."""
    p = argparse.ArgumentParser(
        prog="kiln serve", description="serve a kiln store or a registry directory over HTTP"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", type=Path, metavar="DIR", help="serve this local kiln store (read-only)")
    source.add_argument(
        "--dir",
        type=nonempty_path,
        metavar="DIR",
        help="serve (and accept pushes into) this registry directory",
    )
    p.add_argument("--listen", default="127.0.0.1:5000", metavar="HOST:PORT")
    p.add_argument("--store-dir", default=None, help="logical store dir for a new registry directory")
    p.add_argument("--sign-key", type=Path, help="(--store) sign narinfos on the fly with this secret key")
    p.add_argument(
        "--trusted-key",
        action="append",
        metavar="KEY",
        help="public key whose signatures admit pushed narinfos",
    )
    p.add_argument(
        "--index-key",
        type=Path,
        help="secret key that signs the registry index (republished after pushes); its public key "
        "also admits pushed narinfos",
    )
    p.add_argument(
        "--timestamp-hours",
        type=whole_number(MIN_TIMESTAMP_HOURS, MAX_TIMESTAMP_HOURS),
        default=None,
        metavar="N",
        help=f"with --index-key: every index timestamp it signs is valid N hours (default "
        f"{TIMESTAMP_HOURS}, at most {MAX_TIMESTAMP_HOURS}; as kiln registry publish-index "
        "--timestamp-hours); one valid longer is re-signed at the next refresh",
    )
    p.add_argument(
        "--index-refresh",
        default=None,
        metavar="HOURS",
        help="with --index-key: re-sign the index timestamp this often, so a registry without pushes "
        "does not look frozen to mirrors (default 6, or a quarter of --timestamp-hours if that is "
        "less; at most --timestamp-hours less an hour, or less a quarter of it if that is less: 23 "
        "for 24; 0: only after pushes)",
    )
    p.add_argument(
        "--workers",
        type=whole_number(1, MAX_WORKERS),
        default=1,
        help=f"processes sharing the socket (default 1, at most {MAX_WORKERS}); with more than one, a "
        "worker that dies is logged and restarted, and a worker dying 6 times within 60 s stops the "
        "server (exit 1)",
    )
    p.add_argument(
        "--max-body-size", type=whole_number(1), default=8 << 30, help="largest accepted upload in bytes"
    )
    p.add_argument(
        "--max-nar-size",
        type=whole_number(1),
        default=64 << 30,
        help="largest NAR an uploaded object may decompress to, in bytes (default 64 GiB)",
    )
    p.add_argument(
        "--negative-ttl",
        type=whole_number(0),
        default=10,
        help="seconds clients may cache a miss (default 10)",
    )
    p.add_argument("--private", action="store_true", help="require a token with the read scope for reads")
    p.add_argument(
        "--attester-key",
        action="append",
        metavar="KEY",
        help="public key whose DSSE signatures also admit pushed attestations (a rebuilder's VSAs; "
        "it never replaces a provenance or SBOM that another key signed)",
    )
    p.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="TOML policy that POST /verify applies to a path and its closure (re-read for every "
        "review: a revocation applies at once)",
    )
    p.add_argument(
        "--keepalive-timeout",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="close a connection idle this long between requests (default 60)",
    )
    p.add_argument(
        "--header-timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="answer 408 and close when a request head is not complete this long after its first "
        "byte (default 30)",
    )
    p.add_argument(
        "--write-timeout",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="drop a client that reads nothing of an answer for this long (default 60)",
    )
    p.add_argument(
        "--body-timeout",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="answer 408 when a request body brings no byte for this long (default 60)",
    )
    p.add_argument(
        "--max-blob-batches",
        type=whole_number(1, 100_000),
        default=64,
        help="POST /blob-batch answers sent at once per worker; more get 503 (default 64)",
    )
    p.add_argument(
        "--max-narinfo-batches",
        type=whole_number(1, 1024),
        default=8,
        help="POST /narinfo-batch answers made or sent at once per worker; more get 503 (default 8)",
    )
    p.add_argument(
        "--max-reviews",
        type=whole_number(1, 1024),
        default=4,
        help="POST /verify reviews at once per worker, each on its own thread; more get 503 (default 4)",
    )
    p.add_argument(
        "--access-log",
        metavar="FILE",
        help="append one line per request to FILE ('-': standard output): time, client, method, "
        "path, status, bytes, token id; SIGHUP reopens FILE (log rotation)",
    )
    p.add_argument("--no-fsync", action="store_true", help="do not fsync uploads (benchmarks, tmpfs)")
    p.add_argument(
        "--no-fast-path",
        action="store_true",
        help="send narinfo GETs through aiohttp too (for comparison; see docs/registry.md)",
    )
    return p


def cmd_serve(argv: list[str]) -> int:
    """Serve a store (read-only) or a registry directory until a signal: configuration
    errors (keys, policy, access log, the listening socket) are reported before any
    worker is forked."""
    p = _parser()
    args = p.parse_args(argv)
    if args.private and args.store:
        p.error("--private needs --dir (tokens are kept in the registry directory)")
    if args.sign_key and args.dir:
        p.error("--sign-key signs the narinfos of a --store; a --dir registry serves narinfos as pushed")
    if args.timestamp_hours is not None and (args.index_key is None or args.dir is None):
        p.error("--timestamp-hours is the lifetime of the timestamps --index-key signs for a --dir registry")
    timestamp_hours = TIMESTAMP_HOURS if args.timestamp_hours is None else args.timestamp_hours
    try:
        index_refresh = _refresh_hours(args.index_refresh, timestamp_hours)
    except ValueError as e:
        p.error(f"argument --index-refresh: {e}")
    host, port = _listen(args.listen)  # (before a --dir registry is made)
    from kiln.registry import server, workers
    from kiln.registry.guard import Timeouts

    _raise_nofile()
    if args.access_log and args.access_log != "-":
        try:
            open(args.access_log, "a").close()  # noqa: SIM115 - a writability check, before forking
        except OSError as e:
            raise KilnError(f"cannot write the access log {args.access_log}: {e.strerror or e}") from None

    index_key = load_secret_key(args.index_key) if args.index_key else None
    cfg = server.ServerConfig(
        negative_ttl=args.negative_ttl,
        max_body=args.max_body_size,
        max_nar=args.max_nar_size,
        private=args.private,
        # its own --index-key signs what it admits: a push signed by it is trusted too
        trusted=trusted_keys(args.trusted_key, env=False) + ([index_key.public()] if index_key else []),
        index_key=index_key,
        attesters=[load_trusted_key(k) for k in args.attester_key or []],
        # loaded now so a bad policy stops the start; the workers re-read the file for
        # every review, so a revocation written to it applies without a restart
        policy=_policy(args.policy),
        policy_file=args.policy,
        fast_path=not args.no_fast_path,
        index_refresh=index_refresh * 3600,
        timestamp_hours=timestamp_hours,
        timeouts=Timeouts(
            keepalive=args.keepalive_timeout,
            head=args.header_timeout,
            write=args.write_timeout,
            body=args.body_timeout,
        ),
        max_blob_batches=args.max_blob_batches,
        max_reviews=args.max_reviews,
        max_narinfo_batches=args.max_narinfo_batches,
        access_log=args.access_log,
    )
    sign_key = load_secret_key(args.sign_key) if args.sign_key else None
    # (bound before a --dir registry is made: a port in use leaves nothing behind)
    try:
        sock = workers.bind(host, port)
    except OSError as e:
        raise KilnError(f"cannot listen on {args.listen}: {e.strerror or e}") from None
    # Open once in the parent so configuration errors are reported before forking.
    src = server.open_source(
        store=args.store, directory=args.dir, sign_key=sign_key, store_dir=args.store_dir
    )
    from kiln.registry.backends import DirSource

    if index_key is not None and isinstance(src, DirSource):
        from kiln.registry.publish import index_key_problem

        # (it started, served, and refused every push's publish only then, 400 to the
        # pusher, the paths published but unlisted: after a rotate-root, say)
        problem = index_key_problem(src.storage, index_key)
        if problem is not None:
            raise KilnError(
                f"--index-key: {problem}: it cannot sign this registry's index (after kiln registry "
                "rotate-root, start the server with the new key)"
            )
    from kiln.registry.foreigncache import unserved_note

    note = unserved_note(src)  # (a cache Nix wrote with xz: said once, not per request)
    if note is not None:
        print(note, file=sys.stderr, flush=True)

    def make() -> web.Server:  # each worker opens its own source (own DB connection)
        src = server.open_source(
            store=args.store,
            directory=args.dir,
            sign_key=sign_key,
            store_dir=args.store_dir,
            durable=not args.no_fsync,
        )
        return server.make_app(src, cfg)

    def ready() -> None:
        h, prt = sock.getsockname()[:2]
        print(f"kiln serve: listening on http://{h}:{prt}", flush=True)

    workers.serve(make, sock, args.workers, ready)
    return 0


COMMANDS = {"serve": cmd_serve, "registry": cmd_registry}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"kiln: cmd_serve cannot handle {argv[:1]}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])
