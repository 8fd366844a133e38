"""The narinfo and CA checks of a mirror sync (``mirror``): which candidates' narinfos the
mirror holds already and which it fetches, each checked against the keys trusted now
(``held_and_fetched``), and whether the ``CA:`` claims of those with one are true of
their objects (``false_cas``). Nothing here writes to the mirror."""

from __future__ import annotations

import functools
import hashlib

from kiln.store import narinfo as ni
from kiln.store.errors import KilnError
from kiln.store.signing import PublicKey

from .admitca import nar_chunks
from .backends import DirSource
from .client import Client
from .indexcheck import narinfo_problem
from .verify import UntrustedError, ca_refusal, check_narinfo, expect_info


def _sha(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


async def held_and_fetched(
    client: Client,
    dst: DirSource,
    candidates: list[str],
    paths: dict[str, dict],
    trusted: list[PublicKey],
    failed: dict[str, str],
    refused: dict[str, str],
) -> tuple[dict[str, str], dict[str, ni.NarInfo], dict[str, ni.NarInfo]]:
    """``(texts, fetched, held)``: the narinfos of ``candidates`` DST lacks (or holds in
    another version), fetched and checked against the index (``texts``, and parsed:
    ``fetched``), and those DST holds as the index lists them (parsed: ``held``; their
    objects are checked too). Both are checked against ``trusted``. Problems go to
    ``failed`` (path -> why); held narinfos ``trusted`` refuses, to ``refused`` too
    (hash part -> the sha256 of their bytes)."""
    held: dict[str, ni.NarInfo] = {}
    todo: list[str] = []
    for h in candidates:
        mine = dst.narinfo(h)
        if _sha(mine) != paths[h]["narinfo_sha256"]:
            todo.append(h)
            continue
        assert mine is not None
        try:  # (its signatures too: a key trusted when it was fetched may be dropped since)
            held[h] = check_narinfo(mine.decode(), dst.store_dir, trusted, 1 if trusted else 0, h)
        except UntrustedError as ex:
            failed[paths[h]["path"]] = str(ex)
            refused[h] = paths[h]["narinfo_sha256"]
        except (KilnError, UnicodeDecodeError) as ex:
            failed[paths[h]["path"]] = f"the mirror's narinfo (the one the index lists) does not check: {ex}"
    texts = await client.narinfos(todo) if todo else {}
    fetched: dict[str, ni.NarInfo] = {}
    for h in todo:
        e = paths[h]
        text = texts.get(h)
        if text is None:
            failed[e["path"]] = "narinfo missing at the source"
            continue
        why = narinfo_problem(text, e)
        if why is not None:
            failed[e["path"]] = why
            continue
        try:
            fetched[h] = check_narinfo(
                text, dst.store_dir, trusted, 1 if trusted else 0, h, source=client.url
            )
        except KilnError as ex:
            failed[e["path"]] = str(ex)
    return texts, fetched, held


def false_cas(dst: DirSource, infos: list[ni.NarInfo]) -> dict[str, str]:
    """``{path: why}`` for each of ``infos`` (narinfos with a ``CA:``, whose objects DST
    now holds) whose claim is not true of its object (see the module docstring). The
    digests are those remembered when the object was fetched and verified; an object
    DST held already is hashed again and must match the narinfo first, as a judgement
    of the wrong bytes would be worthless."""
    out: dict[str, str] = {}
    for i in infos:
        fh = i.file_hash
        assert fh is not None  # (``check_narinfo``)
        got = dst.object_digests(fh)
        if got is None:
            out[i.path] = f"{i.url} is not in the mirror after its transfer (deleted meanwhile?)"
            continue
        try:
            expect_info(i, got)
        except KilnError as e:
            out[i.path] = f"the mirror's copy of {i.url} does not match the narinfo: {e}"
            continue
        why = ca_refusal(i, got, functools.partial(nar_chunks, dst.storage, fh))
        if why:
            out[i.path] = f"refusing its CA: {why}"
    return out
