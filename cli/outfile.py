"""Writing a file the user named on the command line (``kiln sbom -o FILE``, ``kiln lock
-o FILE``, the policy file ``kiln key revoke`` appends to).

Invariants: a regular file is replaced atomically (a temp file in its directory,
fsynced, renamed over it), so a reader never sees half of it and a crash leaves the old
one; a symbolic link keeps being a link — the file it points to is what is replaced;
anything else that already exists there (``/dev/null``, ``/dev/stdout``, a FIFO) is
written into, never replaced: a rename over it would put a regular file where a device
was (as root, ``-o /dev/null`` replaced the machine's ``/dev/null``). A directory is
refused, naming it.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from kiln.store.errors import KilnError
from kiln.store.sigshield import shielded


def write_output(path: str | os.PathLike[str], text: str, mode: int | None = 0o644) -> None:
    """Write ``text`` (UTF-8) to ``path`` as the module docstring says; ``mode`` for a new
    or replaced regular file (None: keep a replaced file's mode, else 0644)."""
    target = Path(os.path.realpath(path))  # (a link: the file it points to)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise KilnError(f"{path} is a directory; name the file to write")
    if st is not None and not stat.S_ISREG(st.st_mode):
        with open(target, "w", encoding="utf-8") as f:  # a device or FIFO: written into
            f.write(text)
        return
    if mode is None:
        mode = stat.S_IMODE(st.st_mode) if st is not None else 0o644
    tmp = ""
    try:
        with shielded:  # (a signal waits for the name: the finally below removes the file)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
