"""The registry token options of the client commands (``kiln push``, ``copy``, ``mirror
sync``, ``verify``): ``--token TOKEN`` or ``--token-file FILE`` (``copy`` also
``--from-token``/``--from-token-file``), else an environment variable.

Why a file: a command line is readable by every local user (``/proc/PID/cmdline``,
``ps``) and is kept in shell history; ``/proc/PID/environ`` is readable by the owner
only, and a file by whom its mode says. ``--token`` stays (scripts use it); its help
says so and points to the others.

Where a token comes from (``resolve``): ``--token-file``, else ``--token``, else the
variable (``KILN_REGISTRY_TOKEN``; ``KILN_REGISTRY_FROM_TOKEN`` for ``--from-token``);
an empty one is none. ``--token`` and ``--token-file`` together are a usage error
(argparse's, exit 2).

A token file (``read_token_file``) is read as a secret key file is (``keyfiles``: at
most 64 KiB, a FIFO or ``--token-file <(pass show reg)`` works, a directory is refused)
and held to the same rule: refused if group or others may access it, with the ``chmod``
to run. Surrounding whitespace (an editor's or ``echo``'s newline) is dropped; an empty
file, or one holding more than one word or a control character, is refused without
showing its content. ``-`` is standard input (a pipe; a file redirected there is held to
the mode rule too), for one option only.

``kiln build``'s substituters take their tokens from ``KILN_SUBSTITUTER_TOKENS`` or, kept
out of the environment, from the file ``KILN_SUBSTITUTER_TOKENS_FILE`` names
(``substituter_tokens``).

A URL or directory option (or ``kiln verify``'s TARGET) given a kiln token (pasted into
the wrong place: ``check_not_token``) is a usage error that names only the token's id: a
directory named after the token would otherwise be created, and the token shown in
messages and reports (stdout is not filtered).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from kiln.registry.tokentext import looks_like_token, shown_token
from kiln.store.errors import KilnError

from .common import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


@dataclass(frozen=True, slots=True)
class TokenOption:
    """One token option: its flag (``FLAG-file`` is the file form), the ``argparse``
    destination and the environment variable it defaults to."""

    flag: str
    dest: str
    env: str


TOKEN = TokenOption("--token", "token", "KILN_REGISTRY_TOKEN")
FROM_TOKEN = TokenOption("--from-token", "from_token", "KILN_REGISTRY_FROM_TOKEN")

#: standard input, as a token file's name
STDIN = "-"


def add_token_args(p: argparse.ArgumentParser, opt: TokenOption, what: str) -> None:
    """``opt.flag TOKEN`` and ``opt.flag-file FILE`` on ``p``, one or the other; ``what``
    says whose token it is (``help``)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        opt.flag,
        dest=opt.dest,
        metavar="TOKEN",
        help=f"{what} (default ${opt.env}). Visible to every local user (ps, /proc) and kept in "
        f"shell history: prefer ${opt.env} or {opt.flag}-file",
    )
    g.add_argument(
        f"{opt.flag}-file",
        dest=f"{opt.dest}_file",
        metavar="FILE",
        help=f"read {opt.flag} from FILE (mode 0600 or stricter; - for standard input)",
    )


def resolve(args: argparse.Namespace, *opts: TokenOption) -> None:
    """Set each of ``opts``' ``args.<dest>`` to its token or None (module docstring)."""
    files = [getattr(args, f"{o.dest}_file") for o in opts]
    if files.count(STDIN) > 1:
        raise UsageError("standard input (-) can give only one token")
    for o, f in zip(opts, files, strict=True):
        token: str | None
        if f is not None:
            token = read_token_file(f, f"{o.flag}-file")
        else:
            token = getattr(args, o.dest)
            if token is None:
                token = os.environ.get(o.env)
        setattr(args, o.dest, token or None)


def read_token_file(path: str, flag: str) -> str:
    """The token in file ``path`` (``-``: standard input), given as ``flag``; ``KilnError``
    if it cannot be read or is refused (module docstring). The content is never shown."""
    if path != STDIN and looks_like_token(path) and not os.path.lexists(path):
        raise UsageError(
            f"{flag} was given {shown_token(path)}, which looks like a token itself, not a file: put the "
            "token in a file with mode 0600 and give the file"
        )
    name = "standard input" if path == STDIN else path
    text = _secret_text(path, flag)
    if any(c.isspace() or not c.isprintable() for c in text):
        raise KilnError(
            f"token file {name} holds more than a token (a space, a second line or a control "
            "character; not shown): a token file holds the token alone"
        )
    return text


def _secret_text(path: str, flag: str) -> str:
    """The ASCII text of the token file ``path`` (``-``: standard input) given as ``flag``,
    stripped; ``KilnError`` if it cannot be read, group or others may access it, or it is
    not ASCII or empty. Nothing of its content is ever shown."""
    from kiln.store.keyfiles import read_key_file  # bounded, FIFO-safe

    name = "standard input" if path == STDIN else path
    try:
        mode, raw = read_key_file("/dev/stdin" if path == STDIN else path, "token")
    except FileNotFoundError:
        raise KilnError(f"{flag} {name}: no such file") from None
    if mode & 0o077 and (path != STDIN or stat.S_ISREG(mode)):
        shown = _stdin_file() if path == STDIN else path
        raise KilnError(
            f"token file {shown} is accessible by group/others (mode {mode & 0o777:o}); run: chmod 600 {shown}"
        )
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise KilnError(f"token file {name} holds non-ASCII bytes: not a token") from None
    if not text:
        raise KilnError(f"token file {name} is empty")
    return text


SUBSTITUTER_TOKENS = "KILN_SUBSTITUTER_TOKENS"
SUBSTITUTER_TOKENS_FILE = "KILN_SUBSTITUTER_TOKENS_FILE"


def substituter_tokens() -> dict[str, str]:
    """The read token of each ``--private`` substituter of ``kiln build``, by URL:
    ``URL=TOKEN`` pairs separated by spaces or newlines, from the file that
    ``$KILN_SUBSTITUTER_TOKENS_FILE`` names (held to the token file rules; lines starting
    with ``#`` are skipped) or from ``$KILN_SUBSTITUTER_TOKENS``. Both set is an error, as
    an option and its file form are. ``KilnError`` on a malformed pair, never showing it."""
    path = os.environ.get(SUBSTITUTER_TOKENS_FILE) or None
    inline = os.environ.get(SUBSTITUTER_TOKENS, "")
    if path is not None and inline.strip():
        raise KilnError(
            f"{SUBSTITUTER_TOKENS} and {SUBSTITUTER_TOKENS_FILE} are both set: give the tokens one way"
        )
    text = _secret_text(path, SUBSTITUTER_TOKENS_FILE) if path is not None else inline
    source = f"{SUBSTITUTER_TOKENS_FILE} {path}" if path is not None else SUBSTITUTER_TOKENS
    tokens: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        for item in line.split():
            url, eq, token = item.rpartition("=")
            if not eq or not url or not token:
                where = f", line {n}" if path is not None else ""
                raise KilnError(f"{source}{where}: expected URL=TOKEN pairs separated by spaces (not shown)")
            tokens[url] = token
    return tokens


def _stdin_file() -> str:
    """The file standard input reads (for the ``chmod`` to run), as ``/proc`` says."""
    try:
        return os.readlink("/proc/self/fd/0")
    except OSError:
        return "(the file given on standard input)"


def check_not_token(value: str, flag: str) -> None:
    """``UsageError`` if ``value`` (of ``flag``, a URL or a directory) is a kiln token."""
    if looks_like_token(value):
        raise UsageError(
            f"{flag} {shown_token(value)} is a registry token, not a URL or a directory: give the token "
            "with $KILN_REGISTRY_TOKEN or --token-file (and revoke it if others can read your shell history)"
        )
