"""``DirClient``: the ``Client`` API (``client.py``) over a registry directory on this
machine (``file:///dir`` or a plain path), written directly. The caller is trusted with
the directory, but digests are still recomputed on the way in: an object whose bytes do
not hash to its key is refused, and narinfos and attestations go through the same
admission checks as the server's write API, except that no trusted signer is required.

``upload_batch`` (push, copy) publishes many paths as ``POST /upload-batch`` does on a
server, through the same ``DirSource.commit_batch``: every NAR is hashed while it is
staged, then NAR data → barrier → NAR links and narinfo data → barrier → narinfo links,
each narinfo admitted as ``put_bytes`` admits one (its references published or earlier
in the batch). Two ``syncfs`` per batch instead of an fsync and a ``syncfs`` per path.

Opened to write (``create``), it sweeps the temp files killed writers left in
``.kiln/tmp`` (``FileStorage.sweep_temp``), as ``kiln serve`` and ``kiln mirror sync``
do: a directory only ever pushed to (and served by nginx) is otherwise never swept."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiln.store.errors import KilnError
from kiln.store.hashes import Hash

from . import layout
from .backends import UNCHANGED, BatchEntry, DirSource
from .client import CHUNK, Client, RegistryError, utf8
from .storage import FileStorage


class DirClient(Client):
    """A registry directory on this machine, written directly (the caller is trusted
    with the directory; digests are still recomputed on the way in)."""

    def __init__(self, path: str, store_dir: str | None = None, *, create: bool = True) -> None:
        self.src = DirSource(path, store_dir=store_dir, create=create)
        self.url = self.src.storage.url
        self.store_dir = self.src.store_dir
        self.changed = False  # a narinfo or attestation published or changed (``publish_index``)
        storage = self.src.storage
        # a writer (push, copy): what killed writers left goes, as a server's start does
        # (only a directory has temp files to sweep: ``FileStorage.sweep_temp``)
        if create and isinstance(storage, FileStorage):
            with contextlib.suppress(OSError):  # (a directory we may not write: nothing to sweep)
                storage.sweep_temp()

    async def get(self, key: str) -> bytes | None:
        return self.src.storage.read(key)

    async def narinfos(self, hash_parts: list[str]) -> dict[str, str]:
        out = {}
        for h in hash_parts:
            body = self.src.narinfo(h)
            if body is not None:
                out[h] = utf8(body, f"{self.url}/{layout.narinfo_key(h)}")
        return out

    async def narinfo_closure(self, hash_parts: list[str]) -> dict[str, str]:
        return {}  # no round trips to save: the per-level walk reads the files directly

    async def have_blobs(self, hashes: list[Hash]) -> set[str]:
        return {h.to_hex() for h in hashes if self.src.object_file(h) is not None}

    async def download(self, key: str, write: Callable[[bytes], Any]) -> bool:
        f = self.src.storage.open(key)
        if f is None:
            return False
        with f:
            while chunk := f.read(CHUNK):
                write(chunk)
        return True

    async def narinfo_by_nar_hash(self, nar_sha256_hex: str) -> str | None:
        body = self.src.narinfo_by_nar_hash(nar_sha256_hex)
        return utf8(body, f"{self.url}: the narinfo of NAR {nar_sha256_hex}") if body is not None else None

    def put_object_sync(self, key: str, path: Path) -> None:
        from .verify import NarVerifier

        kind, arg = layout.parse_key(key)
        digest = layout.file_hash_of_key(kind, arg)
        if self.src.object_file(digest) is not None:
            return
        ver = NarVerifier()
        with self.src.storage.staged() as (f, _), open(path, "rb") as src:
            while chunk := src.read(CHUNK):
                f.write(chunk)
                ver.update(chunk)
            got = ver.finish()
            if got.file_hash.digest != digest.digest:
                raise RegistryError(f"{path} does not hash to {key}")
            self.src.commit_object(f, got)

    async def put_file(self, key: str, path: Path) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.put_object_sync, key, path)

    async def put_bytes(self, key: str, data: bytes) -> int:
        kind, arg = layout.parse_key(key)
        if kind == "att" and (att_kind := layout.att_kind_of_key(key)):
            from .attest_transfer import admit

            # the caller owns the directory: subject and shape are checked, not the signer
            status, msg = admit(self.src.storage, self.store_dir, arg, att_kind, data, None)
            if status >= 400:
                raise RegistryError(msg, status)
            self.changed = self.changed or status == 201
            return status
        if kind != "narinfo":
            self.src.storage.put_bytes(key, data)
            return 201
        from .admitca import refusal
        from .verify import check_narinfo, expect_info, nar_file_hash

        try:
            # the server's admission rules but the signature check (the caller owns the
            # directory): its own hash part, zstd, the URL, and the NAR present with
            # exactly the digests the narinfo states
            info = check_narinfo(data.decode(), self.store_dir, [], 0, arg)
            got = self.src.object_digests(nar_file_hash(info))
            if got is None:
                raise RegistryError(f"{info.path}: upload the NAR ({info.url}) before its narinfo", 400)
            expect_info(info, got)
        except (KilnError, UnicodeDecodeError) as e:
            raise RegistryError(str(e), getattr(e, "status", 400)) from None
        refused = refusal(self.src.storage, info, got)  # its CA, as the server checks it
        if refused:
            raise RegistryError(refused, 400)
        status, msg = self.src.publish_narinfo(arg, info, data)
        if status >= 400:
            raise RegistryError(msg, status)
        self.changed = self.changed or msg != UNCHANGED
        return status

    async def publish_index(self) -> str | None:
        """A directory's index is signed by ``kiln registry publish-index --key``: there is
        no index key here. When the directory publishes a signed index and this client
        changed a narinfo or attestation, that index no longer matches them (mirrors and
        ``--index-root`` copies refuse the changed ones): said on stderr, with the command.
        Returns None (nothing published)."""
        if self.changed and self.src.storage.read("index/timestamp.json") is not None:
            import shlex
            import sys

            where = shlex.quote(str(getattr(self.src.storage, "root", self.url)))
            print(
                f"warning: {self.url} publishes a signed index, which does not list what this command "
                f"changed there (mirrors and --index-root copies refuse it until it does): run kiln "
                f"registry publish-index --dir {where} --key INDEX-KEY",
                file=sys.stderr,
            )
        return None

    async def upload_batch(self, frames: list[tuple[str, bytes, Path | None]]) -> list[dict[str, Any]] | None:
        """Publish (hash part, narinfo, optional NAR file) frames together; the per-path
        results as a server's ``upload-batch`` answer gives them (see the module
        docstring)."""
        return await asyncio.get_running_loop().run_in_executor(None, self.upload_batch_sync, frames)

    def upload_batch_sync(self, frames: list[tuple[str, bytes, Path | None]]) -> list[dict[str, Any]]:
        from .verify import NarVerifier, check_narinfo

        entries: list[BatchEntry] = []
        with contextlib.ExitStack() as stack:
            for h, text, path in frames:
                e = BatchEntry(h, text)
                if path is not None:
                    f, _ = stack.enter_context(self.src.storage.staged())
                    ver = NarVerifier()
                    try:
                        with open(path, "rb") as src:
                            while chunk := src.read(CHUNK):
                                f.write(chunk)
                                ver.update(chunk)
                        f.close()  # flushed; made durable by commit_batch's first barrier
                        e.nar_digests, e.nar_file = ver.finish(), f
                    except KilnError as ex:  # not a valid zstd NAR: this entry fails
                        e.error = str(ex)
                entries.append(e)

            def admit(hash_part: str, text: str) -> Any:
                # the server's rules but the signature check (the caller owns the directory)
                return check_narinfo(text, self.store_dir, [], 0, hash_part)

            results = self.src.commit_batch(entries, admit)
        self.changed = self.changed or any(st < 400 and msg != UNCHANGED for st, msg in results)
        return [
            {"hash": e.hash_part, "status": st, "message": msg}
            for e, (st, msg) in zip(entries, results, strict=True)
        ]
