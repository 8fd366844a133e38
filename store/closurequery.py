"""The infos of a whole closure in one database query (``closure_infos``).

``LocalStore.closure_with_holes`` walks the reference graph a path at a time (two
queries per path) and callers then ``query`` each member (three more): thousands of
queries for a closure of thousands, even when nothing is to be done with them (a
``kiln push`` of what the registry already has). ``closure_infos`` asks SQLite once: a
recursive common table expression collects every path reachable through ``refs`` from
the start paths, and the same statement returns each valid one's row with its
references and signatures (``json_group_array``). One statement reads one snapshot of
the database, so the result is consistent even while others register or collect paths.

The result is what the per-path calls give: the same order (``closure_with_holes``'s:
depth-first from the sorted start paths through sorted references, dependencies first),
the same holes (references of members that are not valid), and each info equal to
``db.query``'s. Invalid start paths are the caller's to report (they are left out).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator

from .hashes import Hash
from .pathinfo import PathInfo

# (the row columns are db._COLS', in that order)
_CLOSURE = """
WITH RECURSIVE c(p) AS (
    SELECT value FROM json_each(?)
    UNION
    SELECT r.reference FROM refs r JOIN c ON r.referrer = c.p
)
SELECT p.path, p.nar_hash, p.nar_size, p.file_hash, p.file_size, p.deriver, p.registration_time, p.ca,
    (SELECT json_group_array(reference)
        FROM (SELECT reference FROM refs WHERE referrer = p.path ORDER BY reference)),
    (SELECT json_group_array(sig) FROM (SELECT sig FROM sigs WHERE path = p.path ORDER BY sig))
FROM c JOIN paths p ON p.path = c.p
"""


def closure_infos(
    conn: sqlite3.Connection, starts: Iterable[str]
) -> tuple[list[str], dict[str, PathInfo], dict[str, tuple[str, ...]]]:
    """``(order, infos, holes)`` of the closure of the valid paths among ``starts``:
    ``order`` and ``holes`` as ``LocalStore.closure_with_holes`` gives them, ``infos``
    every member's ``PathInfo`` (see the module docstring). One query."""
    first = sorted(set(map(str, starts)))
    infos: dict[str, PathInfo] = {}
    for row in conn.execute(_CLOSURE, (json.dumps(first),)):
        infos[row[0]] = PathInfo(
            path=row[0],
            nar_hash=Hash.parse(row[1]),
            nar_size=row[2],
            references=tuple(json.loads(row[8])),
            deriver=row[5],
            sigs=tuple(json.loads(row[9])),
            file_hash=Hash.parse(row[3]),
            file_size=row[4],
            ca=row[7],
            registration_time=row[6] or 0,
        )
    order, holes = walk(first, lambda p: infos[p].references, infos.__contains__)
    return order, {p: infos[p] for p in order}, holes


def walk(
    starts: Iterable[str],
    references: Callable[[str], Iterable[str]],
    valid: Callable[[str], bool],
    invalid_start: Callable[[str], object] | None = None,
) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """``(order, holes)`` of the closure of ``starts``, as ``closure_with_holes`` gives
    them: depth first from the sorted start paths through each path's sorted
    ``references``, dependencies first, each path once; ``holes`` maps each reference
    that is not ``valid`` to the members that reference it. A start path that is not
    valid (and not already found as a hole) is passed to ``invalid_start`` (which may
    raise), else skipped."""
    order: list[str] = []
    holes: dict[str, set[str]] = {}
    state: dict[str, int] = {}
    for start in sorted(set(map(str, starts))):
        if start in state:
            continue
        if not valid(start):
            if invalid_start is not None:
                invalid_start(start)
            continue
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(references(start))))]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = None
            for r in it:
                if r == node:
                    continue
                if r in holes:  # (known dangling: only its referrers grow)
                    holes[r].add(node)
                elif r not in state:
                    nxt = r
                    break
            if nxt is None:
                stack.pop()
                state[node] = 2
                order.append(node)
            elif valid(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(sorted(references(nxt)))))
            else:  # a reference that is not valid: a hole, not a member
                state[nxt] = 2
                holes[nxt] = {node}
    return order, {h: tuple(sorted(holes[h])) for h in sorted(holes)}
