"""Where kiln keeps its state when no ``--store`` is given: one rule for the command line
(``kiln.common.default_home_dir``) and for the parts of the store and registry that look
for kiln's own files there (``registry.attest_fetch``'s own keys).

The rule: ``KILN_HOME``; else ``$XDG_DATA_HOME/kiln``; else ``$HOME/.local/share/kiln``.
As the XDG Base Directory spec says, an ``XDG_DATA_HOME`` that is empty or not absolute
is ignored (the spec calls a relative one invalid). ``HOME`` must be absolute: an empty
or relative one is an error rather than a store under the current directory (``HOME=``
gave ``./.local/share/kiln``); only an unset ``HOME`` falls back to the user's passwd
entry, as a shell's ``~`` does. Finding the location creates nothing: whether a command
may create the store there is the command's decision (read-only ones never do).
"""

from __future__ import annotations

import os

from .errors import KilnError

_WHAT_TO_DO = "set KILN_HOME, or an absolute HOME, or pass --store"


def kiln_home_dir() -> str:
    """``KILN_HOME``, else ``$XDG_DATA_HOME/kiln`` (when absolute), else
    ``$HOME/.local/share/kiln``; ``KilnError`` when no location can be determined (no
    usable ``HOME``)."""
    env = os.environ.get("KILN_HOME")
    if env:
        return env
    xdg = os.environ.get("XDG_DATA_HOME", "")
    if os.path.isabs(xdg):  # (empty or relative: ignored, as the XDG spec says)
        return os.path.join(xdg, "kiln")
    home = os.environ.get("HOME")
    if home is not None:  # (``expanduser`` makes an empty HOME "/")
        _check_absolute(home, "HOME")
    home = os.path.expanduser("~")  # HOME, else the passwd entry's home directory
    if home.startswith("~"):  # no HOME and no passwd entry: never fall back to ./~
        raise KilnError(f"cannot determine the home directory: {_WHAT_TO_DO}")
    _check_absolute(home, "the passwd entry's home directory")
    return os.path.join(home, ".local", "share", "kiln")


def _check_absolute(home: str, source: str) -> None:
    if not os.path.isabs(home):
        why = f"{source} is empty" if not home else f"{source} is not an absolute path ({home!r})"
        raise KilnError(f"cannot determine where the kiln store is: {why}; {_WHAT_TO_DO}")
