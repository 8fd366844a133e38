"""What ``kiln build`` says of requested outputs that were valid already.

Such an output is not built again (as Nix), so a ``--sign-key``/``--signer-cmd`` given
for this build does not sign it, and its provenance is the one written when it was built
(``--require-clean`` then vouches for nothing of this commit). Both passed silently,
exit 0, and a release engineer shipped a path signed only by a development key. Now a
warning names the outputs and what to do; the exit status is unchanged (the outputs are
what was asked for: ``kiln store sign`` signs them, a fresh store rebuilds them)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.store.localstore import LocalStore
    from kiln.store.signing import PublicKey


def _build_key(args: argparse.Namespace) -> PublicKey | None:
    """The public key of the signing key given for this build (None: the store's own)."""
    from kiln.store import keyfiles

    from .common import load_trusted_key

    if args.signer_cmd and args.signer_key:
        return load_trusted_key(args.signer_key)
    path = args.sign_key or os.environ.get("KILN_SIGN_KEY")
    return keyfiles.load_secret_key(path).public() if path else None


def say_valid_before(store: LocalStore, valid_before: list[str], args: argparse.Namespace) -> None:
    """Warn (stderr) about the outputs of ``valid_before`` (valid when the build started)
    that this build's explicit key did not sign, or, with ``--require-clean``, about all of
    them (their provenance is older than this commit)."""
    if not valid_before or args.check or args.rounds > 1:
        return
    key = _build_key(args)
    if key is not None:
        _say_unsigned(store, valid_before, key)
    if args.require_clean:
        print(
            f"warning: --require-clean: {len(valid_before)} output(s) were valid already: their "
            "provenance is the one written when they were built, which may name another commit "
            "(kiln verify PATH shows it)",
            file=sys.stderr,
        )


def _say_unsigned(store: LocalStore, valid_before: list[str], key: PublicKey) -> None:
    """Warn about the outputs of ``valid_before`` that ``key`` did not sign."""
    from kiln.store.signing import valid_signers

    unsigned = []
    for p in valid_before:
        info = store.query(p)
        if info is not None and not valid_signers(info, [key]):
            unsigned.append(p)
    if not unsigned:
        return
    shown = " ".join(unsigned[:3]) + (f" (and {len(unsigned) - 3} more)" if len(unsigned) > 3 else "")
    print(
        f"warning: {len(unsigned)} output(s) were valid already, so this build made none of them and "
        f"did not sign them with {key.name}: {shown}; sign them with kiln store sign --key FILE PATH..., "
        "or build in a fresh store for provenance made by this key",
        file=sys.stderr,
    )
