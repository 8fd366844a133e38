"""What a registry directory holds that ``kiln serve`` does not serve: narinfos of a cache
Nix wrote with another compression than zstd (``nix copy --to file://DIR`` compresses
with xz unless told otherwise). The server answers 404 for each (``backends.DirSource``
with ``zstd_only``); this module counts them once at start-up, for the one warning
``kiln serve`` prints (``unserved_note``).

Cheap for a registry kiln wrote: the narinfos are read only when ``nar/`` holds a file
not named ``.nar.zst``.
"""

from __future__ import annotations

from . import layout
from .backends import DirSource, Source
from .storage import Storage


def unserved_counts(storage: Storage) -> dict[str, int]:
    """``{compression: count}`` of the narinfos in ``storage`` that are not zstd ({} when
    every file under ``nar/`` is a ``.nar.zst``: then none can be)."""
    if all(k.endswith(".nar.zst") for k in storage.list("nar")):
        return {}
    out: dict[str, int] = {}
    for k in storage.list():
        if k.endswith(".narinfo"):
            c = layout.narinfo_compression(storage.read(k) or b"")
            if c != "zstd":
                out[c] = out.get(c, 0) + 1
    return out


def unserved_note(source: Source) -> str | None:
    """What ``kiln serve`` says once at start-up of a directory holding narinfos it does not
    serve, or None when there are none (or ``source`` is not a directory)."""
    if not isinstance(source, DirSource):
        return None
    counts = unserved_counts(source.storage)
    if not counts:
        return None
    n = sum(counts.values())
    how = ", ".join(f"{c} {k}" for k, c in sorted(counts.items()))
    return (
        f"kiln serve: warning: {n} narinfo(s) in {source.storage.url} are not zstd ({how}); they are not "
        "served (404, so Nix tries its next substituter): kiln serves zstd NARs only; "
        f"{layout.ZSTD_HINT} and serve that, or push the paths to this server with nix copy --to "
        "'http://...?compression=zstd' (a zstd narinfo replaces one not served)"
    )
