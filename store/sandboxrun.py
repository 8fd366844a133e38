"""Turning a derivation into a ``kiln.sandbox.SandboxSpec``.

What the build sees (the sandbox executor adds the fixed environment, /dev, /proc,
/tmp, passwd/group):

- ``/build``: a fresh empty host directory, the working directory.
- the logical store dir (e.g. ``/kiln/store``): a fresh *scratch* host directory,
  writable, so the builder can create ``$out`` as a file or a directory exactly like
  under Nix; only the declared outputs are collected from it afterwards.
- on top of it, read-only, every path of the input closure at its logical path
  (mount order: parent before children, which the executor guarantees by sorting).
- the hermetic toolchain: the input whose derivation says ``kilnRootfs = "1"`` is
  also laid out as ``/usr``, ``/bin``, ``/lib``, ``/lib64``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .buildtmp import plain_dir
from .derivation import Derivation
from .errors import StoreError

if TYPE_CHECKING:
    from kiln.sandbox.spec import SandboxSpec

    from .build import BuildOptions
    from .stagedbuild import Pending
    from .vary import Variation


def input_paths(drv: Derivation, get_drv: Callable[[str], Derivation]) -> list[str]:
    """The store paths a derivation's build reads directly: requested outputs of its
    input derivations and its input sources."""
    paths = list(drv.input_srcs)
    for p, outs in drv.input_drvs:
        d = get_drv(p)
        om = d.outputs_map
        paths += [om[o].path for o in outs]
    return paths


def rootfs_of(drv: Derivation, get_drv: Callable[[str], Derivation]) -> str | None:
    """The logical path of the toolchain input (env ``kilnRootfs=1``), if any."""
    found = [
        get_drv(p).outputs_map["out"].path
        for p, _ in drv.input_drvs
        if get_drv(p).env_map.get("kilnRootfs") == "1"
    ]
    if len(found) > 1:
        raise StoreError(
            f"derivation {drv.name} has {len(found)} toolchain (kilnRootfs) inputs; at most one is allowed"
        )
    return found[0] if found else None


def make_spec(
    store: Any,  # a LocalStore, or the builder's serializing proxy of one
    drv: Derivation,
    tmp: Path,
    opts: BuildOptions,
    get_drv: Callable[[str], Derivation],
    vary: Variation | None = None,
    pending: Pending | None = None,
    dirs_made: bool = False,
    rerun: bool = False,
) -> tuple[SandboxSpec, Path, list[str]]:
    """Return ``(spec, scratch_store_dir, input_closure)`` for building ``drv`` in ``tmp``
    (``vary``, a ``vary.Variation``, overrides cores, umask and CPUs for a varied rebuild;
    ``pending``, a ``stagedbuild.Pending``, holds this builder's staged outputs, which
    count as valid inputs). With ``vary.reorder_dirents`` the inputs and the toolchain
    are bound from ``vary.inputs_view(tmp)``, which the caller mounts for the run
    (``vary.reordered``); ``build/`` and ``store/`` are plain 0755 directories (no ACL:
    ``buildtmp.plain_dir``), made here unless ``dirs_made`` says ``tmp`` came from
    ``buildtmp.BuildDirs``, which makes them so (the build loop's critical path then
    does not redo it). ``rerun``: a rebuild of outputs already valid, to compare with
    them (``SandboxSpec.cacheable`` False: no executor's cache may answer it)."""
    from kiln.sandbox.spec import SandboxSpec

    from .stagedbuild import closure_parts

    build_dir = tmp / "build"
    scratch = tmp / "store"
    if not dirs_made:
        for d in (build_dir, scratch):
            plain_dir(d, 0o755)
    walked, from_pending = closure_parts(store, input_paths(drv, get_drv), pending)
    closure = walked + from_pending
    # (``walked`` the store's walk has just found valid, and the build's temp roots keep
    # them; a pending output may have been dropped since.) Pending first: the committer
    # inserts a row before it forgets the pending entry
    missing = [
        p
        for p in from_pending
        if not ((pending is not None and pending.get(p) is not None) or store.is_valid(p))
    ]
    if missing:
        raise StoreError(f"inputs of {drv.name} are not valid: {', '.join(missing[:5])}")
    rootfs = rootfs_of(drv, get_drv)
    env = drv.env_map

    def source(p: str) -> str:
        real = store.real_path(p)
        if vary is not None and vary.reorder_dirents:
            # through the rebuild's reordering view of the store dir (``vary.reordered``):
            # an input's directory order is the store's file system's, so it is varied too
            from .vary import inputs_view

            return str(inputs_view(tmp) / real.name)
        return str(real)

    ro = [(source(p), p) for p in closure]
    if vary is not None and vary.faketime:
        from .vary import FAKETIME_IN_SANDBOX, faketime_env

        env = {**env, **faketime_env()}
        ro.append((vary.faketime, FAKETIME_IN_SANDBOX))
    spec = SandboxSpec(
        argv=(drv.builder, *drv.args),
        build_dir=str(build_dir),
        env=env,
        rw_mounts=((str(scratch), drv.store_dir),),
        ro_mounts=tuple(ro),
        rootfs=source(rootfs) if rootfs else None,
        cores=(vary.cores if vary and vary.cores else None) or opts.cores or os.cpu_count() or 1,
        umask=vary.umask if vary and vary.umask is not None else 0o022,
        cpus=vary.cpus if vary else None,  # (None: every CPU, as every ordinary build)
        timeout=opts.timeout,
        max_silent=opts.max_silent,
        max_log_bytes=opts.max_log_bytes,
        outputs=tuple(o.path for _, o in drv.outputs),
        cacheable=not rerun,
    )
    return spec, scratch, closure
