"""Which kiln this is: ``full_version()`` is the release (``kiln.__version__``) plus a
digest of the code that runs, ``0.1.0+src.<16 hex>``.

Why: the release number has not moved while the code has (it was "0.1.0" from the first
commit on), so a provenance statement's ``builder.version``, a rebuilder's verdict and an
SBOM's tool version could not tell a build made before a sandbox fix from one made after
it. The digest covers every source file of the five packages (``kiln``, ``kiln.store``,
``kiln.lang``, ``kiln.sandbox``, ``kiln.registry``: ``.py``, ``.lark`` and data files, by
relative name and content), so two installs of the same code agree wherever they live,
and any edit changes it. Found without importing the packages (``kiln.registry`` pulls in
aiohttp); computed once per process (~160 files, a few milliseconds), when first asked.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os

from . import __version__

#: the packages whose code decides what kiln does
PACKAGES = ("kiln", "kiln.store", "kiln.lang", "kiln.sandbox", "kiln.registry")
_SUFFIXES = (".py", ".lark", ".txt")


@functools.cache
def source_digest() -> str:
    """sha256 (hex) over every source file of ``PACKAGES``: for each, in order of
    package then relative name, ``<package>/<name>\\0<size>\\0<bytes>``."""
    h = hashlib.sha256()
    for pkg in PACKAGES:
        spec = importlib.util.find_spec(pkg)
        dirs = list(spec.submodule_search_locations or []) if spec is not None else []
        for d in dirs[:1]:
            names = sorted(n for n in os.listdir(d) if n.endswith(_SUFFIXES))
            for n in names:
                with open(os.path.join(d, n), "rb") as f:
                    data = f.read()
                h.update(f"{pkg}/{n}\0{len(data)}\0".encode())
                h.update(data)
    return h.hexdigest()


def full_version() -> str:
    """``<release>+src.<first 16 hex of source_digest()>``."""
    return f"{__version__}+src.{source_digest()[:16]}"
