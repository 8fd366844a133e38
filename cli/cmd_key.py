"""``kiln key``: generate signing keys, show public keys, rotate and revoke keys.

- ``kiln key generate NAME [-o FILE] [--force]`` writes the secret key (Nix format,
  ``NAME:base64``) to FILE, default ``$KILN_HOME/keys/NAME.sec``, created 0600
  atomically, and the public key beside it (``.pub`` instead of ``.sec``, or FILE +
  ``.pub``). An ``-o`` ending in ``.pub`` is refused (a secret key there would pass for
  a public one), and so is a NAME kiln could not read back or show safely
  (``check_key_name``: printable ASCII, no space, ':', '"' or '\\'). It prints only the
  public key and the secret key's path: secret key material never goes to stdout or
  stderr. Either file there and not a regular file (a symbolic link, a directory) is
  refused before either is written, ``--force`` or not: no run leaves a ``.pub`` whose
  secret half it discarded, or a ``.sec`` without its ``.pub``.
- ``kiln key public [FILE|NAME]`` prints the public key of a secret or public key file,
  or of key NAME under ``$KILN_HOME/keys``; with no argument, of the only key there. A
  secret key file by name or mode that holds no secret key is refused, not printed
  (``keyfiles.public_key_of``: a seed alone looks like a public key).
- ``kiln key rotate FILE|NAME [--resign] [--store DIR]`` and ``kiln key revoke
  FILE|NAME|PUBKEY --policy P``: ``keyrotate``. ``rotate`` looks a NAME up as
  ``NAME.sec`` in the ``keys/`` of its store (``--store DIR``, else ``$KILN_HOME``);
  ``revoke`` in ``$KILN_HOME/keys``, as ``NAME.sec`` or else ``NAME.pub`` (a revoked key's
  secret half may be gone).

Keys are interchangeable with ``nix key generate-secret`` / ``convert-secret-to-public``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
from pathlib import Path

from kiln.store.errors import KilnError
from kiln.store.keyfiles import public_key_of, write_public_key, write_secret_key
from kiln.store.signing import SecretKey
from kiln.store.sigshield import shielded

from .common import add_store_arg, private_keys_dir, store_root


def keys_dir(args: argparse.Namespace) -> Path:
    """The named keys' directory: ``keys/`` of ``--store`` if given, else of the default
    store root (as ``rotate`` and the signing commands look for NAME)."""
    return store_root(args) / "keys"


#: characters a key name may not hold besides whitespace and non-ASCII (``check_key_name``)
_NOT_IN_NAMES = ':"\\'


def check_key_name(name: str, what: str) -> str:
    """``name`` if kiln may make a key of that name (``what``: how to call it), else a
    ``KilnError``: the one rule for ``generate`` and ``rotate``. Key files are read as ASCII
    and a name ends at its first ':' or whitespace (``keyfiles``, ``signing``): a name
    outside printable ASCII or holding either makes a key kiln cannot read back. '"' and
    '\\' would break the TOML strings keys are written in (``revoke``, policies), and
    control characters the terminal that shows them."""
    bad = sorted({c for c in name if not " " < c <= "~" or c in _NOT_IN_NAMES})
    if not name or bad:
        shown = ", ".join(ascii(c) for c in bad) if bad else "empty"
        raise KilnError(
            f"{what} name {ascii(name)} is not allowed ({shown}): a key name is printable ASCII "
            "without spaces, ':', '\"' or '\\' (e.g. cache.example.org-1)"
        )
    return name


def _pub_path(sec: Path) -> Path:
    return sec.with_suffix(".pub") if sec.suffix == ".sec" else sec.with_name(sec.name + ".pub")


def _generate(args: argparse.Namespace) -> int:
    key = SecretKey.generate(check_key_name(args.name, "key"))
    if args.output:
        sec = Path(args.output)
        if sec.name.lower().endswith(".pub"):
            raise KilnError(
                f"-o {sec}: -o names the secret key file, and a .pub file is where a public key goes; "
                "give NAME.sec (the public key is written beside it, as NAME.pub)"
            )
    else:
        if "/" in args.name:
            raise KilnError(f"key name {args.name!r} must not contain '/' (use -o FILE to choose the file)")
        sec = private_keys_dir(keys_dir(args)) / f"{args.name}.sec"
    if not sec.parent.exists():
        sec.parent.mkdir(parents=True, mode=0o700)
    pub = _pub_path(sec)
    for p in (sec, pub):  # checked before writing either: no run may leave a pair half-replaced
        _check_target(p)
    # a ^C or SIGTERM between the two halves waits for both (milliseconds): one landing
    # there left a new .pub beside the old .sec, a pair that verified nothing
    with shielded:
        _write_pair(sec, pub, key, args.force)
    # stdout is the public key alone, for PUB=$(kiln key generate NAME); where the
    # secret half went is for the person reading the terminal
    print(key.public().to_text())
    print(f"secret key: {sec}", file=sys.stderr)
    return 0


def _write_pair(sec: Path, pub: Path, key: SecretKey, force: bool) -> None:
    """Write ``key`` to ``sec`` and its public half to ``pub`` (see ``_generate``):
    a matching pair, or the pair there was, or (without ``force``) nothing."""
    if force:
        # the public half first: if it cannot be written, the old secret key is still there
        write_public_key(pub, key.public(), overwrite=True)
        try:
            write_secret_key(sec, key, overwrite=True)
        except (KilnError, OSError):
            # (a full disk; a link put there since the check) the .pub just written is
            # the half of a discarded key: the pair is again whatever the .sec holds
            with contextlib.suppress(OSError):
                pub.unlink()
            _heal_public(sec, pub)
            raise
    else:
        # the secret half first and exclusively: of two runs at once only the one that
        # made it writes the public half (a loser wrote its own .pub over the winner's,
        # a pair that verified nothing); one killed in between left a .pub alone
        if pub.exists() and not sec.exists():
            raise KilnError(f"{pub} already exists; pass --force to replace it")
        try:
            write_secret_key(sec, key)
        except KilnError:
            if not sec.exists():
                raise
            _heal_public(sec, pub)
            raise KilnError(f"{sec} already exists; pass --force to replace it") from None
        try:
            write_public_key(pub, key.public(), overwrite=True)  # derived from what we wrote
        except (OSError, KilnError) as e:
            # (a full disk; a link put there since the check) no half pair: the secret key
            # is this run's, and nobody has seen its public half; left, a rerun would say
            # it exists and never show that half
            sec.unlink(missing_ok=True)
            why = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
            raise KilnError(
                f"cannot write the public key {pub}: {why}; no key was made (its secret half is removed)"
            ) from e


def _check_target(p: Path) -> None:
    """Refuse to write a key file at ``p`` if something other than a regular file is
    there (a directory, a symbolic link, a device): ``_write_atomic`` would refuse it only
    once the other half of the pair was written, and ``--force`` never replaces it."""
    try:
        st = p.lstat()
    except FileNotFoundError:
        return
    if p.is_dir():
        raise KilnError(f"{p} is a directory; name the key file to write")
    if not stat.S_ISREG(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "something else"
        raise KilnError(
            f"{p} is not a regular file; refusing to replace it with a key file, even with --force "
            f"(it is {what}: remove it, or name the file to write with -o FILE)"
        )


def _heal_public(sec: Path, pub: Path) -> None:
    """Write ``pub`` from the secret key ``sec`` if it is missing (a generate killed
    between its two writes); quietly nothing if ``sec`` cannot be read."""
    from kiln.store.keyfiles import load_secret_key

    if pub.exists():
        return
    with contextlib.suppress(KilnError, OSError):
        write_public_key(pub, load_secret_key(sec).public())


def _public(args: argparse.Namespace) -> int:
    arg = args.key
    if arg is None:
        d = keys_dir(args)
        found = sorted(d.glob("*.sec")) if d.is_dir() else []
        if len(found) != 1:
            names = ", ".join(p.stem for p in found) or "none"
            raise KilnError(f"name a key: {len(found)} keys in {d} ({names})")
        path = found[0]
    elif "/" in arg or os.path.exists(arg):
        path = Path(arg)
    else:
        d = keys_dir(args)
        path = d / f"{arg}.sec"
        if not path.exists() and (d / f"{arg}.pub").exists():
            path = d / f"{arg}.pub"
    if not path.exists():
        from kiln.store.signing import may_be_secret

        if may_be_secret(arg):  # key text given instead of a file: never echo it
            raise KilnError("expected a key file or key name, found key text (not shown)")
        raise KilnError(f"no key file {path} (create one with 'kiln key generate NAME')")
    print(public_key_of(path).to_text())
    return 0


def _key_file(arg: str, keys: Path, public: bool = False) -> Path:
    """The key file ``arg`` names: a file, else ``keys/ARG.sec`` (``public``: else
    ``keys/ARG.pub`` too)."""
    p = Path(arg)
    if os.path.lexists(p):
        return p
    for suffix in (".sec", ".pub") if public else (".sec",):
        if (named := keys / f"{arg}{suffix}").exists():
            return named
    from kiln.store.signing import key_text_hint, may_be_secret

    if may_be_secret(arg):
        raise KilnError(f"{key_text_hint(arg)}: give the key's file, or its name in {keys}")
    raise KilnError(f"no key file {arg} and no key named {arg!r} in {keys}")


def _rotate(args: argparse.Namespace) -> int:
    from .keyrotate import rotate

    home = store_root(args)
    old_file = _key_file(args.key, home / "keys")
    r = rotate(home, old_file, args.resign)
    print(r.key.public().to_text())
    print(f"new key: {r.new_file} (public key beside it)", file=sys.stderr)
    if args.resign:
        print(
            f"re-signed {r.resigned} path(s) made in the store at {home} with {r.key.name}", file=sys.stderr
        )
    if r.imported or r.unknown:
        kinds = [f"{len(r.imported)} imported (copied or substituted)"] if r.imported else []
        if r.unknown:
            kinds.append(f"{len(r.unknown)} of unknown origin (registered before kiln recorded it)")
        store = "" if args.store is None else f" --store {home}"
        print(
            f"left {len(r.imported) + len(r.unknown)} path(s) signed by {r.old_name} unsigned by "
            f"{r.key.name}, as they were not made in this store: {' and '.join(kinds)}; a leaked "
            f"{r.old_name} may have made them. Sign those you trust with: kiln store sign --key "
            f"{r.new_file}{store} PATH...",
            file=sys.stderr,
        )
        for p in r.imported:
            print(f"  imported  {p}", file=sys.stderr)
        for p in r.unknown:
            print(f"  unknown   {p}", file=sys.stderr)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from .keyrotate import revoke

    text, keys = args.key, keys_dir(args)
    if (
        ":" not in text
        or os.path.lexists(text)
        or any((keys / f"{text}{x}").exists() for x in (".sec", ".pub"))
    ):
        text = public_key_of(_key_file(text, keys, public=True)).to_text()
    entry = revoke(Path(args.policy), text, not args.retired, args.reason, None)
    print(entry.strip())
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="kiln key", description="generate signing keys, show public keys, rotate and revoke keys"
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate an ed25519 signing key")
    g.add_argument("name", metavar="NAME", help="key name (appears in every signature, e.g. cache.example-1)")
    g.add_argument(
        "-o", "--output", metavar="FILE", help="secret key file (default: $KILN_HOME/keys/NAME.sec)"
    )
    g.add_argument("--force", action="store_true", help="replace an existing key file")
    add_store_arg(g)  # (NAME.sec goes to its keys/)
    g.set_defaults(fn=_generate)
    pk = sub.add_parser("public", help="print the public key of a key file or named key")
    pk.add_argument("key", nargs="?", metavar="FILE|NAME")
    add_store_arg(pk)
    pk.set_defaults(fn=_public)
    r = sub.add_parser("rotate", help="make the successor of a key (name-1 -> name-2)")
    r.add_argument("key", metavar="FILE|NAME", help="the current key")
    r.add_argument(
        "--resign",
        action="store_true",
        help="also sign every path made in the store that the old key signed (imported ones are listed)",
    )
    add_store_arg(r)  # (its keys/ holds NAME.sec and default.sec)
    r.set_defaults(fn=_rotate)
    rv = sub.add_parser("revoke", help="revoke a key in a verification policy file")
    rv.add_argument(
        "key", metavar="FILE|NAME|PUBKEY", help="key to revoke (public key text, key file or name)"
    )
    rv.add_argument("--policy", required=True, metavar="FILE", help="policy file to add the revocation to")
    rv.add_argument("--retired", action="store_true", help="not compromised: earlier attestations stay valid")
    rv.add_argument("--reason", default="", help="why (recorded in the policy)")
    add_store_arg(rv)  # (a NAME is looked for in its keys/)
    rv.set_defaults(fn=_revoke)
    args = p.parse_args(argv[1:] if argv and argv[0] == "key" else argv)
    return args.fn(args)
