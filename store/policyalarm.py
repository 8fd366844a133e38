"""The compromised-key alarm of ``policy.verify_path``.

A valid signature by a key the policy lists as compromised fails whatever it is on
(``policy`` module doc: whoever stole the key can sign anything, backdated). An alarm
that matched keys by the names signatures carry, or that ran only where the policy
trusts keys for a role, could be dodged, so here:

- a path signature (``name:base64`` in a ``Sig:`` line) is checked against each
  compromised key *by the key*: the name is not covered by the signature, so a stolen
  key signing under a trusted key's name (or any other) is still caught;
- a DSSE envelope is checked against every compromised key (keyids are only hints);
- the callers (``policyeval``) run these whether or not the policy trusts any key for
  the attestation's role.

Like every detector that fails on presence, this is an alarm, not protection: whoever
strips the signature avoids it; protection comes from the requirements.
"""

from __future__ import annotations

from . import dsse
from .errors import FormatError
from .pathinfo import PathInfo
from .policy import Policy, Revocation
from .signing import PublicKey


def compromised_path_signer(info: PathInfo, policy: Policy) -> str | None:
    """What to say when a compromised key has a valid signature on the path, whatever
    name the ``Sig:`` line gives (the name is not signed, so only the key counts), else
    ``None``."""
    bad = _compromised(policy)
    if not bad or not info.sigs:
        return None
    try:
        fp = info.fingerprint()
    except FormatError:  # no fingerprint (not sha256, no size): no signature can be valid
        return None
    for sig in info.sigs:
        name = sig.strip().partition(":")[0]
        for r in bad:
            if PublicKey(name, r.key.key).verify(fp, sig):
                alias = f" (its signature names {name!r})" if name != r.key.name else ""
                return f"path is signed by {r.describe()}{alias}"
    return None


def _compromised(policy: Policy) -> list[Revocation]:
    """The strictest revocation of every key the policy says is compromised."""
    out: dict[bytes, Revocation] = {}
    for r in policy.revoked:
        strictest = policy.revocation(r.key.key)
        if strictest is not None and strictest.compromised:
            out.setdefault(r.key.key, strictest)
    return list(out.values())


def compromised_signer(env: dsse.Envelope, policy: Policy) -> Revocation | None:
    """The revocation of a compromised key that validly signed ``env`` (DSSE keyids are
    only hints, so this tries every such key)."""
    bad = {dsse.keyid(r.key.key): r for r in _compromised(policy)}
    found = dsse.signers(env, {kid: r.key.key for kid, r in bad.items()})
    return bad[found[0]] if found else None
