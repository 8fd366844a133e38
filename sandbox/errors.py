"""Exceptions raised by kiln.sandbox.

kiln.sandbox imports nothing else of kiln, so these do not derive from
``kiln.store.errors.KilnError``; instead they carry ``kiln_user_error = True``, which the
CLI treats the same way: the message is printed as-is, without a traceback.
"""

from __future__ import annotations


class SandboxError(Exception):
    """A sandbox could not be set up for this build (bad spec, missing host path...)."""

    kiln_user_error = True


class SandboxUnavailable(SandboxError):
    """No working sandbox on this machine: kiln refuses to build (there is no unsandboxed fallback)."""

    kiln_user_error = True
