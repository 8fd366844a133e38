"""Closure discovery in one round trip: ``GET narinfo-closure/<h>[,<h>...]``.

Walking ``References`` with one batched narinfo query per dependency level costs a round
trip per level: a chain of N paths took N. A kiln server walks the graph itself
(``closure_answer``): the answer holds the narinfos of the closure of the asked paths,
breadth-first, as far as ``MAX_ENTRIES`` narinfos and ``MAX_BYTES`` bytes go, with
``complete`` saying whether that is all of it. It reads only what it serves anyway (the
source's narinfos) and is bounded like a ``narinfo-batch`` answer.

To a client the answer is a **hint**, never a source of trust: ``Client.narinfo_closure``
returns it (``{}`` from a registry without the endpoint: a static server's 404), and the
callers (``copy``) use it only to ask for the whole closure at once. Every narinfo they
use is checked as any other (``verify.check_narinfo``, its hash part the one asked for),
and whatever the hint leaves out or gets wrong (a partial answer, a path that is not
there) is found by the per-level walk that follows, which then has nothing left to ask in
the common case. ``hinted_closure`` walks a hint on the client side; paths it names are
well-formed store paths, nothing more.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from kiln.store.errors import FormatError
from kiln.store.paths import StorePath

from .layout import is_hash_part

#: an answer holds at most this many narinfos ...
MAX_ENTRIES = 10_000
#: ... and at most this many bytes of them as JSON (the client reads at most 64 MiB)
MAX_BYTES = 16 << 20


def references_of(text: str) -> list[str]:
    """The base names on the ``References:`` line of a narinfo (unchecked; [] if none)."""
    start = text.find("\nReferences:")
    if start < 0:
        return []
    end = text.find("\n", start + 1)
    return text[start + len("\nReferences:") : end if end >= 0 else None].split()


def closure_answer(narinfo: Callable[[str], bytes | None], roots: list[str]) -> bytes:
    """The JSON answer ``{"narinfos": {hash part: text}, "complete": bool}`` for the
    closure of ``roots`` (hash parts), breadth-first through ``narinfo(hash part)``
    (see the module docstring). A path not served is left out (its referrer's answer is
    then incomplete in a way the client finds by itself)."""
    found: dict[str, str] = {}
    seen = set(roots)
    queue = list(dict.fromkeys(roots))
    size = 0
    complete = True
    for h in queue:  # (grows while it is walked)
        body = narinfo(h)
        if body is None:
            continue
        text = body.decode(errors="replace")  # junk on disk: the client rejects it
        # (measured as sent: JSON escapes make junk up to 6 times its size on disk)
        n = len(json.dumps(text)) + 37  # ("<hash part>":...,)
        if len(found) >= MAX_ENTRIES or size + n > MAX_BYTES:
            complete = False
            break
        found[h] = text
        size += n
        for base in references_of(text):
            r = base[:32]
            if r not in seen and is_hash_part(r):
                seen.add(r)
                queue.append(r)
    return json.dumps({"narinfos": found, "complete": complete}, separators=(",", ":")).encode()


def hinted_closure(starts: Iterable[str], hint: dict[str, str], store_dir: str) -> dict[str, str]:
    """``{hash part: path}`` of every path reachable from the store paths ``starts``
    through the ``References`` of the narinfos in ``hint`` (``{hash part: text}``),
    ``starts`` included; a path the hint has no narinfo for (or one for another name)
    is included but not walked through."""
    out: dict[str, str] = {}
    queue: list[str] = []
    for p in starts:
        h = p.rsplit("/", 1)[-1][:32]
        if h not in out:
            out[h] = p
            queue.append(p)
    for p in queue:
        base = p.rsplit("/", 1)[-1]
        text = hint.get(base[:32])
        if text is None or f"StorePath: {p}\n" not in text:
            continue
        for r in references_of(text):
            if r[:32] in out:
                continue
            try:
                path = str(StorePath.parse_base(r, store_dir))
            except FormatError:
                continue
            out[r[:32]] = path
            queue.append(path)
    return out
