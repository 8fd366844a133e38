"""Signed provenance attestations for the tests of every directory that needs a store
path with one (attestation groups, store copies, substitution, the registry).

The statement's recipe, attribute and invocation fields are placeholders: no test
judges them; what a test sets is the path (its subject and NAR hash come from the
store's record of it), the signing key, the times and the parameters."""

from __future__ import annotations

import time
from typing import Any

from kiln.store import attestations, intoto
from kiln.store.dsse import Ed25519Signer, Envelope
from kiln.store.paths import StorePath


def signed_provenance(
    store: Any,
    path: str,
    sk: Any,
    *,
    finished: float | None = None,
    started: float | None = None,
    parameters: dict | None = None,
) -> Envelope:
    """A provenance of ``path`` (valid in ``store``) signed by ``sk`` (a
    ``signing.SecretKey``), finished at ``finished`` (default: now) and started at
    ``started`` (default: 5 s before)."""
    finished = time.time() if finished is None else finished
    st = intoto.provenance(
        StorePath.parse(path).base,
        store.query(path).nar_hash.hex,
        recipe_file="x.recipe",
        attribute="x",
        parameters=parameters or {},
        git_commit=None,
        git_dirty=False,
        sandbox_settings={"network": False},
        toolchain_path=None,
        resolved_dependencies=[],
        builder_version="test",
        invocation_id="inv",
        started_on=finished - 5 if started is None else started,
        finished_on=finished,
    )
    return attestations.sign(st, [Ed25519Signer(sk.key)])
