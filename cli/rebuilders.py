"""Rebuilders: ``kiln rebuild PATH`` and ``kiln report reproducibility FILE...``.

Theory of operation
-------------------
A rebuilder takes a valid store path, finds the derivation that produced it (the
path's recorded deriver ``.drv``, which must be in the store), makes sure the
derivation's inputs are valid (building missing ones), and runs the derivation again in
a *fresh* sandbox through ``Builder.rebuild``: a new scratch store dir and build dir,
nothing shared with the first build but the read-only input closure. Each output's NAR
hash is compared with the registered one; nothing is registered and the rebuilt trees
are deleted.

The verdict is signed as a SLSA Verification Summary (``intoto.vsa``, PASSED with level
``KILN_REPRODUCED`` on a match, FAILED otherwise, also when the rebuild does not build)
and stored beside every compared output as ``vsa-<keyid>`` (``rebuildverdict``,
``attestations.record_vsa``), carried like provenance; ``policy.verify_path`` counts
independent rebuilders. A later verdict by the same key replaces the earlier one, dated
at least one second after it (``verdicttime``: a clock gone back must not leave the
older verdict standing), except a PASSED made under fewer variations than the key's
stored FAILED, which is refused with a warning (``store/vsareplace.py``).

Signing happens in this process after the sandbox has exited; the key file is never
mounted into a build. A rebuilder key that also signed the path's provenance is stored
but not counted as independent by verifiers (a warning says so).

``report`` evaluates recipe files, builds each package if needed, rebuilds it once and
prints a yes/no line per package plus the overall rate; it signs VSAs only when a key is
given; build failures are reported per package. Fixed-output derivations (fetches) are
left out: their output is pinned by hash (a "rebuild" would download the same bytes).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.store.errors import KilnError, StoreError

from .rebuildverdict import OutputVerdict, render_verdicts  # noqa: F401 - cmd_rebuild renders through here

if TYPE_CHECKING:
    from kiln.store.build import Builder
    from kiln.store.dsse import Signer

Say = Callable[[str], None]


def stderr_say(msg: str) -> None:
    """The default ``say``: a line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def make_builder(
    store: Any,
    *,
    cores: int = 0,
    mirrors: tuple[str, ...] = (),
    say: Say | None = None,
    recipe_file: str | None = None,
    attrs_by_drv: dict[str, str] | None = None,
) -> Builder:
    """A ``Builder`` on ``store`` with the bubblewrap executor (``KILN_BWRAP`` names the
    binary). Raises ``SandboxUnavailable`` with the reason if bwrap cannot sandbox.

    Whatever it builds for real (missing inputs, packages of a report) is signed and
    gets provenance exactly as ``kiln build`` would (the store's build key, see
    ``buildglue.load_sign_key``), so such paths are indistinguishable from built ones."""
    from kiln.store.build import Builder, BuildOptions

    from .buildglue import load_sign_key, make_executor
    from .buildprov import ProvenanceHook, check_recordable
    from .gitinfo import git_info

    if recipe_file:  # before anything is built: its provenance must be able to name it
        check_recordable(os.path.relpath(recipe_file))
    executor = make_executor()
    cores = cores or os.cpu_count() or 1
    commit, dirty = git_info(os.path.dirname(os.path.abspath(recipe_file))) if recipe_file else (None, False)
    hooks: list[ProvenanceHook] = []

    def after_build(*args: Any, **kw: Any) -> None:
        # The build key is loaded (or created) only when something is really built, so a
        # rebuild that needs no input builds never touches it. Builder runs one job here.
        if not hooks:
            key = load_sign_key(store, None, create=True)
            rel = os.path.relpath(recipe_file) if recipe_file else ""
            hooks.append(
                ProvenanceHook(
                    store,
                    key,
                    rel,
                    dict(attrs_by_drv or {}),
                    commit,
                    dirty,
                    cores,
                    executor.isolation(),
                    get_drv=get_drv,
                )
            )
        hooks[0](*args, **kw)

    opts = BuildOptions(cores=cores, mirrors=mirrors, progress=False)
    builder = Builder(store, executor, opts, after_build=after_build, say=say or stderr_say)
    get_drv = builder.get_drv  # the hook reuses the builder's parsed derivations
    return builder


def load_rebuilder_signer(
    store: Any, key_file: str | None, signer_cmd: str | None, signer_public: str | None
) -> Signer:
    """The signer of VSAs: ``--key FILE``, ``--signer-cmd CMD --signer-key PUB``, or the
    build key (``$KILN_SIGN_KEY`` or the store's ``keys/default.sec``, created if absent)."""
    from kiln.store import attestations
    from kiln.store.dsse import Ed25519Signer

    from .buildglue import load_sign_key

    if key_file or signer_cmd:
        return attestations.load_named_signer(key_file, signer_cmd=signer_cmd, signer_public=signer_public)[1]
    if signer_public:
        raise KilnError("--signer-key is only meaningful with --signer-cmd")
    key = load_sign_key(store, None, create=True)
    return Ed25519Signer(key.key)


def deriver_of(store: Any, path: str) -> str:
    """The ``.drv`` that produced valid ``path``; it must be in the store and genuinely
    define ``path`` (``derivers.Derivers.of``): the recorded deriver is unsigned, and a
    path imported naming another package's ``.drv`` must not be answered with that
    package's rebuild."""
    from kiln.store.derivers import Derivers

    info = store.query(path)
    if info is None:
        raise StoreError(f"{path} is not valid in the store at {store.root}: build or fetch it first")
    if not info.deriver:
        raise KilnError(f"{path} has no recorded deriver (it was added, not built), so it cannot be rebuilt")
    if not store.is_valid(info.deriver):
        raise KilnError(
            f"the deriver {info.deriver} of {path} is not in the store: evaluate its recipe first "
            f"(kiln build FILE ATTR writes the .drv files)"
        )
    if Derivers(store).of(path, info.deriver) is None:
        raise KilnError(
            f"the recorded deriver {info.deriver} of {path} does not define it (expected a derivation "
            "whose checked output paths include this path; a recorded deriver is not signed), "
            "so it cannot be rebuilt"
        )
    return info.deriver


def ensure_inputs(builder: Any, drv_path: str) -> None:
    """Build (or find valid) every input derivation of ``drv_path``, so the rebuild's
    sandbox gets the same input closure as the original build."""
    drv = builder.load([drv_path]).drvs[drv_path]
    inputs = [p for p, _ in drv.input_drvs]
    if inputs:
        builder.realise(inputs)


def provenance_signed_by(store: Any, path: str, public_key: bytes) -> bool:
    """Whether ``path``'s stored provenance carries a valid signature by ``public_key``."""
    from kiln.store import attestations, dsse

    try:
        env = attestations.read(store, path, "provenance")
    except KilnError:
        return False
    return env is not None and bool(dsse.signers(env, {"k": public_key}))


def rebuild_drv(
    store: Any,
    builder: Any,
    drv_path: str,
    signer: Any | None,
    *,
    say: Say | None = None,
    vary: bool | frozenset[str] = False,
) -> list[OutputVerdict]:
    """Rebuild ``drv_path`` (outputs valid) and compare; with ``signer``, sign and store a
    VSA beside every output (``rebuildverdict``). Returns one verdict per output. ``vary``:
    rebuild under deliberately varied conditions (``kiln.store.vary.standard``: other host
    dirs, KILN_CORES, umask, reversed directory order (build dir, outputs, inputs) where
    disorderfs is installed, the wall clock ten years ahead where libfaketime is); a set of
    ``kiln.store.vary.NAMES``: only those (``--vary-only``).
    A rebuild that does not build (``BuildError``) is a FAILED verdict, signed with
    ``signer``; without a signer the ``BuildError`` is raised (nothing to record)."""
    from kiln.store.attestations import build_dependencies
    from kiln.store.build import BuildError
    from kiln.store.sandboxrun import input_paths

    from . import rebuildverdict

    say = say or stderr_say
    drv = builder.load([drv_path]).drvs[drv_path]
    # Keep the derivation, its outputs and the sandbox's inputs alive against a
    # concurrent GC for the whole rebuild (the .drv's own closure has no outputs in it).
    inputs = input_paths(drv, lambda p: builder.load([p]).drvs[p])
    failure: BuildError | None = None
    with store.temp_root([drv_path, *(o.path for _, o in drv.outputs), *inputs]):
        # (an input that does not build is no verdict about this path: its error goes up)
        ensure_inputs(builder, drv_path)
        with contextlib.ExitStack() as stack:
            variation = None
            if vary:
                from kiln.store.vary import first_build_cores, varied

                current = builder.opts.cores or os.cpu_count() or 1
                names = vary if isinstance(vary, frozenset) else None
                variation = stack.enter_context(
                    varied(
                        Path(store.root), store.gc_lock_path, first_build_cores(store, drv, current), names
                    )
                )
                say(f"rebuilding {drv_path} with varied conditions: {'; '.join(variation.describe())}")
            else:
                say(f"rebuilding {drv_path}")
            try:
                comparisons = builder.rebuild(drv_path, variation)
            except BuildError as e:
                if signer is None:
                    raise
                failure = e
        # which copies of the inputs the verdict is about (still rooted here)
        deps = build_dependencies(store, drv_path, builder.get_drv) if signer is not None else None
    labels = variation.varied() if variation is not None else None
    if failure is not None:
        return rebuildverdict.failed_build(store, drv, drv_path, failure, signer, labels, say, deps)
    return rebuildverdict.compared(store, drv_path, comparisons, signer, labels, say, deps)


def rebuild_path(
    store: Any,
    builder: Any,
    path: str,
    signer: Any | None,
    say: Say | None = None,
    vary: bool | frozenset[str] = False,
) -> list[OutputVerdict]:
    """``rebuild_drv`` for the deriver of valid output ``path``."""
    return rebuild_drv(store, builder, deriver_of(store, path), signer, say=say, vary=vary)


# ---------------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True)
class PackageResult:
    """One package of a reproducibility report. ``status``: ``reproduced``,
    ``not reproduced`` or ``build failed`` (``error`` says why: the build, or the rebuild,
    whose FAILED verdicts are then in ``outputs`` when a key signed them)."""

    file: str
    attr: str
    drv_path: str
    outputs: tuple[OutputVerdict, ...]
    error: str = ""

    @property
    def status(self) -> str:
        if self.error:
            return "build failed"
        return "reproduced" if all(o.identical for o in self.outputs) else "not reproduced"

    @property
    def reproduced(self) -> bool:
        return self.status == "reproduced"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "attribute": self.attr,
            "derivation": self.drv_path,
            "status": self.status,
            "reproduced": self.reproduced,
            "error": self.error,
            "outputs": [o.to_dict() for o in self.outputs],
        }


def reproducibility(
    store: Any,
    files: list[str],
    *,
    signer: Any | None = None,
    mirrors: tuple[str, ...] = (),
    cores: int = 0,
    say: Say | None = None,
    vary: bool | frozenset[str] = False,
) -> list[PackageResult]:
    """Evaluate ``files``; build every package they define (if not valid), rebuild it
    once, and return a result per package, in file then definition order."""
    from kiln.store.build import BuildError

    from .buildglue import evaluate, write_drvs
    from .rebuildverdict import build_failure_reason

    say = say or stderr_say
    results: list[PackageResult] = []
    # every file evaluated before anything is built: a typo in the last file name (or a
    # recipe error) is found at once, not after the builds of the ones before it
    evaluated = []
    for f in files:
        try:
            evaluated.append((f, *evaluate(store, f, [])))
        except KilnError as e:
            if str(e) != f"{f} defines no packages":
                raise
            say(f"{f}: no packages (skipped)")  # e.g. a lock file among recipes/*.recipe
    for f, ev, targets in evaluated:
        write_drvs(store, ev, [t.drv_path for t in targets])
        attrs = {t.drv_path: t.attr for t in targets}
        builder = make_builder(
            store, cores=cores, mirrors=mirrors, say=say, recipe_file=f, attrs_by_drv=attrs
        )
        for t in targets:
            if ev.drvs[t.drv_path].is_fixed_output:
                continue
            try:
                builder.realise([t.drv_path])
            except BuildError as e:
                results.append(PackageResult(f, t.attr, t.drv_path, (), str(e).splitlines()[0]))
                continue
            try:
                verdicts = rebuild_drv(store, builder, t.drv_path, signer, say=say, vary=vary)
            except BuildError as e:  # (no signer: nothing recorded)
                results.append(PackageResult(f, t.attr, t.drv_path, (), build_failure_reason(e)))
                continue
            failed = next((v for v in verdicts if v.build_error), None)
            why = build_failure_reason(failed.build_error) if failed else ""
            results.append(PackageResult(f, t.attr, t.drv_path, tuple(verdicts), why))
    return results


def render_report(results: list[PackageResult]) -> list[str]:
    """Human-readable lines for ``kiln report reproducibility``, ending with ``summary``."""
    width = max((len(r.attr) for r in results), default=0)
    lines = []
    for r in results:
        answer = {"reproduced": "yes", "not reproduced": "NO", "build failed": "build failed"}[r.status]
        lines.append(f"{r.attr:<{width}}  reproducible: {answer}")
        for v in r.outputs:
            if not v.identical and not v.build_error:  # (a rebuild that did not build: ``error``)
                lines.append(f"  {v.path}:")
                lines += ["    " + line for line in v.differences.splitlines()]
            if v.not_recorded:
                lines.append(f"  {v.path}: no verification summary signed: {v.not_recorded}")
        if r.error:
            lines.append(f"  {r.error}")
    lines.append(summary(results))
    return lines


def summary(results: list[PackageResult]) -> str:
    """``"3/4 packages reproducible (75%)"``."""
    n = len(results)
    ok = sum(r.reproduced for r in results)
    pct = f"{100 * ok / n:.0f}%" if n else "n/a"
    return f"{ok}/{n} package{'s' if n != 1 else ''} reproducible ({pct})"
