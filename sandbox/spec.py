"""What a sandboxed build run looks like, independent of how it is executed.

A ``SandboxSpec`` is a value: it names the builder argv, the environment, and which host
directories appear where inside the sandbox. It says nothing about bubblewrap, so a
remote executor (Bazel REAPI) can consume the same value.

Invariants (checked in ``__post_init__``, violations raise ``ValueError``):

* ``argv`` is non-empty; ``argv[0]`` is the builder as seen *inside* the sandbox.
* every sandbox-side path is absolute and normalised, none is ``/`` or lies under
  ``/proc``, ``/dev``, ``/etc``, ``/tmp`` or ``/build`` (those are the executor's), and
  no two mounts share a destination.
* env names are non-empty, contain no ``=`` or NUL; values contain no NUL.
* ``cores >= 1``; ``cpus`` is ``None`` (every CPU) or ``>= 1``; limits are ``None``
  (unlimited) or positive.
* every one of ``outputs`` is a normalised sandbox path strictly under a ``rw_mounts``
  destination.

The environment a build sees is exactly ``spec.env`` overlaid with ``fixed_env(spec)``:
the fixed variables always win, so a recipe cannot change e.g. ``SOURCE_DATE_EPOCH``
or ``HOME``. Nothing of the caller's environment leaks in.
"""

from __future__ import annotations

import collections
import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

#: The build directory inside the sandbox (read-write, the builder's cwd).
BUILD_TOP = "/build"
#: A HOME that does not exist, as in Nix: builds must not depend on a home directory.
HOMELESS = "/homeless-shelter"
#: 1980-01-01T00:00:00Z; the earliest date zip can store, as in Nix and Debian.
SOURCE_DATE_EPOCH = 315532800
#: Sandbox paths the executor owns; mounts may not be placed on or under them.
RESERVED = ("/proc", "/dev", "/etc", "/tmp", BUILD_TOP)

_PathLike = str | os.PathLike[str]


def _sandbox_path(p: str, what: str) -> str:
    if not p.startswith("/") or posixpath.normpath(p) != p or p.startswith("//"):
        raise ValueError(f"{what}: expected an absolute normalised sandbox path, found {p!r}")
    if p == "/":
        raise ValueError(f"{what}: cannot mount over the sandbox root")
    for r in RESERVED:
        if p == r or p.startswith(r + "/"):
            raise ValueError(f"{what}: {p!r} is reserved by the sandbox ({r})")
    return p


def _mounts(pairs: Sequence[tuple[_PathLike, str]], what: str) -> tuple[tuple[str, str], ...]:
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"{what}: expected (host_path, sandbox_path) pairs, found {pair!r}")
        host, dest = os.fspath(pair[0]), pair[1]
        if not os.path.isabs(host):
            raise ValueError(f"{what}: host path must be absolute, found {host!r}")
        out.append((host, _sandbox_path(dest, what)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """One sandboxed build run. See the module docstring for the invariants.

    ``ro_mounts`` are the input closure's store paths (host dir -> logical path; one
    that is a symlink is made as that symlink, never bind-mounted: a bind follows it),
    ``rw_mounts`` the outputs, ``rootfs`` an optional hermetic toolchain tree whose
    ``usr``, ``bin``, ``lib``, ``lib64``, ``lib32``, ``sbin`` (and ``etc/alternatives``)
    appear read-only at the same names; ``build_dir`` is bound read-write at ``/build``.
    ``timeout`` is wall-clock seconds, ``max_silent`` seconds without output,
    ``max_log_bytes`` the log size cap; ``None`` means unlimited. ``umask`` is 022 for
    builds; ``kiln build --check --vary`` rebuilds with another one to expose builds
    that depend on it. ``cpus`` is how many CPUs the build may see at most (its CPU
    affinity, hence ``nproc``: the lowest-numbered of those it would otherwise get);
    ``None``, for every build, means all the CPUs the executor's machine allows
    (``procstate``'s table). ``--check --vary`` sets 1 to expose builds whose output
    depends on the CPU count (``make -j$(nproc)``); ``cores`` (``KILN_CORES``) is
    independent of it.

    ``outputs`` are the sandbox-side paths the caller collects after the run, each under
    a ``rw_mounts`` destination (a derivation's output paths): what an executor that
    runs elsewhere must bring back (REAPI ``output_paths``); bubblewrap writes to the
    host directory itself and needs nothing. ``cacheable`` is False for a run whose
    result must neither come from an executor's cache nor go into one (a rebuild that
    checks reproducibility: REAPI ``do_not_cache`` and ``skip_cache_lookup``), since a
    cached result would compare a build with itself.
    """

    argv: tuple[str, ...]
    build_dir: str
    env: Mapping[str, str] = field(default_factory=dict)
    ro_mounts: tuple[tuple[str, str], ...] = ()
    rw_mounts: tuple[tuple[str, str], ...] = ()
    rootfs: str | None = None
    cores: int = 1
    timeout: float | None = None
    max_silent: float | None = None
    max_log_bytes: int | None = None
    network: bool = False
    uid: int = 1000
    gid: int = 1000
    hostname: str = "localhost"
    umask: int = 0o022
    cpus: int | None = None
    outputs: tuple[str, ...] = ()
    cacheable: bool = True

    def __post_init__(self) -> None:
        put = object.__setattr__
        argv = tuple(self.argv)
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError(f"argv: expected a non-empty sequence of strings, found {self.argv!r}")
        if any("\0" in a for a in argv):
            raise ValueError("argv: arguments may not contain NUL")
        put(self, "argv", argv)
        build_dir = os.fspath(self.build_dir)
        if not os.path.isabs(build_dir):
            raise ValueError(f"build_dir: expected an absolute host path, found {build_dir!r}")
        put(self, "build_dir", build_dir)
        if self.rootfs is not None:
            rootfs = os.fspath(self.rootfs)
            if not os.path.isabs(rootfs):
                raise ValueError(f"rootfs: expected an absolute host path, found {rootfs!r}")
            put(self, "rootfs", rootfs)
        env = dict(self.env)
        for k, v in env.items():
            if not isinstance(k, str) or not k or "=" in k or "\0" in k:
                raise ValueError(f"env: invalid variable name {k!r}")
            if not isinstance(v, str) or "\0" in v:
                raise ValueError(f"env: value of {k} must be a string without NUL, found {v!r}")
        put(self, "env", MappingProxyType(env))
        ro = _mounts(self.ro_mounts, "ro_mounts")
        rw = _mounts(self.rw_mounts, "rw_mounts")
        counts = collections.Counter(d for _, d in ro + rw)  # (linear: closures of thousands)
        dup = {d for d, n in counts.items() if n > 1}
        if dup:
            raise ValueError(f"mounts: destination(s) mounted twice: {sorted(dup)}")
        put(self, "ro_mounts", ro)
        put(self, "rw_mounts", rw)
        outputs = tuple(self.outputs)
        for o in outputs:
            if not isinstance(o, str) or not any(o.startswith(d + "/") for _, d in rw):
                raise ValueError(f"outputs: {o!r} is not a path under a rw_mounts destination")
            _sandbox_path(o, "outputs")
        put(self, "outputs", outputs)
        if not isinstance(self.cores, int) or self.cores < 1:
            raise ValueError(f"cores: expected an integer >= 1, found {self.cores!r}")
        if self.cpus is not None and (
            not isinstance(self.cpus, int) or isinstance(self.cpus, bool) or self.cpus < 1
        ):
            raise ValueError(f"cpus: expected an integer >= 1 or None, found {self.cpus!r}")
        for name in ("timeout", "max_silent", "max_log_bytes"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name}: expected a positive number or None, found {v!r}")
        if not isinstance(self.umask, int) or not 0 <= self.umask <= 0o777:
            raise ValueError(f"umask: expected an integer in 0..0o777, found {self.umask!r}")
        if not self.hostname or "\0" in self.hostname:
            raise ValueError(f"hostname: invalid {self.hostname!r}")


def fixed_env(spec: SandboxSpec) -> dict[str, str]:
    """The variables every build gets, overriding ``spec.env`` (see module docstring)."""
    return {
        "TZ": "UTC",
        "LC_ALL": "C.UTF-8",
        "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH),
        "HOME": HOMELESS,
        "TMPDIR": BUILD_TOP,
        "TEMP": BUILD_TOP,
        "TMP": BUILD_TOP,
        "PWD": BUILD_TOP,
        "KILN_CORES": str(spec.cores),
        "KILN_BUILD_TOP": BUILD_TOP,
        "TERM": "dumb",
    }


def build_env(spec: SandboxSpec) -> dict[str, str]:
    """The complete environment of the builder: ``spec.env`` overlaid with ``fixed_env``."""
    env = dict(spec.env)
    env.update(fixed_env(spec))
    return env
