"""Signing by an external command, for keys held in a KMS or an HSM: no secret key
touches this machine. Beside ``dsse`` (pure: envelopes, PAE, verification), because it
runs a process; it implements ``dsse.Signer``."""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass

from .dsse import b64decode, keyid, verify_raw
from .errors import FormatError, KilnError


@dataclass(frozen=True, slots=True)
class CommandSigner:
    """Signs by running ``command`` (a shell-style string): the bytes to sign go to its
    stdin, it prints the base64 signature on stdout. For KMS/HSM-held keys, so no secret
    key touches this machine. ``public_key`` is the signer's 32-byte public key; every
    returned signature is checked against it."""

    command: str
    public_key: bytes
    timeout: float = 60.0

    def sign(self, data: bytes) -> bytes:
        argv = shlex.split(self.command)
        if not argv:
            raise KilnError("signer command is empty")
        try:
            r = subprocess.run(argv, input=data, capture_output=True, timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise KilnError(f"signer command {argv[0]!r} failed to run: {e}") from None
        if r.returncode != 0:
            err = r.stderr.decode(errors="replace").strip()[:500]
            raise KilnError(f"signer command {argv[0]!r} exited with status {r.returncode}: {err}")
        try:
            sig = b64decode(r.stdout.decode("ascii").strip())
        except (FormatError, UnicodeDecodeError):
            raise KilnError(f"signer command {argv[0]!r} did not print a base64 signature") from None
        if not verify_raw(self.public_key, data, sig):
            raise KilnError(
                f"signer command {argv[0]!r} returned a signature that does not verify under "
                f"public key {keyid(self.public_key)[:16]}... (wrong key configured?)"
            )
        return sig
