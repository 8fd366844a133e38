"""When a rebuilder dates a new verdict: never before its own stored one of the same path.

Theory of operation
-------------------
A rebuilder keeps one verdict per path under its key's kind (``vsa-<keyid16>``,
``attestations.record_vsa``), and a new verdict replaces the old one there and at every
registry it reaches. A registry takes the new one only if its signed time
(``timeVerified``) is not older than the stored one's (``registry.attest_rules.replaces``:
so nobody can replay a rebuilder's older PASSED over its newer FAILED). A rebuilder whose
clock went back (NTP stepping it, a dead RTC battery, a VM restored from a snapshot)
dated its FAILED before its earlier PASSED: the registry refused it (409) and kept serving
the PASSED, while the local store held the FAILED.

So a new verdict is dated ``max(now, stored verdict's time + 1 s)``, with a line on
stderr saying so. Only a stored verdict this very key validly signed counts (a file
someone else wrote there pins nothing). Moving the date forward rather than refusing to
sign is the fail-safe choice: a refusal leaves the old verdict standing everywhere, and a
FAILED must reach verifiers. If it was the *stored* time that was wrong (the clock ahead
back then), the new date inherits it: a registry refuses it as future (400, and ``kiln
push`` fails naming the clock), ``kiln verify`` counts a future FAILED as FAILED and
ignores a future PASSED (``policyeval``): nothing counts a verdict it should not, and the
message tells the operator which file to delete to start afresh.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kiln.store.errors import KilnError

#: how far past the stored verdict's signed time a new one is dated when the clock is behind it
STEP_S = 1


def stored_verdict_time(store: Any, path: str, public_key: bytes) -> datetime | None:
    """The signed time of the verdict about ``path`` stored under ``public_key``'s kind and
    validly signed by that key; None if there is none, it is not so signed, or it has no
    readable time."""
    from kiln.store import attestations, dsse
    from kiln.store.intoto import parse_statement, statement_time

    try:
        env = attestations.read(store, path, attestations.vsa_kind(public_key))
        if env is None or not dsse.signers(env, {"k": public_key}):
            return None
        return statement_time(parse_statement(env.payload))
    except (KilnError, OSError):
        return None


def verdict_time(store: Any, path: str, public_key: bytes, now: float, say: Callable[[str], None]) -> float:
    """The Unix time to sign a new verdict about ``path`` by ``public_key`` with: ``now``,
    or one second after the stored verdict's signed time when ``now`` (whole seconds, as
    signed) is before it, which ``say`` then reports."""
    from kiln.store import attestations

    last = stored_verdict_time(store, path, public_key)
    if last is None or math.floor(now) >= last.timestamp():
        return now
    dated = last.timestamp() + STEP_S
    f = "%Y-%m-%dT%H:%M:%SZ"
    say(
        f"this machine's clock ({datetime.fromtimestamp(now, UTC):{f}}) is behind its last verdict at "
        f"{last:{f}} about {path}; dated the new verdict {datetime.fromtimestamp(dated, UTC):{f}} so that it "
        "replaces that one here and at registries (check this machine's clock (NTP); if the last verdict's "
        f"time was the wrong one, delete its file, "
        f"{attestations.vsa_kind(public_key)}{attestations.SUFFIX} in the store's attestations/, and rebuild)"
    )
    return dated
