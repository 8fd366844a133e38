"""Clock sanity for the signed index: what a reader and a publisher refuse when a clock
is wrong (``index`` and ``publish`` call these; pure functions of the metadata and ``now``).

Expiries are the index's only notion of time, so a wrong clock used to go unnoticed:
a publisher whose clock was behind signed metadata that had already expired (readers
then refuse the registry as frozen), one whose clock was ahead signed metadata valid
long past its lifetime (a copy captured then stays acceptable for months), and a reader
whose clock was behind (1970 after a dead RTC) accepted metadata that had long expired.

What holds, and what the checks rest on:

- a root expires exactly ``indexbuild.ROOT_DAYS`` after it was signed (``make_root`` for
  root v1 and ``rotate-root``, ``publish.renew_root``: every root kiln signs), so
  ``root_signed_at`` is its signing time by the signer's clock;
- nothing kiln signs is valid longer than ``longest_lifetime(role)`` (the timestamp at
  most ``MAX_TIMESTAMP_HOURS``, index and snapshot ``max(INDEX_DAYS*24, 2*timestamp
  hours)``, the root ``ROOT_DAYS``): an expiry further ahead than that from now was
  signed by a clock ahead of this one;
- the timestamps kiln signs carry ``signed_at`` (the signer's clock; readers ignore it).

Reader (``reader_clock_behind``, ``too_far_ahead``): a clock before the signing time of
the root it already trusts is behind (time does not go back); an expiry beyond the
longest lifetime from now is refused, the clock of the publisher or of this machine
being wrong. Publisher (``publisher_problem``): it refuses to sign when its clock is
before the root's signing time or before the current timestamp's ``signed_at`` (the
clock went back, or another publisher's is ahead), or when the current timestamp
expires further ahead than any publisher signs. A timestamp signed under an older root
is not held against the clock: ``kiln registry rotate-root`` (with a correct clock) is
the way out after a publisher whose clock was ahead signed the current root.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from .index import EXPIRY_FORMAT, parse_expiry

#: how far two honest clocks may disagree. NTP keeps machines within seconds; one
#: without NTP drifts seconds a day, and a clock an hour off (a daylight-saving or
#: time-zone slip) is common and harmless here: every lifetime is at least an hour and
#: the bounds checked are days to a year. A wrong clock that matters (a dead RTC in
#: 1970, a VM restored days back, a host a year ahead) is far beyond it.
SKEW = dt.timedelta(hours=1)


def _fmt(t: dt.datetime) -> str:
    return t.strftime(EXPIRY_FORMAT)


def longest_lifetime(role: str) -> dt.timedelta:
    """The longest validity any kiln publisher signs for ``role`` (module docstring)."""
    from . import indexbuild as b

    if role == "root":
        return dt.timedelta(days=b.ROOT_DAYS)
    if role == "timestamp":
        return dt.timedelta(hours=b.MAX_TIMESTAMP_HOURS)
    return dt.timedelta(hours=max(b.INDEX_DAYS * 24, 2 * b.MAX_TIMESTAMP_HOURS))


def root_signed_at(root: dict[str, Any]) -> dt.datetime | None:
    """When ``root`` was signed (its expiry less ``ROOT_DAYS``); None if unreadable."""
    try:
        return parse_expiry(root["expires"]) - longest_lifetime("root")
    except (KeyError, TypeError, ValueError):
        return None


def reader_clock_behind(root: dict[str, Any], now: dt.datetime) -> str | None:
    """Why a reader trusting ``root`` must not believe its clock ``now`` (before the
    root was signed), or None."""
    signed = root_signed_at(root)
    if signed is None or now >= signed - SKEW:
        return None
    return (
        f"this machine's clock is behind (it reads {_fmt(now)}, but the index root v{root.get('version')} "
        f"it trusts was signed at {_fmt(signed)}): set it (NTP) and try again"
    )


def too_far_ahead(signed: dict[str, Any], role: str, now: dt.datetime, what: str) -> str | None:
    """Why ``signed`` (the file ``what`` of ``role``), not expired at ``now``, is valid
    longer than any publisher signs, or None."""
    try:
        exp = parse_expiry(signed["expires"])
    except (KeyError, TypeError, ValueError):
        return None  # (the freeze check says so)
    limit = now + longest_lifetime(role) + SKEW
    if exp <= limit:
        return None
    return (
        f"{what} expires at {signed['expires']}, further ahead than any publisher signs "
        f"(now {_fmt(now)}; a {role} lives at most {longest_lifetime(role) / dt.timedelta(hours=1):g} h): "
        "the publisher's clock "
        "is ahead, or this machine's is behind"
    )


def publisher_problem(
    root: dict[str, Any] | None, timestamp: dict[str, Any] | None, now: dt.datetime
) -> str | None:
    """Why a publisher whose clock reads ``now`` must not sign over the current
    ``root`` and ``timestamp`` (either None when there is none yet), or None."""
    fix = "set it (NTP) and try again; nothing was signed"
    if root is not None:
        signed = root_signed_at(root)
        if signed is not None and now < signed - SKEW:
            return (
                f"this machine's clock reads {_fmt(now)}, before the index root v{root.get('version')} "
                f"was signed ({_fmt(signed)}, {longest_lifetime('root').days} days before it expires "
                f"at {root.get('expires')}): the clock is behind: {fix} (if it is right, the root was "
                "signed by a clock ahead: `kiln registry rotate-root` signs a new one)"
            )
    if timestamp is None or (root is not None and timestamp.get("root_version", 1) != root.get("version")):
        return None
    try:
        at = parse_expiry(timestamp["signed_at"]) if "signed_at" in timestamp else None
    except (TypeError, ValueError):
        at = None
    if at is not None and now < at - SKEW:
        return (
            f"this machine's clock reads {_fmt(now)}, before the current index timestamp "
            f"(version {timestamp.get('version')}) was signed ({_fmt(at)}): the clock went back, "
            f"or another publisher's is ahead: {fix}"
        )
    try:
        exp = parse_expiry(timestamp["expires"])
    except (KeyError, TypeError, ValueError):
        return None  # (re-signing replaces it)
    if exp > now + longest_lifetime("timestamp") + SKEW:
        return (
            f"the current index timestamp (version {timestamp.get('version')}) expires at "
            f"{timestamp['expires']}, further ahead than any publisher signs from now ({_fmt(now)}): "
            f"this machine's clock went back, or another publisher's is ahead: {fix}"
        )
    return None
