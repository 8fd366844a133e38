"""Limits a user may raise with an environment variable (``KILN_FETCH_MAX_SIZE``,
``KILN_GIT_MAX_*``, ``KILN_UNPACK_MAX_*``): one rule for reading them.

An unset or empty variable means the default; anything but decimal digits is refused
with the error type of the caller's domain, naming the variable and what was found,
rather than ignored (a typo must not silently keep or lift a limit).
"""

from __future__ import annotations

import os

from .errors import KilnError


def whole_number(var: str, default: int, error: type[KilnError], what: str = "a whole number") -> int:
    """``$var`` as a non-negative integer, ``default`` if unset or empty; ``error`` (saying
    it must be ``what``) if it is anything else."""
    raw = os.environ.get(var, "")
    if not raw:
        return default
    if not raw.isdigit():
        raise error(f"{var} must be {what}, found {raw!r}")
    return int(raw)
