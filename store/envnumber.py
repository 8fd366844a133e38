"""Limits a user may raise with an environment variable (``KILN_FETCH_MAX_SIZE``,
``KILN_GIT_MAX_*``, ``KILN_UNPACK_MAX_*``): one rule for reading them.

An unset or empty variable means the default; anything but ASCII decimal digits (at
most ``MAX_DIGITS`` of them) is refused with the error type of the caller's domain,
naming the variable and what was found, rather than ignored (a typo must not silently
keep or lift a limit).
"""

from __future__ import annotations

import os

from .errors import KilnError

#: the most digits accepted: 20 digits exceed any count or size that means something
#: (2**64 has 20), and keep ``int()`` far from its limit on digit strings (4300)
MAX_DIGITS = 20

#: the most of a refused value echoed in the error: enough to recognise it
_SHOWN = 40


def whole_number(var: str, default: int, error: type[KilnError], what: str = "a whole number") -> int:
    """``$var`` as a non-negative integer, ``default`` if unset or empty; ``error`` (saying
    it must be ``what``, and showing at most ``_SHOWN`` characters of what was found) if
    it is anything but 1 to ``MAX_DIGITS`` ASCII digits. ``str.isdigit`` would not do: it
    accepts other scripts' digits (``int`` reads "١٢" as 12) and superscripts (which
    ``int`` refuses)."""
    raw = os.environ.get(var, "")
    if not raw:
        return default
    if not (len(raw) <= MAX_DIGITS and raw.isascii() and raw.isdigit()):
        shown = repr(raw) if len(raw) <= _SHOWN else f"{raw[:_SHOWN]!r}... ({len(raw)} characters)"
        bound = f" (at most {MAX_DIGITS} digits)" if len(raw) > MAX_DIGITS else ""
        raise error(f"{var} must be {what}{bound}, found {shown}")
    return int(raw)
