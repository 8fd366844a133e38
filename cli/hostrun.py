"""Running a built package on the host with its closure at the logical store path.

The store's physical location (``KILN_HOME``) usually differs from its logical store
dir (``/kiln/store``), and binaries have the logical paths baked in. ``host_argv``
wraps a command in bubblewrap so that it sees the host as it is (every top-level host
directory bound at its own place, same user, network, /dev and /proc) plus the
closure's store paths bound read-only at their logical paths. No top-level directory is
created on the host: bwrap's own root is a tmpfs and the logical store dir is made
inside it.

When the logical store dir already *is* the physical one (a store rooted at ``/``),
the command runs directly.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from typing import TYPE_CHECKING

from kiln.sandbox.bwrapargv import input_mount
from kiln.store.errors import KilnError

if TYPE_CHECKING:
    from kiln.store.localstore import LocalStore


class RunError(KilnError):
    pass


def host_argv(
    store: LocalStore, closure: Iterable[str], argv: list[str], env_path: list[str]
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run ``argv`` on the host with ``closure`` visible."""
    env = dict(os.environ)
    env["PATH"] = ":".join([*env_path, env.get("PATH", "/usr/local/bin:/usr/bin:/bin")])
    closure = list(closure)
    if all(str(store.real_path(p)) == p for p in closure):
        return argv, env
    bwrap = shutil.which(os.environ.get("KILN_BWRAP") or "bwrap")
    if bwrap is None:
        raise RunError(
            "running a package needs bubblewrap (bwrap) to show the store at its logical path "
            f"{store.store_dir}; install it (apt-get install bubblewrap)"
        )
    top = store.store_dir.strip("/").split("/")[0]
    wrap = [bwrap, "--die-with-parent"]
    for name in sorted(os.listdir("/")):
        if name == top or name in ("proc", "dev"):
            continue
        src = "/" + name
        if os.path.islink(src):
            wrap += ["--symlink", os.readlink(src), src]
        elif os.path.isdir(src):
            wrap += ["--dev-bind", src, src]
    wrap += ["--dev-bind", "/dev", "/dev", "--proc", "/proc"]
    for p in closure:
        wrap += input_mount(str(store.real_path(p)), p)
    wrap += ["--chdir", os.getcwd(), "--", *argv]
    return wrap, env
