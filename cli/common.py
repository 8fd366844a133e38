"""Helpers shared by the command modules: error reporting, store selection, output.

``run_command`` is the single place that turns exceptions into exit codes:
``KilnError`` (and any exception class with ``kiln_user_error = True``) → message, 1;
``KeyboardInterrupt`` → 130; anything else → a one-line internal error, 70 (the
traceback only with ``KILN_DEBUG=1``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from kiln.registry.tokentext import hide_tokens
from kiln.store.errors import hide_keys, redact_urls

from .interrupts import Terminated as Terminated  # re-exported: the commands import them from here
from .interrupts import terminate_as_interrupt as terminate_as_interrupt
from .interrupts import wrapped_interrupt

# No argparse or pathlib at import time: every command imports this module, and a
# cached ``kiln eval FILE`` uses neither (see cmd_eval.main).
TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    import argparse
    from pathlib import Path
    from types import SimpleNamespace
    from typing import Any, BinaryIO, TextIO

    from kiln.store.signing import PublicKey


def default_home_dir() -> str:
    """``KILN_HOME`` or ``~/.local/share/kiln`` (``$XDG_DATA_HOME/kiln`` if set)."""
    from kiln.store.home import kiln_home_dir

    return kiln_home_dir()


def default_home() -> Path:
    """``default_home_dir()`` as a Path."""
    from pathlib import Path

    return Path(default_home_dir())


def load_trusted_key(arg: str | os.PathLike) -> PublicKey:
    """A public key given on the command line (``--trusted-key``): the file ``arg``
    names if there is one, else key text ``name:base64``. Every command reads it the
    same way."""
    from kiln.store.errors import FormatError, KilnError
    from kiln.store.keyfiles import load_public_key
    from kiln.store.signing import PublicKey, key_text_hint, may_be_secret

    text = os.fspath(arg)
    if os.path.exists(text):
        return load_public_key(text)
    if ":" not in text:
        raise KilnError(f"{key_text_hint(text) if may_be_secret(text) else text}: no such public key file")
    try:
        return PublicKey.parse(text)
    except FormatError as e:
        # never echo what may be a secret key (error output ends up in CI logs)
        raise FormatError(
            f"{key_text_hint(text)} is neither a public key file nor a public key ({e})"
        ) from None


def trusted_keys(items: list | None, env: bool = True) -> list:
    """The public keys of ``--trusted-key`` ``items`` (``load_trusted_key``), plus
    ``$KILN_TRUSTED_KEYS`` (space-separated ``name:base64``) when ``env``: a list of
    ``signing.PublicKey``."""
    from kiln.store.errors import FormatError
    from kiln.store.signing import PublicKey, key_text_hint

    keys = [load_trusted_key(k) for k in items or []]
    for t in os.environ.get("KILN_TRUSTED_KEYS", "").split() if env else ():
        try:
            keys.append(PublicKey.parse(t))
        except FormatError as e:
            raise FormatError(f"KILN_TRUSTED_KEYS: {key_text_hint(t)} is not a public key ({e})") from None
    return keys


def warn_no_signatures(what: str) -> None:
    """Say that a threshold of 0 signatures turns checking off (as Nix's
    ``require-sigs = false``: allowed, never silent)."""
    print(f"warning: --sigs-needed 0: {what} without checking any signature", file=sys.stderr)


def private_keys_dir(d: Path) -> Path:
    """Make the keys directory ``d`` (``$KILN_HOME/keys``) 0700: created so (its parents
    0755), or narrowed if it is ours and others may list it (a first ``kiln build`` made
    it 0755 before). The secret key files in it are 0600 regardless. Refused
    (``perms.UnsafeStore``) if it or the directory it is in is another user's or
    writable by group or others, before anything is written there: another user could
    plant the key kiln signs with, or take the one it writes."""
    from kiln.store.perms import PRIVATE_DIR_MODE, check_keys_dir, make_dir

    check_keys_dir(d)
    make_dir(d, PRIVATE_DIR_MODE)
    st = d.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        os.chmod(d, 0o700)
    return d


def add_store_arg(p: argparse.ArgumentParser) -> None:
    from pathlib import Path

    p.add_argument(
        "--store",
        type=Path,
        default=None,
        metavar="DIR",
        help="store root (default: $KILN_HOME, $XDG_DATA_HOME/kiln or ~/.local/share/kiln)",
    )


def store_root_dir(args: argparse.Namespace | SimpleNamespace) -> str:
    """``--store`` if given, else ``default_home_dir()`` (a string: no pathlib needed).
    (``args`` may be a SimpleNamespace: ``cmd_eval``'s, made without importing argparse.)"""
    store = getattr(args, "store", None)
    root = os.fspath(store) if store else default_home_dir()
    STORES_USED.append(root)
    return root


#: the store roots this command opened (``store_root_dir``): where a full disk is looked
#: for when a write fails without naming its file
STORES_USED: list[str] = []


def store_root(args: argparse.Namespace) -> Path:
    """``store_root_dir(args)`` as a Path."""
    from pathlib import Path

    return Path(store_root_dir(args))


def is_user_error(e: BaseException) -> bool:
    from kiln.store.errors import KilnError

    return isinstance(e, KilnError) or getattr(type(e), "kiln_user_error", False)


class _Quiet:
    """A stream (stderr, or its ``buffer``) that stops writing, silently, once its reader
    has gone (a closed pipe: ``kiln build -L 2>&1 | head``; a terminal that hung up, whose
    writes fail with EIO: the SIGHUP's "kiln: terminated" must still exit 129). Messages
    are a courtesy; the command's work and its exit status must not end with them. Text
    written to it has the credentials of any URL hidden (``errors.redact_urls``), and
    every ed25519 secret key (``errors.hide_keys``) and kiln registry token
    (``tokentext.hide_tokens``: ``kiln_<id>_***``) in it."""

    def __init__(self, stream: TextIO | BinaryIO) -> None:
        # (Any: written str or bytes as the stream takes, and asked whatever a caller asks)
        self._stream: Any = stream
        self._gone = False

    def write(self, data: str | bytes) -> int:  # as the stream's
        if not self._gone:
            try:
                # a message never shows a registry URL's password, a secret key nor a
                # registry token (exact rules; build logs go through the binary side, untouched)
                self._stream.write(
                    hide_tokens(hide_keys(redact_urls(data))) if isinstance(data, str) else data
                )
            except OSError as e:
                self._reader_gone(e)
        return len(data)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except OSError as e:
                self._reader_gone(e)

    def _reader_gone(self, e: OSError) -> None:  # noqa: ARG002 - any error: see below
        # a closed pipe, a hung-up terminal (EIO), or a full disk under ``2> file``: the
        # message cannot be written, and saying so would need the same stream
        self._gone = True

    @property
    def buffer(self) -> _Quiet:  # the binary side, as quiet
        return _Quiet(self._stream.buffer)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...: the stream's
        return getattr(self._stream, name)


def _errnos(*names: str) -> frozenset[int]:
    import errno

    return frozenset(getattr(errno, n) for n in names if hasattr(errno, n))


#: a write that hit the machine's limits: a full disk or quota, a file size limit, a
#: read-only file system
WRITE_LIMIT_ERRNOS = _errnos("ENOSPC", "EDQUOT", "EFBIG", "EROFS")
#: OSErrors that report the machine's state (those, a device error, no descriptors or
#: memory left) rather than a bug: a user error even without a file name
_ENVIRONMENT_ERRNOS = WRITE_LIMIT_ERRNOS | _errnos("EIO", "EMFILE", "ENFILE", "ENOMEM", "EPIPE")


class UsageError(Exception):
    """Options that do not go together, found after parsing: ``error: <message>`` and
    exit status 2, as argparse's own usage errors."""


#: the umask kiln was started with (``run_command`` narrows it by 022)
ORIGINAL_UMASK: int | None = None


def narrow_umask() -> None:
    """Take group and others' write bits out of the umask (as Nix sets 022 at start): what
    kiln makes in a store or a registry with a default mode is then not writable by other
    users whatever the umask it was started with (``kiln.store.perms``: the store's own
    directories and files get explicit modes besides). A stricter umask (077) stays."""
    global ORIGINAL_UMASK
    old = os.umask(0o022)
    os.umask(old | 0o022)
    if ORIGINAL_UMASK is None:
        ORIGINAL_UMASK = old


def absolute_kiln_home() -> None:
    """Make a relative ``KILN_HOME`` absolute in this process's environment (against the
    directory kiln was started in, ``kiln.store.home.absolute``), so what kiln starts
    (``kiln run``, ``kiln shell``, a signer command) uses the same store wherever it runs
    ``kiln``. Left as it is when there is no current directory: the command fails saying
    so if it needs the store."""
    home = os.environ.get("KILN_HOME")
    if home and not home.startswith("/"):
        import contextlib

        from kiln.store.errors import KilnError
        from kiln.store.home import absolute

        with contextlib.suppress(KilnError):
            os.environ["KILN_HOME"] = absolute(home, "KILN_HOME")


def run_command(fn: Callable[[list[str]], int], argv: list[str], debug: bool = False) -> int:
    """Run command ``fn(argv)``; return its exit status (see the module docstring)."""
    if sys.stderr is None:
        # a caller in the same process started without fd 2 (``main`` opens it for the
        # ``kiln`` command): ``print(file=None)`` would write messages to stdout
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    if not isinstance(sys.stderr, _Quiet):
        sys.stderr = _Quiet(sys.stderr)  # a BrokenPipeError below is then stdout's
    narrow_umask()
    absolute_kiln_home()
    try:
        # every command unwinds on SIGTERM/SIGHUP as on ^C: its temp files and dirs go
        with terminate_as_interrupt():
            try:
                return fn(argv) or 0
            except Exception as e:  # (a signal's exception Python wrapped: ``wrapped_interrupt``)
                if (signal_exc := wrapped_interrupt(e)) is not None:
                    raise signal_exc from None
                raise
    except KeyboardInterrupt as e:
        print(f"kiln: {'terminated' if isinstance(e, Terminated) else 'interrupted'}", file=sys.stderr)
        return 128 + e.signum if isinstance(e, Terminated) else 130
    except BrokenPipeError:
        return 0
    except UsageError as e:
        print(f"kiln {argv[0]}: error: {_said(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - this is the top-level reporter
        if debug:
            raise
        if is_user_error(e):
            # (one that stands for a full disk's OSError says what to do about it too)
            under = e.__cause__ or e.__context__
            hint = _space_hint(under) if isinstance(under, OSError) else ""
            print(f"error: {_said(e)}{hint}", file=sys.stderr)
            return 1
        if isinstance(e, OSError) and e.filename:
            # (a key given where its file belongs is such a file name: the stderr wrapper,
            # _Quiet, hides it)
            both = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else e.filename
            print(f"error: {_said(e.strerror)}: {_said(both)}{_space_hint(e)}", file=sys.stderr)
            return 1
        if type(e).__module__ == "sqlite3" and type(e).__name__ in ("DatabaseError", "OperationalError"):
            # damage or I/O trouble found after opening (opening names the file:
            # ``db.connect``); its other errors (ProgrammingError...) are kiln's bugs
            where = f" {STORES_USED[-1]}/db.sqlite" if STORES_USED else ""
            print(f"error: store database{where}: {_said(e)}{_space_hint(e)}", file=sys.stderr)
            return 1
        if isinstance(e, OSError) and e.errno in _ENVIRONMENT_ERRNOS:
            # the machine's limits, not a kiln bug (the write that hit them names no file)
            print(f"error: {_said(e.strerror or e)}{_space_hint(e)}", file=sys.stderr)
            return 1
        print(
            f"kiln: internal error: {type(e).__name__}: {_said(e)} (rerun with KILN_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 70


#: below this many free bytes, an error a full disk may explain gets the hint (more than
#: ``fsstate.LOW_SPACE``: the write that failed may have been a big one)
_HINT_SPACE = 64 << 20


def _space_hint(e: BaseException) -> str:
    """For an error a full, read-only or failing disk may explain (``WRITE_LIMIT_ERRNOS``,
    EIO, SQLite's "full" and "I/O" errors): a line per store this command opened whose
    file system is read-only or nearly full, with what to do; else ``""``. (A write that
    failed so names no file: the stores are where kiln writes most.)"""
    import errno

    text = str(e)
    if not (
        (isinstance(e, OSError) and (e.errno in WRITE_LIMIT_ERRNOS or e.errno == errno.EIO))
        or "full" in text
        or "I/O" in text
    ):
        return ""
    from kiln.store.fsstate import state_of

    lines = []
    for root in dict.fromkeys(STORES_USED):
        state = state_of(root)
        if state is None:
            continue
        if state.read_only:
            lines.append(f"\n  the store at {root} is on a read-only file system")
        elif state.full(below=_HINT_SPACE):
            lines.append(
                f"\n  the file system holding the store at {root} has {state.free:,} bytes free: free "
                "some space (kiln store gc removes what no root needs) and run the command again"
            )
    return "".join(lines)


def _said(what: object) -> str:
    """An error's text as the terminal gets it: control characters (but newline and
    tab), bidi controls and undecodable bytes escaped (``buildlogs.shown_output``).
    The last line of defence: a message may quote what a server, an archive or a build
    chose (a reason phrase, a file name), and its escape sequences are not theirs to
    send to the user's terminal. Messages that escape their own parts stay as they are
    (the escaping is idempotent)."""
    from kiln.store.buildlogs import shown_output

    return shown_output(str(what))


def nonempty(text: str) -> str:
    """An argparse type: any text but the empty string (``""`` from an unset shell
    variable would otherwise mean "the current directory" or "every attribute")."""
    if not text:
        import argparse

        raise argparse.ArgumentTypeError("expected a value, found an empty string")
    return text


def nonempty_path(text: str) -> Path:
    """``nonempty``, as a ``Path``."""
    from pathlib import Path

    return Path(nonempty(text))


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum`` (and at most ``maximum``); a
    usage error otherwise, naming the option, instead of a traceback later."""
    want = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"

    def parse(text: str) -> int:
        import argparse

        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number {want}, found {text!r}") from None
        if n < minimum or (maximum is not None and n > maximum):
            raise argparse.ArgumentTypeError(f"expected a whole number {want}, found {n}")
        return n

    return parse


def seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    import argparse
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, found {text!r}") from None
    if not v > 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, found {text}")
    return v
