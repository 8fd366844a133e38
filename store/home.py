"""Where kiln keeps its state when no ``--store`` is given: one rule for the command line
(``kiln.common.default_home_dir``) and for the parts of the store and registry that look
for kiln's own files there (``registry.attest_fetch``'s own keys)."""

from __future__ import annotations

import os

from .errors import KilnError


def kiln_home_dir() -> str:
    """``KILN_HOME``, else ``$XDG_DATA_HOME/kiln``, else ``~/.local/share/kiln``;
    ``KilnError`` when there is no home directory to put it in."""
    env = os.environ.get("KILN_HOME")
    if env:
        return env
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return os.path.join(xdg, "kiln")
    home = os.path.expanduser("~")
    if home.startswith("~"):  # no $HOME and no passwd entry: never fall back to ./~
        raise KilnError("cannot determine the home directory: set KILN_HOME or HOME, or pass --store")
    return os.path.join(home, ".local", "share", "kiln")
