"""Producing a derivation's outputs: run its builder (a ``builtin:`` one in-process, any
other in the sandbox executor), save the log, and collect the declared outputs from the
scratch store dir with their runtime references (``refscan``). A failed build raises
``BuildError`` naming the derivation, with the tail of its log (escaped: kiln prints it
whether or not the user asked for logs, ``buildlogs.shown_output``); so does an output
refused for stray references or one kiln could not process (an ``OSError``, e.g. a path
too long on the host), named by its store path and output-relative paths
(``outputerrors``): ``-k`` goes on with the other builds, ``-K`` keeps the directory.

``Producing`` is a mixin of ``build.Builder`` (it uses the builder's ``store``,
``executor``, ``opts``, ``logs``, ``say``, ``get_drv``, ``_pending``, ``_stop`` and
``_background``); the build loop and ``--check`` (``buildcheck``) both produce through it."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from .buildlogs import shown_output
from .buildtmp import LOG_NAME
from .derivation import Derivation
from .errors import KilnError
from .logecho import LogEcho
from .outputerrors import output_os_error, stray_refusal
from .outputinode import unshare_inode
from .paths import StorePath
from .refscan import ScanStopped, scan
from .trees import open_up
from .vary import Variation

if TYPE_CHECKING:
    from kiln.sandbox.executor import Executor

    from .build import BuildOptions
    from .buildlocks import Serialized
    from .buildlogs import LogStore
    from .stagedbuild import Pending


class BuildError(KilnError):
    """A derivation failed to build. ``drv_path`` names it; the message carries the log tail."""

    def __init__(self, drv_path: str, message: str) -> None:
        super().__init__(message)
        self.drv_path = drv_path


class Producing:
    """Runs builders and collects outputs; see the module docstring."""

    if TYPE_CHECKING:
        store: Serialized
        executor: Executor
        opts: BuildOptions
        logs: LogStore
        say: Callable[[str], None]
        _pending: Pending
        _stop: threading.Event

        def get_drv(self, drv_path: str) -> Derivation: ...
        def _background(self, fn: Callable[..., object], *args: object) -> None: ...

    def _tmp_root(self) -> Path:
        d = Path(self.store.root) / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _kept(self, tmp: Path, drv: Derivation) -> str:
        """Under ``--keep-failed`` keep the failed build's directory (``keep_dir``) and return
        the note for its error; else nothing."""
        return keep_dir(tmp, self._tmp_root(), drv.name)[1] if self.opts.keep_failed else ""

    def _produce(
        self,
        drv_path: str,
        drv: Derivation,
        tmp: Path,
        vary: Variation | None = None,
        defer: bool = False,
        deadline: float | None = None,
        dirs_made: bool = False,
        rerun: bool = False,
    ) -> dict[str, tuple[Path, list[str]]]:
        """Run the builder; return {output name: (produced tree, runtime references)}.
        ``deadline`` (``time.monotonic()``, from ``--timeout``) also bounds the reference
        scan of a sandboxed build's outputs (``BuildError`` past it). ``dirs_made``:
        ``tmp`` is a ``buildtmp.BuildDirs`` directory (its ``build/`` and ``store/``
        are ready). ``rerun``: a rebuild to compare with valid outputs (``--check``,
        ``kiln rebuild``), which no executor's cache may answer (``SandboxSpec.cacheable``)."""
        if drv.builder.startswith("builtin:"):
            from .builtins import run_builtin

            out = tmp / "out"
            # (get_drv, pending: what unpack-debs needs to check its .debs are its inputs)
            run_builtin(
                self.store,
                drv,
                out,
                mirrors=list(self.opts.mirrors),
                progress=self.opts.progress,
                get_drv=self.get_drv,
                pending=self._pending,
                say=self.say,
            )
            return {"out": (out, [])}
        produced = self._sandboxed(drv_path, drv, tmp, vary, defer, deadline, dirs_made, rerun)
        if drv.is_fixed_output:
            _check_fixed(drv_path, drv, produced["out"])
        return produced

    def _sandboxed(
        self,
        drv_path: str,
        drv: Derivation,
        tmp: Path,
        vary: Variation | None = None,
        defer: bool = False,
        deadline: float | None = None,
        dirs_made: bool = False,
        rerun: bool = False,
    ) -> dict[str, tuple[Path, list[str]]]:
        """``defer``: save the log on the bookkeeping thread (the caller deletes ``tmp``
        there too, after it); rebuilds save it synchronously."""
        from .sandboxrun import make_spec
        from .vary import inputs_view, reordered

        spec, scratch_store, inputs = make_spec(
            self.store,
            drv,
            tmp,
            self.opts,
            self.get_drv,
            vary,
            None if vary else self._pending,
            dirs_made,
            rerun,
        )
        log_path = tmp / LOG_NAME  # (made ahead with ``tmp`` by ``BuildDirs``: opened, not created)
        echo = LogEcho(drv.name) if self.opts.print_logs else None
        # a varied rebuild lists /build, its outputs and its inputs in another order
        # (``make_spec`` bound the inputs from the view mounted here)
        reorder = (
            reordered(
                [Path(spec.build_dir), scratch_store],
                view=(Path(self.store.real_store), inputs_view(tmp)),
            )
            if vary and vary.reorder_dirents
            else nullcontext()
        )
        try:
            with open(log_path, "wb") as log, reorder:
                try:
                    result = self.executor.run(spec, log, on_output=echo)
                except Exception as e:
                    # (imported already if it is one)
                    from kiln.sandbox.errors import SandboxError, SandboxUnavailable

                    # a sandbox that cannot run at all stops every build, as before; one that
                    # refuses this build fails this build only, named (with -j, several run)
                    if not isinstance(e, SandboxError) or isinstance(e, SandboxUnavailable):
                        raise
                    raise BuildError(drv_path, f"building {drv_path}: {e}") from None
                finally:
                    if echo is not None:
                        echo.close()
        except OSError as e:
            # its log (a build that filled the disk) or its directories: this build's
            # failure, named, so -k builds the others (the executor has ended the sandbox)
            where = e.filename or f"writing its log {log_path}"
            raise BuildError(drv_path, f"building {drv_path}: {e.strerror or e} ({where})") from None
        failed = result.reason != "ok"
        if defer and not failed:
            self._background(self.logs.save, drv_path, log_path)
            show = f"kiln log {drv_path}"
        elif defer:  # now: --keep-failed is about to move the log away with the build dir
            try:
                self.logs.save(drv_path, log_path)
                show = f"kiln log {drv_path}"
            except OSError as e:  # (a full disk, say): the build's own error comes first
                show = f"not saved: {e.strerror or e}"
        else:
            # a check's or rebuild's log is kept beside the build's, never over it: the
            # log of the build that made the registered output stays readable
            self.logs.save(check_log_key(drv_path), log_path)
            show = f"kiln log --check {drv_path}"
        if failed:
            tail = _tail(log_path)  # (before --keep-failed moves it)
            kept = self._kept(tmp, drv)
            raise BuildError(
                drv_path,
                f"builder for {drv_path} failed: {result.describe()}{kept}\n"
                f"last lines of the log (full log: {show}):\n{tail}",
            )
        by_hash = {StorePath.parse(p).hash_part: p for p in inputs}
        by_hash.update({StorePath.parse(o.path).hash_part: o.path for _, o in drv.outputs})
        produced: dict[str, tuple[Path, list[str]]] = {}

        def stopped() -> bool:  # (a cancelled build stops scanning, as one past its deadline)
            return self._stop.is_set() or overdue(deadline)

        for name, o in drv.outputs:
            sp = StorePath.parse(o.path)
            tree = scratch_store / sp.base
            if not tree.exists() and not tree.is_symlink():
                raise BuildError(
                    drv_path,
                    f"builder for {drv_path} succeeded but did not create output '{name}' ({o.path})"
                    + self._kept(tmp, drv),
                )
            try:
                step = "read"
                open_up(tree)  # a chmod 000 directory must not stop the scan (as a non-root user)
                step = "copy (it was hard-linked)"
                unshare_inode(tree, stopped)
                step = "scan for references"
                res = scan(tree, by_hash, drv.store_dir, stopped, logical=o.path)
            except ScanStopped:
                if not overdue(deadline):
                    raise  # cancelled
                raise BuildError(drv_path, output_too_slow(drv_path, self.opts.timeout, step)) from None
            except OSError as e:  # (a path too long on this host, say): this build's failure, named
                raise BuildError(
                    drv_path, f"{drv_path}: {output_os_error(o.path, tree, step, e)}" + self._kept(tmp, drv)
                ) from None
            if res.stray:
                raise BuildError(
                    drv_path,
                    stray_refusal(drv, o.path, res, self._stray_lookup, self.get_drv) + self._kept(tmp, drv),
                )
            if res.host_loaders:
                self.say(host_loader_warning(drv_path, o.path, res.host_loaders))
            if res.programs:  # a program without a run path to a library a dependency holds
                from .libcheck import unlinked, unlinked_warning

                providers = {p: Path(self.store.real_path(p)) for p in inputs}
                providers.update(
                    {x.path: scratch_store / StorePath.parse(x.path).base for _, x in drv.outputs}
                )
                if found := unlinked(o.path, tree, res.programs, providers):
                    self.say(unlinked_warning(drv_path, o.path, found))
            produced[name] = (tree, sorted(by_hash[h] for h in res.found))
        return produced

    def _stray_lookup(self, hash_part: str) -> str | None:
        """The valid store path with ``hash_part``, for a stray reference's message."""
        info = self.store.query_by_hash_part(hash_part)
        return None if info is None else info.path


def host_loader_warning(drv_path: str, out_path: str, found: tuple[tuple[str, str], ...]) -> str:
    """The warning for an output whose ELF programs ask for a loader outside the store
    (``refscan.ScanResult.host_loaders``): named, first one shown, the others counted."""
    rel, interp = found[0]
    where = f"{out_path}/{rel}" if rel else out_path
    more = f" (and {len(found) - 1} more program(s) in it)" if len(found) > 1 else ""
    return (
        f"warning: {drv_path}: {where} asks for the host's program loader {interp}{more}: it will run "
        "with whatever C library the host has, which its closure does not hold (linked without the "
        'toolchain\'s cc wrappers? docs/toolchain.md, "Run time")'
    )


def overdue(deadline: float | None) -> bool:
    """Whether ``deadline`` (``time.monotonic()``; None: none) has passed."""
    return deadline is not None and time.monotonic() > deadline


def output_too_slow(drv_path: str, timeout: float | None, step: str) -> str:
    """The error for a build whose output was still being processed (``step``: scanned,
    archived) when its ``--timeout`` ran out: a sandbox can make in a moment what takes
    hours to read (a sparse file of terabytes), so the limit covers both."""
    limit = "the time limit" if timeout is None else f"--timeout {timeout:g} s"
    return (
        f"builder for {drv_path} timed out: its output took too long to {step} "
        f"({limit} covers the build and the processing of its output); nothing was registered"
    )


def _check_fixed(drv_path: str, drv: Derivation, produced: tuple[Path, list[str]]) -> None:
    """A fixed-output derivation built in the sandbox: its output must have the declared
    hash (its path is named by it) and refer to no store path (as in Nix)."""
    from .builtins import check_fixed_output
    from .errors import HashMismatch

    tree, refs = produced
    if refs:
        raise BuildError(
            drv_path,
            f"fixed-output derivation {drv_path} produced an output that refers to store paths "
            f"({', '.join(refs[:3])}); a fixed output may not",
        )
    try:
        check_fixed_output(drv, tree, f"output of fixed-output derivation {drv_path}")
    except HashMismatch as e:
        raise BuildError(drv_path, str(e)) from None


def _tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of the log, indented, for the error message: escaped
    (``shown_output``), since they are printed whether or not the user asked for logs."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode(errors="surrogateescape")
    except OSError:
        return "  (no log)"
    # a line a progress bar redrew with lone CRs: what a terminal was left showing
    # (the text after the last one), not every frame run together with \r escapes
    data = "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in data.split("\n"))
    kept = shown_output(data).split("\n")
    if kept and not kept[-1]:
        kept.pop()  # (the log's last newline)
    return "\n".join("  " + line for line in kept[-lines:]) or "  (empty log)"


def keep_dir(tmp: Path, tmp_root: Path, name: str) -> tuple[Path | None, str]:
    """Move a build directory's entries to a new ``kiln-failed-<name>-*`` dir under
    ``tmp_root``; return it (None if it could not be made) and the note for the error.
    Entries are moved (same file system: instant, whatever their size); one that
    cannot be moved is copied, FIFOs recreated, sockets and devices left out. Never
    raises: keeping is a courtesy, and must not replace the build's own error."""
    try:
        keep = Path(tempfile.mkdtemp(prefix=f"kiln-failed-{name}-", dir=tmp_root))
    except OSError as e:
        return None, f"\ncould not keep the build directory: {e}"
    problem: object = None
    for entry in sorted(os.listdir(tmp)):
        src, dst = tmp / entry, keep / entry
        try:
            os.rename(src, dst)
            continue
        except OSError:
            pass
        try:
            if src.is_dir() and not src.is_symlink():
                shutil.copytree(src, dst, symlinks=True, copy_function=_copy_kept)
            else:
                _copy_kept(str(src), str(dst))
        except (OSError, shutil.Error) as e:
            problem = problem or (e.args[0][0] if isinstance(e, shutil.Error) and e.args and e.args[0] else e)
    if problem is not None:
        return keep, f"\nkept build directory (incomplete: {problem}): {keep}"
    return keep, f"\nkept build directory: {keep}"


def _copy_kept(src: str, dst: str) -> str:
    mode = os.lstat(src).st_mode
    if stat.S_ISFIFO(mode):
        os.mkfifo(dst, stat.S_IMODE(mode))
    elif stat.S_ISREG(mode):
        shutil.copy2(src, dst)
    return dst  # (sockets, devices: nothing to copy)


def check_log_key(drv_path: str) -> str:
    """The log name of the latest check or rebuild of ``drv_path`` (``kiln log --check``)."""
    return drv_path + ".check"
