"""Signing by an external command, for keys held in a KMS or an HSM: no secret key
touches this machine. Beside ``dsse`` (pure: envelopes, PAE, verification), because it
runs a process; it implements ``dsse.Signer``.

The command gets kiln's environment without kiln's registry tokens: every variable whose
name starts with ``KILN_`` and holds ``TOKEN`` (``KILN_REGISTRY_TOKEN``,
``KILN_REGISTRY_FROM_TOKEN``, ``KILN_SUBSTITUTER_TOKENS``, ...) is left out
(``signer_env``). A signer needs its own credentials (a KMS's), never a registry's: a
signing service, a wrapper script or what it runs in turn must not be handed a push token.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from dataclasses import dataclass

from .dsse import b64decode, keyid, verify_raw
from .errors import FormatError, KilnError


@dataclass(frozen=True, slots=True)
class CommandSigner:
    """Signs by running ``command`` (a shell-style string): the bytes to sign go to its
    stdin, it prints the base64 signature on stdout. For KMS/HSM-held keys, so no secret
    key touches this machine. ``public_key`` is the signer's 32-byte public key; every
    returned signature is checked against it. A signature not given within ``timeout``
    seconds is an error, and the command is killed with its children (``_run``)."""

    command: str
    public_key: bytes
    timeout: float = 60.0

    def sign(self, data: bytes) -> bytes:
        argv = shlex.split(self.command)
        if not argv:
            raise KilnError("signer command is empty")
        code, out, err = _run(argv, data, self.timeout)
        if code != 0:
            text = err.decode(errors="replace").strip()[:500]
            raise KilnError(f"signer command {argv[0]!r} exited with status {code}: {text}")
        try:
            sig = b64decode(out.decode("ascii").strip())
        except (FormatError, UnicodeDecodeError):
            raise KilnError(f"signer command {argv[0]!r} did not print a base64 signature") from None
        if not verify_raw(self.public_key, data, sig):
            raise KilnError(
                f"signer command {argv[0]!r} returned a signature that does not verify under "
                f"public key {keyid(self.public_key)[:16]}... (wrong key configured?)"
            )
        return sig


def _run(argv: list[str], data: bytes, timeout: float) -> tuple[int, bytes, bytes]:
    """Run the signer in a session of its own: ``(exit status, stdout, stderr)``. A
    signer that overruns ``timeout`` is killed with everything it started (its process
    group: a wrapper script's children too, which would otherwise outlive kiln), and
    that is an error."""
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=signer_env(),
            start_new_session=True,
        )
    except OSError as e:
        raise KilnError(f"signer command {argv[0]!r} failed to run: {e}") from None
    try:
        out, err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:  # (what left the group may still hold the pipes: not waited for long)
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise KilnError(
            f"signer command {argv[0]!r} did not answer within {timeout:g} s (killed with its children)"
        ) from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc.returncode, out, err


def signer_env() -> dict[str, str]:
    """This process's environment without the registry tokens (module docstring)."""
    return {k: v for k, v in os.environ.items() if not (k.startswith("KILN_") and "TOKEN" in k)}
