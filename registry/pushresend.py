"""What in a narinfo the registry already publishes makes ``kiln push`` send it again
(``push.push_prepared``'s ``resign``): a signature worth merging (``new_sigs``) or a
``CA:`` other than the store's (``other_ca``). Pure text checks, no I/O; anything else
would be sent on every push and never settle."""

from __future__ import annotations

import re


def new_sigs(text: str, sigs: tuple[str, ...], signer: str | None) -> bool:
    """Whether one of ``sigs`` is missing from the published narinfo ``text`` and is
    worth sending: by ``signer`` (this push's key), or by a key of the same family as a
    signature already there (``NAME-2`` where ``NAME-1`` signed: ``kiln key rotate``).
    Others (a local build key, a signature the registry never had) would be sent on
    every push and never merged. Unparsable text: nothing is sent."""
    published = {line[5:].strip() for line in text.splitlines() if line.startswith("Sig: ")}
    families = {_family(s.partition(":")[0]) for s in published}
    for s in sigs:
        name = s.partition(":")[0]
        if s not in published and (name == signer or _family(name) in families):
            return True
    return False


def other_ca(text: str, ca: str | None) -> bool:
    """Whether the published narinfo ``text`` states another ``CA:`` than ``ca`` (the
    store's, checked when it came in): the narinfo is sent again and the registry
    replaces a false one (``admitca``). A store without a CA has nothing to correct
    with (the registry keeps a true one: sending it again would never settle). Every
    ``CA:`` line counts: a second one, even beside ours, makes the narinfo unparseable,
    which the registry repairs the same way."""
    if not ca:
        return False
    published = [line[4:].strip() for line in text.splitlines() if line.startswith("CA: ")]
    return published != [ca]


def _family(key_name: str) -> str:
    """A key name without its rotation number (``cache-2`` -> ``cache``)."""
    return re.sub(r"-\d+\Z", "", key_name)
