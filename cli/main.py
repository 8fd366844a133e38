"""Entry point of the ``kiln`` command.

Theory of operation: ``kiln GROUP ...`` imports only the module that implements GROUP
(table below) and hands it the remaining arguments. Nothing else is imported, so a
no-op ``kiln build`` never pays for the parser or the HTTP stack. Each command module
exposes ``main(argv: list[str]) -> int``.

The ``kiln`` command (the console script, and ``python -m kiln``) enters at ``cli``,
which runs ``main`` and then ends the process without the interpreter's teardown
(``exit_now``). ``main`` itself returns, for callers in the same process.

A descriptor among 0, 1 and 2 that the process was started without is opened on
``/dev/null`` before anything else (``open_closed_std_fds``), as daemons and coreutils
do: with stderr closed messages are discarded, with stdin closed input is empty. With
stdout closed every command fails at once (status 1, saying so on stderr): its results
would be lost, and a script that closed it by mistake must not see success.

File names are UTF-8 whatever the locale: ``cli`` re-executes the interpreter in
Python's UTF-8 mode (``-X utf8``) when the locale would decode them otherwise
(``en_US.ISO-8859-1``, ``ja_JP.EUC-JP``; UTF-8 and the C locale need nothing).
Recipes are UTF-8 text, and a name they match or make (``.kilnignore`` patterns, ``path
"./données"``, a source named after its directory) must mean the same bytes on every
machine, or the same recipe would give other store paths there.

Errors derived from ``KilnError`` (and the lang package's errors) are printed as
``error: <message>`` with exit status 1; usage errors exit 2 (argparse's, and
``common.UsageError`` for options that do not go together). No traceback
reaches the user unless ``KILN_DEBUG=1``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import sys

#: command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "store": ("kiln.cmd_store", "inspect and maintain the local store"),
    "key": ("kiln.cmd_key", "generate, show, rotate and revoke signing keys"),
    "eval": ("kiln.cmd_eval", "evaluate a recipe file to derivations"),
    "show-derivation": ("kiln.cmd_eval", "print a derivation"),
    "path": ("kiln.cmd_eval", "print an output path without building"),
    "graph": ("kiln.cmd_eval", "print the dependency graph"),
    "prefetch": ("kiln.cmd_fetch", "download a URL and print the hash to pin"),
    "mirror-sources": ("kiln.cmd_fetch", "copy every source a recipe set needs into a hashed mirror"),
    "build": ("kiln.cmd_build", "build a package"),
    "log": ("kiln.cmd_build", "show a build log"),
    "run": ("kiln.cmd_run", "run a command of a built package"),
    "shell": ("kiln.cmd_run", "open a shell with a built package"),
    "lock": ("kiln.cmd_lock", "pin a Debian package closure into a lock file"),
    "serve": ("kiln.cmd_serve", "serve a store or directory as a registry"),
    "registry": ("kiln.cmd_serve", "registry administration (tokens)"),
    "push": ("kiln.cmd_registry", "push closures to a registry"),
    "copy": ("kiln.cmd_registry", "copy paths between stores and registries"),
    "mirror": ("kiln.cmd_mirror", "sync a mirror of a registry"),
    "sbom": ("kiln.cmd_verify", "print an SBOM for a store path"),
    "verify": ("kiln.cmd_verify", "verify a path against a policy"),
    "rebuild": ("kiln.cmd_verify", "rebuild a path and attest reproducibility"),
    "challenge": ("kiln.cmd_verify", "compare registries' paths with local builds"),
    "report": ("kiln.cmd_verify", "reproducibility reports"),
}


def usage() -> str:
    lines = ["usage: kiln COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, whole_process: bool = False) -> int:
    """Run ``kiln ARGV``; return the exit status. ``whole_process``: the command is all
    this process will do (``cli``), so what is imported by then is frozen out of the
    cyclic GC."""
    closed = open_closed_std_fds()  # before anything else can open a file
    if 1 in closed:
        try:  # noqa: SIM105 - contextlib is not imported here (see the module docstring)
            print(
                "kiln: error: standard output is closed, so what kiln prints there would be lost "
                "(redirect it to /dev/null to discard it)",
                file=sys.stderr,
            )
        except OSError:  # (stderr's reader gone too: the status says it)
            pass
        return 1
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # a usage error, as for `kiln store` alone: a script that lost its argument must fail
        print(usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from .version import full_version

        print(f"kiln {full_version()}")
        return 0
    entry = COMMANDS.get(argv[0])
    if entry is None:
        import difflib

        near = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        from kiln.registry.tokentext import hide_tokens
        from kiln.store.errors import hide_keys, redact_urls

        # (before run_command's stderr filter: the "command" may be a pasted key, token or URL)
        text = f"kiln: unknown command '{argv[0]}'{hint}\n\n{usage()}"
        print(hide_tokens(hide_keys(redact_urls(text))), file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(entry[0])
    except ModuleNotFoundError as e:
        if e.name == entry[0]:
            print(f"kiln: command '{argv[0]}' is not available in this build", file=sys.stderr)
            return 2
        raise
    from .common import run_command

    if whole_process:
        # everything imported so far lives until exit: keep the cyclic GC from walking
        # it again and again (a few ms per command; young collections still run)
        gc.freeze()
    return run_command(module.main, argv, debug=os.environ.get("KILN_DEBUG") == "1")


def open_closed_std_fds() -> frozenset[int]:
    """Open ``/dev/null`` on each of descriptors 0, 1 and 2 that the process was started
    without (``kiln ... 2>&-``), and give ``sys`` a stream on it; return the ones that
    were closed. Otherwise the next file kiln opens would take that number: a build's
    sandbox would inherit a store file as its stderr, and results meant for stdout would
    go to whatever file happened to get descriptor 1. ``sys.stderr`` is then never None
    (``print(file=None)`` writes to stdout). Inheritable, as the standard descriptors
    are: a child given "the same stdin" must not find it closed and reuse its number."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    for fd in closed:  # ascending, so the lowest free descriptor is the one wanted
        new = os.open(os.devnull, os.O_RDWR)
        if new != fd:
            os.dup2(new, fd)  # (inheritable)
            os.close(new)
        else:
            os.set_inheritable(fd, True)
        if fd == 0 and sys.stdin is None:
            sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
        elif fd == 1 and sys.stdout is None:
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        elif fd == 2 and sys.stderr is None:
            sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
    return frozenset(closed)


def cli() -> None:
    """The ``kiln`` console script: ``main``, then ``exit_now``. A ^C while the command's
    modules are still being imported ends it as one during the command does (status
    130, one line), not with a traceback; only one during the interpreter's own start-up,
    before this runs, still prints Python's."""
    utf8_file_names()
    try:
        code = main(whole_process=True)
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        code = 130
    exit_now(code)


def utf8_file_names() -> None:
    """Re-execute this process in Python's UTF-8 mode unless file names already decode as
    UTF-8 (module docstring); if that cannot be done, go on as it is."""
    if sys.flags.utf8_mode or sys.getfilesystemencoding().lower().replace("-", "") == "utf8":
        argv = getattr(sys, "orig_argv", [])
        if argv[1:3] == ["-X", "utf8"] and len(argv) > 3 and not argv[3].startswith("-"):
            _name_process(os.path.basename(argv[3]))  # re-executed: ``kiln``, as before, not ``python3``
        return
    if not sys.executable or not getattr(sys, "orig_argv", None):
        return
    try:
        os.execv(sys.executable, [sys.executable, "-X", "utf8", *sys.orig_argv[1:]])
    except OSError:
        return


def _name_process(name: str) -> None:
    """Set this process's name (``ps``, ``pgrep``, ``/proc/PID/comm``) to ``name``, as the
    kernel named the console script before ``utf8_file_names`` re-executed Python."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, os.fsencode(name)[:15], 0, 0, 0)  # PR_SET_NAME


def exit_now(code: int) -> None:
    """End the process with ``code`` without tearing the interpreter down.

    A command's work is durable when it returns (files closed and fsynced, database
    committed); what teardown would add is freeing every object and module one by one,
    ~10 ms of a short command. Exit handlers still run (``atexit``, and through it
    ``weakref.finalize``), then stdout and stderr are flushed. The normal exit is taken
    instead if another non-daemon thread is still running (it waits for the thread) or
    a flush fails (it reports that as the interpreter always has). After a signal
    (``code`` 128 + N: ^C, SIGTERM) no thread is waited for: one may be in a download that
    cannot be cancelled, and ending now is what the signal asked for (all the store
    holds is made to survive a kill at any moment)."""
    import threading

    main_thread = threading.main_thread()
    if code < 128 and any(
        t is not main_thread and t.is_alive() and not t.daemon for t in threading.enumerate()
    ):
        raise SystemExit(code)
    import atexit

    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None: the process was started with that fd closed
                stream.flush()
    except (OSError, ValueError):
        raise SystemExit(code) from None
    os._exit(code)
