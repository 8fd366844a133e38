"""When an uploaded attestation may take the place of a registry's stored one.

``attest_transfer.admit`` first checks an upload's shape, subject and signer
(``check_envelope``: a ``--trusted-key`` or an ``--attester-key``; a VSA by the key its
kind names). These rules decide the rest; each protects a stored statement from
someone who holds a write token and *some* key the registry knows:

- **No signed time from the future** (``future_problem``). A statement whose signed time
  (provenance ``finishedOn``, VSA ``timeVerified``) is more than ``CLOCK_SKEW`` ahead of
  the registry's clock is refused (400): dated 2099, it would fail ``kiln verify``'s
  ``age`` check and, by the age rule below, lock its kind against every genuine newer
  statement for decades. A stored statement already so dated (admitted before this
  rule, or written by hand) pins nothing: its time is not believed.
- **Signed time only moves forward** (``replaces``): a statement replaces the stored one
  of its kind only if its signed time is not older, so nobody can re-upload a signer's
  genuine older verdict over its newer one (a rebuilder's old PASSED over its FAILED).
  SBOMs carry no time, so for them only the next rule protects.
- **A provenance or SBOM keeps its signer** (``signer_problem``; any kind but a VSA's).
  Attester keys exist for rebuilders, whose VSAs are filed under their own key's kind;
  nothing tied the ``provenance`` and ``sbom`` kinds to a key, so any attester could
  overwrite the builder's. Who may upload one (403 otherwise; "signed" counts only valid
  signatures by keys this registry knows):

  ====================================  ==============================================
  the upload is signed by               it is admitted
  ====================================  ==============================================
  a builder (a trusted key), whoever    always; over a stored one no builder signed
  else signed it too                    whatever their times (an attester cannot pin
                                        its provenance ahead of the builder's by
                                        dating it a few minutes on), as a store
                                        fetching attestations lets a local one that no
                                        trusted key signed give way (``attest_fetch``)
  exactly one attester key, A           where none is stored, or over one that A
                                        alone signed (the time rule decides)
  several attester keys                 never
  ====================================  ==============================================

  So a stored one a builder signed gives way only to a builder's, and one A alone signed
  only to A's or a builder's; one that several attesters or no key known here signed
  (stored before these rules, or by hand) only to a builder's. Why an attester's upload
  carries exactly one known signer: anyone holding a statement's payload (public once
  published, here or at another registry or a mirror) can add a signature over it, so a
  co-signature says nothing about who filed it. Counting every signer as one that may
  replace it let attester B co-sign attester A's statement, file it (first, before A's
  reached this registry, or over A's), and then replace it with B's alone. With one
  signer, the stored statement names the one attester that may replace it.

The caller that owns the directory (``file://`` clients: ``trusted`` is None) gets the
time rules only: it has no keys to judge signers by.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from datetime import datetime

from kiln.store.dsse import Envelope, signers
from kiln.store.errors import FormatError
from kiln.store.intoto import parse_statement, statement_time
from kiln.store.policyeval import CLOCK_SKEW
from kiln.store.signing import PublicKey


def signer_bound(kind: str) -> bool:
    """Whether only its signer or a trusted key may replace the stored ``kind``: every
    kind but ``vsa-<keyid16>``, whose name already ties it to its one signer (and a kind
    kiln does not read is still someone's statement)."""
    return not kind.startswith("vsa-")


def _time(data: bytes) -> datetime | None:
    """The signed time of envelope ``data``; ``FormatError`` if it is not a statement."""
    return statement_time(parse_statement(Envelope.loads(data).payload))


def _when(t: datetime) -> str:
    return f"{t:%Y-%m-%dT%H:%M:%SZ}"


def future_problem(data: bytes, kind: str, now: datetime) -> str | None:
    """Why the ``kind`` envelope ``data`` may not be admitted at ``now`` for its signed
    time (None: it may): the time is more than ``CLOCK_SKEW`` ahead of ``now``."""
    try:
        t = _time(data)
    except FormatError as e:
        return f"{kind}: {e}"
    if t is not None and t > now + CLOCK_SKEW:
        return (
            f"the {kind} attestation's signed time {_when(t)} is more than "
            f"{int(CLOCK_SKEW.total_seconds() // 60)} minutes ahead of this registry's clock ({_when(now)}); "
            "expected a time no later than that"
        )
    return None


def replaces(old: bytes | None, new: bytes, kind: str, *, now: datetime | None = None) -> str | None:
    """Why envelope ``new`` may not replace ``old`` as the ``kind`` attestation (None: it
    may): its signed time is older than ``old``'s, or it has none where ``old`` has one.
    An ``old`` that does not parse may be replaced, and so, given ``now``, may one whose
    time is more than ``CLOCK_SKEW`` after ``now`` (a future time is no claim to keep)."""
    if old is None:
        return None
    try:
        t_old = _time(old)
    except FormatError:
        return None
    if t_old is not None and now is not None and t_old > now + CLOCK_SKEW:
        return None
    try:
        t_new = _time(new)
    except FormatError as e:
        return f"{kind}: {e}"
    if t_old is not None and (t_new is None or t_new < t_old):
        when = "no time" if t_new is None else _when(t_new)
        return f"refusing to replace the stored {kind} attestation, made {_when(t_old)}, with an older one ({when})"
    return None


def _signed_by(data: bytes, keys: Sequence[PublicKey]) -> set[bytes]:
    """The raw keys among ``keys`` that validly signed envelope ``data`` (``FormatError``
    if it is not an envelope)."""
    env = Envelope.loads(data)
    labelled = {f"{i}": k.key for i, k in enumerate(keys)}
    return {labelled[label] for label in signers(env, labelled)}


def _names(raw: set[bytes], keys: Sequence[PublicKey]) -> str:
    names = sorted({k.name for k in keys if k.key in raw})
    return ", ".join(repr(n) for n in names) or "no key this registry knows"


def signer_problem(
    old: bytes | None, new: bytes, kind: str, trusted: Sequence[PublicKey], attesters: Sequence[PublicKey]
) -> tuple[str | None, bool]:
    """``(why new may not be stored as the kind attestation in place of old, whether their
    times still matter)`` for a ``signer_bound`` kind (``old`` None: none is stored); see
    the module docstring's table. ``(None, False)``: a trusted key's statement over one
    no trusted key signed, which replaces it whatever the times."""
    known = [*trusted, *attesters]
    old_by: set[bytes] | None = None  # (None: nothing stored to protect)
    if old is not None:
        with suppress(FormatError):  # (not an envelope: ``replaces`` lets anything replace it)
            old_by = _signed_by(old, known)
    new_by = _signed_by(new, known)  # (parsed already by ``check_envelope``)
    builders = {k.key for k in trusted}
    if new_by & builders:
        return None, bool(old_by and old_by & builders)
    if len(new_by) != 1:
        # a co-signer could later claim the statement as its own (module docstring)
        added = new_by - old_by if old_by else set()
        adds = f" (it adds {_names(added, known)} to the stored one's signers)" if added else ""
        return (
            f"refusing the {kind} attestation signed by {_names(new_by, known)}{adds}: without a "
            f"--trusted-key's signature a {kind} must be signed by exactly one key this registry knows, "
            "the one attester that may later replace it",
            True,
        )
    if old_by is None or new_by == old_by:
        return None, True  # the first, or its one attester's own: the time rule decides
    return (
        f"refusing to replace the stored {kind} attestation, signed by {_names(old_by, known)}, with one "
        f"signed only by {_names(new_by, known)}: a stored {kind} is replaced only by a --trusted-key's, "
        "or, if no --trusted-key signed it, by the one key that alone signed it "
        "(--attester-key is for rebuilders' VSAs)",
        True,
    )


def may_replace(
    old: bytes | None,
    new: bytes,
    kind: str,
    *,
    trusted: Sequence[PublicKey] | None,
    attesters: Sequence[PublicKey],
    now: datetime,
) -> tuple[int, str] | None:
    """None if envelope ``new`` (already admitted by ``check_envelope``) may be stored as
    the ``kind`` attestation in place of ``old`` at ``now``; else ``(HTTP status, why
    not)``. ``trusted`` None: the caller owns the directory, and only times are judged."""
    times = True
    if trusted is not None and signer_bound(kind):  # (even where none is stored: see the table)
        why, times = signer_problem(old, new, kind, trusted, attesters)
        if why is not None:
            return 403, why
    why = replaces(old, new, kind, now=now) if times else None
    return (409, why) if why is not None else None
