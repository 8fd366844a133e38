"""Whether a valid path was made in this store (Nix's ``ultimate``): the ``paths.ultimate``
column of the store database (``db``).

Why it is recorded: a signature says a key vouched for a path, not that this store made
it. After a signing key leaks, only the paths this store made itself can be re-signed with
the successor key as a matter of course (``kiln key rotate --resign``); a path that
arrived by ``kiln copy``, substitution or an upload while the leaked key was trusted may
have been made and signed by whoever holds the stolen key.

Values, set once when the row is inserted (every writer in ``registration``,
``importbatch``, ``stagedbuild`` says which):

- 1, *made here*: a build's output (``register_built``, ``stagedbuild.commit``), a path
  added from local content (``add_path``: ``kiln store add``, a recipe's sources;
  ``add_text``/``add_texts``: derivations written by evaluation);
- 0, *imported*: ``import_nar``/``import_object``/``import_objects`` (``kiln copy --to
  store``, substitution, whatever else brings a NAR or object from elsewhere);
- NULL, *unknown*: registered before kiln recorded this (the column was added to the
  database when this kiln first opened it), by an older kiln since, or while the column
  could not be added yet (``dbschema.upgrade``). Unknown counts as imported: a store cannot
  tell, after the fact, which of its old paths it built.

The flag never changes: a path imported first and then built or added again is already
valid, so it stays imported (as in Nix). ``kiln store sign`` does not change it either:
signing is a statement about trust, not about where a path was made.
"""

from __future__ import annotations

import sqlite3


def made_here(conn: sqlite3.Connection, path: str) -> bool | None:
    """True if ``path`` was made in this store, False if imported, None if unknown (or not
    a valid path)."""
    if not getattr(conn, "ultimate", True):  # (a read-only database made before the column)
        return None
    row = conn.execute("SELECT ultimate FROM paths WHERE path=?", (path,)).fetchone()
    return None if row is None or row[0] is None else bool(row[0])


def made_here_all(conn: sqlite3.Connection) -> dict[str, bool | None]:
    """Every valid path -> ``made_here`` of it (one query)."""
    if not getattr(conn, "ultimate", True):
        return {p: None for (p,) in conn.execute("SELECT path FROM paths ORDER BY path")}
    return {
        p: None if u is None else bool(u)
        for p, u in conn.execute("SELECT path, ultimate FROM paths ORDER BY path")
    }


def describe(value: bool | None) -> str:
    """How ``kiln store info`` says it."""
    if value is None:
        return (
            "unknown (registered before kiln recorded where paths come from, or by an older kiln: "
            "treated as imported)"
        )
    return "yes (built or added in this store)" if value else "no (imported: copied or substituted)"
