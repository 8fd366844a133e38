"""``kiln run PKG -- CMD...`` and ``kiln shell PKG``: use a built package on the host.

PKG is a path (anything with a ``/``: a logical or physical store path, or ``./result``
pointing into the store), a GC-root name that ``kiln build`` created (the attribute
name, e.g. ``hello``), a valid path's base name or hash part (as other commands take
them; a root of that name comes first), or ``-f FILE ATTR`` (evaluated and built first, as ``kiln
build`` would). The package is a temp root of this process until the command ends, so a
GC meanwhile keeps its closure. The closure is mounted at its logical store path
(``hostrun``); its ``bin`` is put first on PATH. Without a command, ``run`` runs
``bin/<name>`` of the package, ``<name>`` being the path's name without its version
(``package_name``). A package whose closure is incomplete (a dependency quarantined by
``kiln store verify --repair``) is refused before anything starts
(``LocalStore.closure_with_holes``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from .common import add_store_arg, store_root

if TYPE_CHECKING:
    from kiln.store.localstore import LocalStore


def _parser(prog: str, command: bool = True) -> argparse.ArgumentParser:
    """``kiln run``'s options; ``command``: with the trailing command (REMAINDER), which
    ``_parse`` leaves out when the command line has a ``--``."""
    p = argparse.ArgumentParser(prog=f"kiln {prog}")
    add_store_arg(p)
    p.add_argument("-f", "--file", help="recipe file to evaluate and build PKG from")
    p.add_argument("package", help="store path, GC root name (from kiln build), or attribute with -f")
    default = "$SHELL, else /bin/sh" if prog == "shell" else "bin/<name without version>"
    if command:
        p.add_argument(
            "command",
            nargs=argparse.REMAINDER,
            help=f"-- CMD ARGS... (default: {default}; words starting with '-' are its arguments)",
        )
    return p


def _parse(prog: str, argv: list[str]) -> argparse.Namespace:
    """The arguments; with a ``--``, what comes before it is kiln's (``kiln run PKG --store
    DIR -- CMD``: REMAINDER took ``--store DIR`` for the program's arguments) and what
    follows, the command."""
    if "--" not in argv:
        return _parser(prog).parse_args(argv)
    cut = argv.index("--")
    args = _parser(prog, command=False).parse_args(argv[:cut])
    args.command = argv[cut:]
    return args


def resolve_package(store: LocalStore, spec: str, recipe_file: str | None) -> str:
    """The store path PKG names (see module docstring)."""
    from kiln.store.errors import KilnError

    if recipe_file:
        from .cmd_build import build_attrs

        path = build_attrs(store, recipe_file, [spec])[0]
        store.keep([path])
        return path
    if "/" in spec:  # a path (``./result``, a logical or physical store path), never a root name
        path, sub = store.resolve(spec)
        store.keep([path])  # rooted first: a GC must not delete it while the command runs
        if store.is_valid(path) and not sub:
            return path
        raise KilnError(f"{spec} is not a valid path in the store at {store.root}")
    from .storeroots import root_name, root_path

    # a root of that name (``--add-root NAME``), else the one ``kiln build FILE SPEC``
    # made: a variant's is named after its exact text. Kept first: the root may be
    # replaced by a later build meanwhile
    for name in dict.fromkeys((spec, root_name(spec))):
        if (rooted := root_path(store, name, keep=True)) is not None:
            return rooted
    from .targets import by_base_name

    if (found := by_base_name(store, spec)) is not None:  # a hash part, a base name
        store.keep([found])
        if store.is_valid(found):  # (still: kept first, then checked)
            return found
    raise KilnError(
        f"no package named {spec!r} (no GC root {name}): build it first (kiln build FILE {spec!r}), "
        "or give a store path or -f FILE"
    )


def main(argv: list[str]) -> int:
    from kiln.store.localstore import LocalStore

    cmd = argv[0]
    args = _parse(cmd, argv[1:])
    # with -f it builds, and a build makes the store as ``kiln build`` does
    with LocalStore.open(store_root(args), create=bool(args.file)) as store:
        return _run(cmd, args, store)


def package_name(name: str) -> str:
    """The package name of a store path name without its version, as Nix's
    ``parseDrvName`` splits it: at the first ``-`` followed by something other than a
    letter (``gnu-tool-2.0`` -> ``gnu-tool``, ``hello-2.10`` -> ``hello``)."""
    for i, c in enumerate(name):
        if c == "-" and i + 1 < len(name) and not name[i + 1].isalpha():
            return name[:i]
    return name


def _run(cmd: str, args: argparse.Namespace, store: LocalStore) -> int:
    """Run the command; the store stays open (its temp roots keep the closure from GC)
    until the command ends."""
    from kiln.store.errors import KilnError
    from kiln.store.holes import IncompleteClosure
    from kiln.store.paths import StorePath

    from .hostrun import host_argv

    path = resolve_package(store, args.package, args.file)
    # what is mounted is all the program sees of the store: a dependency that is gone
    # (quarantined) would make it fail later, confusingly, or run without it
    closure, holes = store.closure_with_holes([path])
    if holes:
        raise IncompleteClosure(path, holes, store.root, "run" if cmd == "run" else "open a shell with")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    # a command name never starts with '-': such words are the default program's
    # arguments (``kiln run file -- --version``, as ``nix run PKG -- ARGS``); they went to
    # the host's ``env`` that starts the program, which printed its own version
    if not command or command[0].startswith("-"):
        if cmd == "shell":
            default = os.environ.get("SHELL") or "/bin/sh"  # (an empty SHELL too)
        else:
            base = package_name(StorePath.parse(path).name)
            if not os.path.isfile(os.path.join(store.real_path(path), "bin", base)):
                raise KilnError(
                    f"{path} has no bin/{base} to run: give the command after --, e.g. kiln run PKG -- CMD"
                )
            default = f"{path}/bin/{base}"
        command = [default, *command]
    elif "/" not in command[0]:
        _check_command(store, path, command[0])
    wrapped, env = host_argv(store, closure, command, [f"{path}/bin"])
    if cmd == "shell":
        env["KILN_SHELL_PACKAGE"] = path
    sys.stdout.flush()
    return run_forwarding_signals(wrapped, env, through_bwrap=wrapped is not command)


def _check_command(store: LocalStore, path: str, name: str) -> None:
    """``KilnError`` unless ``name`` is in ``path``'s ``bin`` or on the host's PATH, as the
    program will look for it (else the host's ``env`` said "'Bob': No such file or
    directory", for ``kiln run greeter -- Bob`` meant as an argument)."""
    import shutil

    from kiln.store.errors import KilnError
    from kiln.store.paths import StorePath

    if os.path.lexists(os.path.join(store.real_path(path), "bin", name)) or shutil.which(name):
        return
    base = package_name(StorePath.parse(path).name)
    raise KilnError(
        f"no command {name!r} in {path}/bin or on PATH: the first word after -- is the command "
        f"(to give {name!r} to the package's program: kiln run PKG -- {base} {name})"
    )


#: the signals a program run by ``kiln run`` gets, however they were sent
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP")
_SI_KERNEL = 0x80  # si_code of a signal the kernel generated (a terminal's ^C, a hangup)
#: seconds a signal is held for a program still starting (see ``run_forwarding_signals``)
HOLD = 10.0


def run_forwarding_signals(argv: list[str], env: dict[str, str], through_bwrap: bool = False) -> int:
    """Run ``argv`` in kiln's process group (a shell keeps the terminal) and return its
    exit status (128 + N if signal N ended it). SIGINT, SIGTERM and SIGHUP reach the
    program once, however they are sent:
    - from the terminal (^C, a hangup) the kernel signals the whole process group, the
      program included; kiln does not pass those on (``si_code``). Except a hangup when
      kiln leads its session (``ssh -t host kiln run ...``, a terminal running kiln
      itself): the kernel sends that SIGHUP to the session leader alone, so kiln passes it on;
    - sent to kiln alone (``kill PID``, ``timeout``), kiln passes them on.
    bwrap runs with them ignored (it would die of them and take the program down with
    SIGKILL, ``--die-with-parent``); the program gets them back at their default through
    the host's ``env --default-signal``, except one kiln itself was started with ignored
    (``nohup``). Without such an ``env`` bwrap is not shielded. A signal kiln gets while
    bwrap is still starting (a terminal's too: it reached only bwrap and ``env``) is held
    until the program has been exec'd (``_starting``), for up to ``HOLD`` seconds.
    A signal sent to the whole group by a process (``kill -- -PGID``, a service manager's
    stop) reaches the program directly and is passed on too: it sees it twice."""
    import signal

    sigs = [getattr(signal, n) for n in FORWARDED]
    wanted = [s for s in sigs if signal.getsignal(s) is not signal.SIG_IGN]
    # the host's own env (not a package's bin/env, first on the program's PATH), if it can
    # reset signals (coreutils >= 8.31); else bwrap is not shielded (as before)
    tool = _env_with_default_signal(hidden=argv) if through_bwrap else None
    if tool is not None:
        defaults = ",".join(signal.Signals(s).name[3:] for s in wanted)
        cut = argv.index("--") + 1
        # (``--``: a program named like an option is still the program, not env's option)
        argv = [*argv[:cut], tool, f"--default-signal={defaults}", "--", *argv[cut:]]
    waited = [*sigs, signal.SIGCHLD]
    starters = _identities(argv[0], tool) if through_bwrap else None
    names = frozenset(os.path.basename(p)[:15] for p in (argv[0], tool) if p)  # (comm: 15 bytes)
    leader = os.getsid(0) == os.getpid()  # a hangup then reaches kiln alone

    from . import common

    umask = common.ORIGINAL_UMASK  # (kiln narrowed its own: the program gets the user's)

    def in_child() -> None:  # between fork and exec: what bwrap (or the program) starts with
        signal.pthread_sigmask(signal.SIG_UNBLOCK, waited)
        if umask is not None:
            os.umask(umask)
        for s in sigs:
            if tool is not None or s not in wanted:
                signal.signal(s, signal.SIG_IGN)

    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        child = subprocess.Popen(argv, env=env, preexec_fn=in_child)  # noqa: PLW1509 - no threads here
        held: dict[int, float] = {}  # signal -> when kiln got it, until the program can take it
        while child.poll() is None:
            info = signal.sigtimedwait(waited, 0.02 if held else 1.0)
            # a terminal's signal (SI_KERNEL) reached the program directly, unless it is
            # not running yet (then it went to bwrap or env, which ignore it), or it is a
            # hangup and kiln leads the session (the kernel signals the leader alone)
            if (
                info is not None
                and info.si_signo != signal.SIGCHLD
                and (
                    info.si_code != _SI_KERNEL
                    or (leader and info.si_signo == signal.SIGHUP)
                    or _starting(child.pid, starters, names)
                )
            ):
                held.setdefault(info.si_signo, time.monotonic())
            if held:
                ready = not _starting(child.pid, starters, names)
                for sig, since in list(held.items()):
                    if ready or time.monotonic() - since >= HOLD:
                        _pass_on(child.pid, sig, through_bwrap)
                        del held[sig]
        # what came after the program ended (its own ^C, say) is not kiln's to act on
        while signal.sigtimedwait(waited, 0) is not None:
            pass
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, waited)
    code = child.returncode
    return 128 - code if code < 0 else code


def _env_with_default_signal(hidden: list[str]) -> str | None:
    """The host's ``env`` if it takes ``--default-signal`` (coreutils 8.31 and later; not
    busybox's) and the bwrap command line ``hidden`` shows it to the program (it does not
    bind the store dir's top, where the logical store is: an ``env`` there, or one that
    links there, is not the same file inside), else None."""
    import shutil

    shown = [hidden[k + 1] for k, a in enumerate(hidden[:-1]) if a in ("--dev-bind", "--bind", "--ro-bind")]
    for tool in (shutil.which("env", path=os.environ.get("PATH", os.defpath)), "/usr/bin/env", "/bin/env"):
        if tool is None or not os.path.exists(tool):
            continue
        real = os.path.realpath(tool)
        if not any(real.startswith(d.rstrip("/") + "/") for d in shown):
            continue
        try:
            r = subprocess.run([real, "--default-signal=INT", "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0:
            return real
    return None


def _starting(
    child: int, starters: frozenset[tuple[int, int]] | None, starter_names: frozenset[str] = frozenset()
) -> bool:
    """Whether the program ``child`` (bwrap) is to run has not been exec'd yet: bwrap has
    no child, or its child still runs one of ``starters`` (bwrap setting up, the host's
    ``env`` resetting signals: ``_identities``); None when not run through bwrap. Judged
    by the file each runs, not by its name (a program may be called ``env`` too; only
    a process kiln may not inspect is judged by its name, ``starter_names``), nor by
    what it ignores: a program may ignore a signal for a while on purpose (``system()``,
    ``git commit`` around an editor), and a terminal's signal it ignored so must not
    reach it again later."""
    if starters is None:
        return False
    kids = _program_pids(child)
    if kids == [child]:
        return True
    for pid in kids:
        try:
            st = os.stat(f"/proc/{pid}/exe")  # the file it runs, whatever its name or mount
        except PermissionError:
            # not ours to look into (a setuid bwrap setting up; a program that made itself
            # undumpable, as ssh-agent does): judged by its name then
            if _comm(pid) in starter_names:
                return True
            continue
        except OSError:
            continue  # gone (then it is not starting), or a zombie
        if (st.st_dev, st.st_ino) in starters:
            return True
    return False


def _comm(pid: int) -> str | None:
    """The process name of ``pid`` (``/proc/PID/comm``), None if it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def _identities(*paths: str | None) -> frozenset[tuple[int, int]]:
    """``(device, inode)`` of each existing file of ``paths``."""
    out = set()
    for path in paths:
        if path is None:
            continue
        with contextlib.suppress(OSError):
            st = os.stat(path)
            out.add((st.st_dev, st.st_ino))
    return frozenset(out)


def _pass_on(child: int, sig: int, through_bwrap: bool) -> None:
    """Send ``sig`` to the program ``child`` runs (``child`` itself unless
    ``through_bwrap``)."""
    for pid in _program_pids(child) if through_bwrap else [child]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _program_pids(bwrap_pid: int) -> list[int]:
    """The children of ``bwrap_pid`` (the program it runs), else bwrap itself."""
    try:
        with open(f"/proc/{bwrap_pid}/task/{bwrap_pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        kids = []
    return kids or [bwrap_pid]
