"""``kiln build --check`` / ``--rounds``: rebuild a valid derivation into a scratch
directory and compare NAR hashes with the registered output; a mismatch names the
differing files (``checkdiff``) and raises ``NotDeterministic``. Nothing is
registered by a rebuild."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .buildlogs import shown_output
from .buildproduce import BuildError, keep_dir, output_too_slow, overdue
from .buildtmp import LOG_NAME, owned_tmpdir, release_tmpdir
from .derivation import Derivation
from .errors import KilnError, StoreError
from .hashes import Hash
from .vary import Variation

if TYPE_CHECKING:
    from .build import BuildOptions
    from .buildlocks import Serialized


class NotDeterministic(KilnError):
    """``--check`` or ``--rounds`` found a rebuild that differs from the registered output."""


@dataclass(frozen=True, slots=True)
class OutputComparison:
    """One output of a rebuild: registered vs rebuilt NAR hash, and (when they differ)
    a description of the differing files."""

    output: str
    path: str
    registered: Hash
    rebuilt: Hash
    differences: str

    @property
    def identical(self) -> bool:
        return self.registered == self.rebuilt


#: the longest ``_after_the_second_of`` waits (s): a registration time further ahead is a
#: clock that stepped, not a build that just ended
_SAME_SECOND_WAIT = 2.0


def _after_the_second_of(registered: int) -> None:
    """Return once the wall clock is past the second after ``registered`` (a path's
    ``registration_time``, in whole seconds, rounded down). A rebuild run in the same
    second as the build it checks (``--rounds 2``, or ``--check`` right after a build)
    reads the same ``date +%s`` and writes the same gzip or tar mtimes, and so hides the
    commonest non-determinism there is: started a second after the build ended, it reads
    a clock at least a second later than the build read it."""
    wait = registered + 2 - time.time()
    if 0 < wait <= _SAME_SECOND_WAIT:
        time.sleep(wait)


class Checking:
    """The rebuild half of ``build.Builder`` (a mixin: it uses the builder's ``store``,
    ``opts``, ``say``, ``get_drv``, ``_produce`` and ``_tmp_root``)."""

    if TYPE_CHECKING:
        store: Serialized
        opts: BuildOptions
        say: Callable[[str], None]

        def get_drv(self, drv_path: str) -> Derivation: ...
        def _tmp_root(self) -> Path: ...
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
        ) -> dict[str, tuple[Path, list[str]]]: ...

    def rebuild(
        self, drv_path: str, vary: Variation | None = None, keep_hint: str = ""
    ) -> list[OutputComparison]:
        """Build ``drv_path`` again into a scratch directory (its outputs must be valid)
        and compare each output's NAR hash with the registered one. Nothing is
        registered; the rebuilt trees are removed afterwards. ``vary`` changes the
        conditions of the rebuild (``store/vary.py``). A differing rebuild is kept under
        ``keep_failed``; otherwise its differences end with a note that it was removed,
        followed by ``keep_hint`` (how the caller's user keeps it)."""
        from . import nar
        from .checkdiff import describe_differences

        drv = self.get_drv(drv_path)
        out: list[OutputComparison] = []
        # checked before building (not after a whole rebuild): only valid outputs can be
        # compared; one a GC collected (an unrooted ``dev``, say) is skipped, and said so
        infos = {name: self.store.query(o.path) for name, o in drv.outputs}
        if not any(infos.values()):
            raise StoreError(f"cannot check {drv_path}: none of its outputs is valid (build it first)")
        for name, o in drv.outputs:
            if infos[name] is None:
                self.say(f"not comparing {o.path}: it is not valid here (collected, or never built)")
        _after_the_second_of(max(i.registration_time for i in infos.values() if i is not None))
        parent = self._tmp_root()
        if vary is not None and vary.tmp_parent is not None:
            parent = vary.tmp_parent
            parent.mkdir(parents=True, exist_ok=True)
        # owned (locked) like the build loop's dirs, so a GC after a crash removes it
        tmp, owner = owned_tmpdir(parent, f"check-{drv.name}-", getattr(self.store, "gc_lock_path", None))
        try:
            # --timeout covers hashing the rebuilt outputs too, as it does archiving a build's
            timeout = self.opts.timeout
            deadline = None if timeout is None else time.monotonic() + timeout
            produced = self._produce(drv_path, drv, tmp, vary, deadline=deadline, rerun=True)
            if vary is not None and vary.faketime:
                _clock_shift_took(drv_path, tmp / LOG_NAME)
            for name, o in drv.outputs:
                info = infos[name]
                if info is None:
                    continue
                if deadline is None:
                    h, _ = nar.hash_path(produced[name][0])
                else:
                    h = _hash_until(produced[name][0], deadline, drv_path, timeout)
                # (file names and diffoscope's text come from the build: escaped as its log)
                diff = (
                    ""
                    if h == info.nar_hash
                    else shown_output(
                        describe_differences(
                            self.store.real_path(o.path), produced[name][0], deadline=deadline
                        )
                    )
                )
                out.append(OutputComparison(name, o.path, info.nar_hash, h, diff))
            if not all(c.identical for c in out):
                out = self._keep_rebuild(out, tmp, produced, drv, keep_hint)
        finally:
            release_tmpdir(tmp, owner)
        return out

    def _keep_rebuild(
        self,
        out: list[OutputComparison],
        tmp: Path,
        produced: dict[str, tuple[Path, list[str]]],
        drv: Derivation,
        hint: str,
    ) -> list[OutputComparison]:
        """Under ``keep_failed`` move the differing rebuild out of the scratch dir (about
        to be removed) and say where each rebuilt output is; otherwise say the rebuild is
        gone. Either way the scratch dir's name (diffoscope's output has it) is replaced."""
        kept, note = (
            keep_dir(tmp, self._tmp_root(), f"{drv.name}-check") if self.opts.keep_failed else (None, "")
        )
        done = []
        for c in out:
            if not c.identical:
                text = c.differences.replace(str(tmp), str(kept) if kept is not None else "<rebuild>")
                if kept is not None:
                    tree = Path(produced[c.output][0])
                    where = kept / tree.relative_to(tmp) if tree.is_relative_to(tmp) else kept
                    text += f"\nrebuilt output kept at {where}"
                elif self.opts.keep_failed:
                    text += note  # why it could not be kept
                else:
                    text += "\nthe rebuild was removed" + (f" ({hint})" if hint else "")
                c = replace(c, differences=text)
            done.append(c)
        return done

    def _check(self, drv_path: str, drv: Derivation) -> None:
        with contextlib.ExitStack() as stack:
            vary = None
            if self.opts.vary:
                from .vary import first_build_cores, varied

                current = self.opts.cores or os.cpu_count() or 1
                gc_lock = getattr(self.store, "gc_lock_path", None)
                vary = stack.enter_context(
                    varied(
                        Path(self.store.root),
                        gc_lock,
                        first_build_cores(self.store, drv, current),
                        self.opts.vary_only,
                    )
                )
                self.say(f"checking {drv_path} with varied conditions: {'; '.join(vary.describe())}")
            else:
                self.say(f"checking {drv_path}")
            comparisons = self.rebuild(drv_path, vary, keep_hint="--keep-failed keeps it")
        for c in comparisons:
            if not c.identical:
                raise NotDeterministic(
                    f"derivation {drv_path} may not be deterministic: output {c.path} differs\n"
                    f"  registered NAR hash: {c.registered}\n  rebuilt NAR hash:    {c.rebuilt}\n{c.differences}"
                    + _which_variation(vary)
                )
        self.say(f"{drv_path}: rebuild is bit-for-bit identical")


def _which_variation(vary: Variation | None) -> str:
    """For a varied rebuild that differed: which conditions were changed, and, when more
    than one, how to find the one that matters (``--vary-only``, one at a time; a plain
    ``--check`` first: a build that differs from itself needs no variation at all)."""
    if vary is None:
        return ""
    names = vary.names()
    text = f"\nthe rebuild varied: {', '.join(names) or 'nothing'}"
    if len(names) > 1:
        text += (
            "; to find which one the build depends on, check again without --vary, then with "
            + " / ".join(f"--vary-only {n}" for n in names)
        )
    return text


def _clock_shift_took(drv_path: str, log: Path) -> None:
    """``StoreError`` if the varied rebuild's log at ``log`` says the dynamic loader could
    not preload libfaketime (one built for another glibc than the toolchain's, a broken
    file): its programs then read the real clock, and a verdict labelled ``clock+3650d``
    would claim a shift that was never made. glibc says so on the stderr of every
    program that could not preload it, the build's first one included."""
    from .vary import FAKETIME_IN_SANDBOX

    sign = f"object '{FAKETIME_IN_SANDBOX}' from LD_PRELOAD cannot be preloaded".encode()
    with contextlib.suppress(OSError), open(log, "rb") as f:
        for line in f:
            if sign in line:
                raise StoreError(
                    f"cannot check {drv_path} with a shifted clock: the rebuild's programs could not "
                    f"load libfaketime ({shown_output(line.strip()[:300].decode(errors='replace'))}); its result would "
                    "claim a clock shift that was not made. Install a libfaketime that works with the "
                    "toolchain's C library, or remove it (the rebuild then says the clock was not varied)"
                )


def _hash_until(tree: Path, deadline: float, drv_path: str, timeout: float | None) -> Hash:
    """The NAR hash of ``tree``, or ``BuildError`` once ``deadline`` has passed (asked
    per MiB of NAR; ``nar.hash_path``, used without a deadline, reads on a thread of its
    own and has no way to stop)."""
    from . import nar

    h = hashlib.sha256()
    for chunk in nar.dump(tree):
        if overdue(deadline):
            raise BuildError(drv_path, output_too_slow(drv_path, timeout, "hash"))
        h.update(chunk)
    return Hash("sha256", h.digest())
