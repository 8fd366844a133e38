"""Where kiln keeps its state when no ``--store`` is given: one rule for the command line
(``kiln.common.default_home_dir``) and for the parts of the store and registry that look
for kiln's own files there (``registry.attest_fetch``'s own keys).

The rule: ``KILN_HOME``; else ``$XDG_DATA_HOME/kiln``; else ``$HOME/.local/share/kiln``.
A relative ``KILN_HOME`` is taken against the current directory at start (``absolute``),
as the user who typed it meant it: the ``kiln`` command also puts the absolute value in
its environment (``kiln.common.run_command``), so a program it starts (``kiln run``,
``kiln shell``) that runs ``kiln`` from another directory finds the same store, not
another one (or none) named the same under that directory.
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
    """``KILN_HOME`` (made ``absolute``), else ``$XDG_DATA_HOME/kiln`` (when absolute),
    else ``$HOME/.local/share/kiln``; ``KilnError`` when no location can be determined
    (no usable ``HOME``, or a relative ``KILN_HOME`` and no current directory)."""
    env = os.environ.get("KILN_HOME")
    if env:
        return absolute(env, "KILN_HOME")
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


def absolute(path: str, what: str) -> str:
    """``path`` taken against the current directory (unchanged when absolute), with its
    ``.`` components and repeated slashes dropped; ``..`` is kept (after a symbolic link it
    is not the directory before it). ``KilnError`` naming ``what`` when the current
    directory cannot be determined (it was deleted)."""
    if os.path.isabs(path):
        return path
    try:
        cwd = os.getcwd()
    except OSError as e:
        raise KilnError(
            f"{what} is a relative path ({path!r}) and the current directory cannot be determined "
            f"({e.strerror}); use an absolute path"
        ) from None
    return os.path.join(cwd, *[p for p in path.split("/") if p not in ("", ".")])
