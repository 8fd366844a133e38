"""Reading a registry through its verified signed index: the per-file checks ``kiln
mirror sync`` (``mirror``) and ``kiln copy --index-root`` (``copy.to_store``) share,
and the read-only client view that applies them to a copy.

The signed index (``index``: verified by ``index.update`` against a pinned root, for
signatures, expiry, rollback and mix-and-match) lists per path the sha256 of its
narinfo and of each attestation file. Whoever reads a path through it takes only:

- a narinfo the index lists (``unlisted``: one published after the index, or added to
  the registry or the media by someone else, is refused) whose bytes hash to the
  listed sha256 (``narinfo_problem``: the mirror's wording, which names the two likely
  causes);
- the attestation files the index lists (its listings replace the registry's own),
  each hashing to the listed sha256 (``attest_fetch``, ``listed``).

Objects need no entry of their own: the narinfo, pinned by the index, pins the
object's hash and size, and every object is verified against its narinfo as it
arrives.

``IndexedClient`` is that view of a ``Client`` for a substitution (``Substituter``'s
narinfo queries and the closure hint): a narinfo failing the checks is left out, as
if the registry lacked it, and why is kept in ``refused`` for the caller's error. A
``Substituter`` reads a registry through it once it is put in the substituter's
``views`` (its public hook for that).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kiln.store.hashes import Hash
from kiln.store.signing import PublicKey

from .client import Client

#: why a narinfo that does not hash to its index entry is refused (``kiln mirror sync``
#: says it too)
NOT_AS_INDEXED = (
    "the source's narinfo does not hash to the sha256 its signed index lists: the source "
    "rewrote it after its last index publish (e.g. a signature merge by kiln push) and must "
    "publish its index again (kiln registry publish-index; a kiln serve --index-key does it "
    "at its next refresh), or the narinfo was tampered with"
)


def narinfo_problem(text: str | bytes, entry: Mapping[str, Any]) -> str | None:
    """Why narinfo ``text`` is not the one the index ``entry`` (its path's) lists, or
    None when it hashes to the listed sha256."""
    data = text.encode() if isinstance(text, str) else text
    if hashlib.sha256(data).hexdigest() != entry.get("narinfo_sha256"):
        return NOT_AS_INDEXED
    return None


def unlisted(version: int) -> str:
    """Why a narinfo the index of ``version`` does not list is refused."""
    return (
        f"not listed in the source's signed index (version {version}): published after that index, or "
        "added to the registry or the media by someone else (kiln registry publish-index lists it)"
    )


def attestation_listings(paths: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``{hash part: {kind: sha256}}`` of the attestations an index's path table lists."""
    out: dict[str, dict[str, str]] = {}
    for h, e in paths.items():
        kinds = e.get("attestations") if isinstance(e, dict) else None
        if isinstance(kinds, dict) and kinds:
            out[h] = {k: v for k, v in kinds.items() if isinstance(k, str) and isinstance(v, str)}
    return out


class IndexedClient(Client):
    """Read-only view of ``inner`` through the verified index ``paths`` (its ``paths``
    table) of ``version`` (module docstring). Writes are refused: the view is for a
    copy's source."""

    def __init__(self, inner: Client, paths: Mapping[str, Any], version: int) -> None:
        self.inner, self.paths, self.version = inner, paths, version
        self.url = inner.url
        #: hash part -> why its narinfo was left out
        self.refused: dict[str, str] = {}

    # (what the wrapped client knows: its store dir once asked, the keys it trusts; the
    # view keeps none of its own, so what is set on it is set on the client it wraps)
    @property
    def store_dir(self) -> str:
        return self.inner.store_dir

    @store_dir.setter
    def store_dir(self, value: str) -> None:
        self.inner.store_dir = value

    @property
    def trusted(self) -> list[PublicKey] | None:
        return self.inner.trusted

    @trusted.setter
    def trusted(self, value: list[PublicKey] | None) -> None:
        self.inner.trusted = value

    def _checked(self, texts: Mapping[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for h, text in texts.items():
            entry = self.paths.get(h)
            why = unlisted(self.version) if not isinstance(entry, dict) else narinfo_problem(text, entry)
            if why is None:
                out[h] = text
            else:
                self.refused[h] = why
        return out

    async def cache_info(self) -> dict[str, str]:
        return await self.inner.cache_info()

    async def get(self, key: str) -> bytes | None:
        return await self.inner.get(key)

    async def narinfos(self, hash_parts: list[str]) -> dict[str, str]:
        return self._checked(await self.inner.narinfos(hash_parts))

    async def narinfo_closure(self, hash_parts: list[str]) -> dict[str, str]:
        # (a hint; what it left out is asked for, and refused, level by level)
        hint = await self.inner.narinfo_closure(hash_parts)
        return {
            h: t
            for h, t in hint.items()
            if isinstance(e := self.paths.get(h), dict) and narinfo_problem(t, e) is None
        }

    async def attestation_listings(self, hash_parts: list[str]) -> dict[str, dict[str, str]]:
        return attestation_listings({h: self.paths[h] for h in hash_parts if h in self.paths})

    async def have_blobs(self, hashes: list[Hash]) -> set[str]:
        return await self.inner.have_blobs(hashes)

    async def download(self, key: str, write: Callable[[bytes], Any]) -> bool:
        return await self.inner.download(key, write)

    async def blob_batch(
        self,
        hashes: list[Hash],
        got: Callable[[Hash, bytes | None], Any],
        sizes: dict[str, int] | None = None,
    ) -> bool:
        return await self.inner.blob_batch(hashes, got, sizes)

    async def put_file(self, key: str, path: Path) -> None:
        raise NotImplementedError("a copy's source is read, never written")

    async def put_bytes(self, key: str, data: bytes) -> int:
        raise NotImplementedError("a copy's source is read, never written")
