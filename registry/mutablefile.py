"""Answers for the files a registry replaces in place of the old ones: the signed index's
``index/timestamp.json``, ``index/snapshot.json`` and ``index/root.json`` (``MUTABLE``),
and attestations (a newer provenance replaces the old one).

Such a file is revalidated by every cache (``Cache-Control: no-cache``), and its only
validator is an entity tag of its bytes: ``ETag: "sha256:<hex>"``. No ``Last-Modified``
is sent and ``If-Modified-Since`` is ignored (so is a date ``If-Range``: no range here).
A date says nothing about which version a client has: a re-publish whose file has an
older mtime (the clock stepped back, ``touch -d``, a restore with ``cp -p``/``rsync -t``)
would be answered 304 to a client holding the previous timestamp, freezing it behind
every cache that revalidates by date; an mtime-based ETag has the same flaw with a
matching size. A tag of the content changes exactly when the content does.

The file is read whole (these are small: the index's large, versioned files are not
mutable and are served as files) from one open descriptor, so the tag is of the very
bytes sent, even while a publisher renames a new version into place.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from aiohttp import web

from kiln.store.fileopen import open_regular

#: the index files published again under the same name (``indexbuild``, ``publish``)
MUTABLE = frozenset({"index/timestamp.json", "index/snapshot.json", "index/root.json"})


def read(path: Path) -> bytes | None:
    """The bytes of the regular file at ``path`` (one descriptor), None if there is none
    (gone meanwhile, or not a regular file: the caller answers 404). Blocking."""
    try:
        f = open_regular(path)
        if f is None:
            return None
        with f:
            return f.read()
    except OSError:
        return None


def answer(request: web.BaseRequest, body: bytes, headers: dict[str, str]) -> web.Response:
    """The answer to a GET or HEAD of a mutable file holding ``body``: 200 with it, or
    304 when ``If-None-Match`` names its tag (or is ``*``); never by a date.
    ``headers`` go on both (a 304 without ``Content-Type``)."""
    tag = f"sha256:{hashlib.sha256(body).hexdigest()}"
    out = {**headers, "ETag": f'"{tag}"'}
    inm = request.if_none_match
    if inm and any(t.value in (tag, "*") for t in inm):  # (weak comparison, RFC 9110 13.1.2)
        out.pop("Content-Type", None)
        return web.Response(status=304, headers=out)
    return web.Response(body=body, headers=out)
