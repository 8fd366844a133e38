"""What ``kiln store verify`` prints: a line per problem (and its repair) on stderr and a
one-line summary on stdout, or with ``--json`` one document (``jsonout``); the exit
status is 0 only when nothing is (still) wrong (``VerifyReport.ok``).

The summary never lets "0 problems" overstate the keys: with signatures checked, the
paths whose content proved their path (``VerifyReport.ca_proved``) are counted apart.
"""

from __future__ import annotations

import sys

from kiln.store.verify import VerifyReport

from .jsonout import emit


def show(r: VerifyReport, *, sigs_checked: bool, repair: bool, as_json: bool) -> int:
    """Print ``r`` (module docstring); return the exit status."""
    if as_json:
        doc = {
            "checked": r.checked,
            "contentProved": r.ca_proved,
            "problems": [
                {"path": p.path, "kind": p.kind, "detail": p.detail, "repaired": p.repaired}
                for p in r.problems
            ],
            "quarantined": list(r.quarantined),
            "incomplete": list(r.incomplete),
            "strayTrees": list(r.stray_trees),
            "strayObjects": list(r.stray_objects),
        }
        emit(r.ok, doc, sort_keys=False)
    else:
        for p in r.problems:
            print(f"{p.path}: {p.kind}: {p.detail}", file=sys.stderr)
            if p.repaired:
                print(f"  repaired: {p.repaired}", file=sys.stderr)
        if r.stray_trees or r.stray_objects:
            print(
                f"note: {len(r.stray_trees)} unregistered tree(s) and {len(r.stray_objects)} unused object(s) "
                "(removed by 'kiln store gc')",
                file=sys.stderr,
            )
        bad = sum(1 for p in r.problems if not p.repaired)
        gone = set(r.quarantined)
        summary = f"checked {r.checked} paths: {bad} problem(s)"
        if repair:
            summary += f", {sum(1 for p in r.problems if p.repaired and p.path not in gone)} repaired"
        if r.quarantined:
            # a quarantine is no clean repair: the path is gone, and its referrers broken
            summary += (
                f"; {len(r.quarantined)} path(s) quarantined (with their "
                f"{sum(1 for p in r.problems if p.path in gone)} problem(s)), "
                f"{len(r.incomplete)} referrer(s) now incomplete"
            )
        if sigs_checked and r.ca_proved:
            # the keys vouch for fewer paths than were checked: say which proved themselves
            summary += (
                f" ({r.ca_proved} content-addressed: their content proves the path, no signature needed)"
            )
        print(summary)
    return 0 if r.ok else 1
