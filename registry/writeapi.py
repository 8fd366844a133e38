"""The registry's write API (directory registries only): ``PUT`` of NARs/blobs,
narinfos and attestations, ``POST /upload-batch`` (``POST /publish-index``: ``indexapi``). Mixed
into ``server.Registry``; every upload is verified before anything is published (see
the module docstring of ``server``), and an upload batch keeps no NAR for a refused
narinfo (``batchcommit``)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TYPE_CHECKING, BinaryIO

from aiohttp import web

from kiln.store import narinfo as ni
from kiln.store.errors import KilnError

from . import layout
from .admitca import refusal
from .backends import BatchEntry, DirSource
from .batchcommit import admit_entry, status_of
from .httpbits import CHUNK, HTTPError, body_pace, check_length, drain, plain, read_body, shown_key
from .pace import LINE_TOO_LONG
from .verify import NarVerifier, check_narinfo, expect_info, nar_file_hash, trusted_sigs_only

if TYPE_CHECKING:
    from .backends import Source
    from .server import ServerConfig

MAX_UPLOAD_BATCH = 2_000


class WriteAPI:
    """Write handlers; the class mixing this in provides ``source``, ``config``
    and ``_auth(request, scope)``."""

    if TYPE_CHECKING:
        source: Source
        config: ServerConfig

        def _auth(self, request: web.BaseRequest, scope: str) -> None: ...

    async def _put(self, request: web.BaseRequest, key: str, kind: str, arg: str) -> web.Response:
        src = self.source
        assert isinstance(src, DirSource)
        if kind in ("nar", "blob"):
            check_length(request, self.config.max_body)
            digest = layout.file_hash_of_key(kind, arg)
            if src.object_file(digest) is not None:
                await drain(request, self.config.max_body)
                return plain(200, "already present")
            ver = NarVerifier(max_nar_size=self.config.max_nar)
            total = 0
            # no deadline of its own (the size given): a write-token holder's upload is
            # judged with its address's link, so `kiln push -j 8` over a slow uplink
            # passes as one link; a silent connection still gets 408 (body timeout)
            pace = body_pace(request, f"PUT /{key}")
            loop = asyncio.get_running_loop()
            with src.storage.staged() as (f, _tmp):
                while chunk := await pace.read(request.content.read(CHUNK), 1):
                    total += len(chunk)
                    if total > self.config.max_body:
                        raise HTTPError(413, f"body exceeds the limit of {self.config.max_body} bytes")
                    # decompressing and hashing off the event loop: 1 MiB can inflate to
                    # gigabytes, and every other client would wait meanwhile
                    try:
                        await loop.run_in_executor(None, _absorb, f, ver, chunk)
                    except KilnError as e:  # the NAR inside is larger than max_nar
                        raise HTTPError(413, str(e)) from None
                if request.content_length is not None and total != request.content_length:
                    raise HTTPError(400, "body shorter than Content-Length (connection dropped?)")
                got = ver.finish()
                if got.file_hash.digest != digest.digest:
                    raise HTTPError(
                        400, f"uploaded bytes hash to sha256:{got.file_hash.hex}, not to the name /{key}"
                    )
                # fsync and link on a worker thread: the event loop never waits on the disk
                await asyncio.get_running_loop().run_in_executor(
                    None, src.commit_object, f, got, src.group_sync
                )
            return plain(201, "stored")
        if kind == "narinfo":
            body = await read_body(request, self.config.max_narinfo, "narinfo")
            try:
                text = body.decode()
            except UnicodeDecodeError:
                raise HTTPError(400, "narinfo is not UTF-8") from None
            status, msg = await asyncio.get_running_loop().run_in_executor(
                None, self._admit_narinfo, arg, text
            )
            return plain(status, msg)
        if kind == "att" and (att_kind := layout.att_kind_of_key(key)):
            from .attest_transfer import MAX_ATTESTATION, admit

            body = await read_body(request, MAX_ATTESTATION, "attestation")
            # builder keys and attester keys apart: only a builder's (or the stored
            # statement's own signer's) provenance or SBOM replaces a stored one
            status, msg = await asyncio.get_running_loop().run_in_executor(
                None,
                admit,
                src.storage,
                src.store_dir,
                arg,
                att_kind,
                body,
                self.config.trusted,
                self.config.attesters,
            )
            return plain(status, msg)
        raise HTTPError(405, f"PUT is not allowed on /{shown_key(key)}", Allow="GET, HEAD")

    def _admit_narinfo(self, hash_part: str, text: str) -> tuple[int, str]:
        src = self.source
        assert isinstance(src, DirSource)
        try:
            info = check_narinfo(text, src.store_dir, self.config.trusted, 1, hash_part)
        except KilnError as e:
            return status_of(e), f"error: {e}"
        got = src.object_digests(nar_file_hash(info))
        if got is None:
            return 400, f"error: {info.path}: upload the NAR ({info.url}) before its narinfo"
        try:
            expect_info(info, got)
        except KilnError as e:
            return 400, f"error: {e}"
        refused = refusal(src.storage, info, got)  # its CA: unsigned, so checked here
        if refused:
            return 400, refused
        return src.publish_narinfo(hash_part, trusted_sigs_only(info, self.config.trusted), text.encode())

    async def _upload_batch(self, request: web.BaseRequest) -> web.Response:
        """``POST /upload-batch``: many paths in one request. Body: per path a line
        ``<narinfo length> <nar length> <hash part>\n``, the narinfo bytes, then the
        ``.nar.zst`` bytes (length 0 when the registry already has that NAR). Each
        narinfo is admitted before its NAR is read: a refused one's NAR is read past,
        never stored. Each NAR is hashed while it streams in; then everything is admitted
        exactly as the single-object PUTs would, with two shared barriers instead of 2
        fsyncs per path, and only the NARs admitted narinfos name are kept (``batchcommit``).
        The narinfos are held in memory: each at most ``max_narinfo`` bytes, together at
        most ``layout.UPLOAD_BATCH_NARINFO_BYTES`` (413 beyond). Answer: ``{"results": [{"hash", "status", "message"}]}`` in request order."""
        self._auth(request, "write")
        src = self.source
        assert isinstance(src, DirSource)
        check_length(request, self.config.max_body)
        entries: list[BatchEntry] = []

        def admit(hash_part: str, text: str) -> ni.NarInfo:
            info = check_narinfo(text, src.store_dir, self.config.trusted, 1, hash_part)
            return trusted_sigs_only(info, self.config.trusted)  # (what a merge may add)

        total = texts = 0  # bytes of the body, of its narinfos (held in memory)
        pace = body_pace(request, "upload batch")  # (no deadline of its own: see _put)
        loop = asyncio.get_running_loop()
        with contextlib.ExitStack() as stack:
            while True:
                try:
                    line = await pace.read(request.content.readline(), 80)
                except LINE_TOO_LONG:  # aiohttp's LineTooLong: bad input, not a server error
                    raise HTTPError(400, "batch frame header line too long") from None
                if not line:
                    break
                parts = line.split()
                if (
                    len(parts) != 3
                    or not line.endswith(b"\n")
                    or not parts[0].isdigit()
                    or not parts[1].isdigit()
                ):
                    raise HTTPError(400, f"malformed batch frame header {line[:80]!r}")
                nlen, zlen, h = int(parts[0]), int(parts[1]), parts[2].decode(errors="replace")
                if not layout.is_hash_part(h):
                    raise HTTPError(400, f"invalid hash part {h[:40]!r} in batch frame")
                if nlen > self.config.max_narinfo:
                    raise HTTPError(413, f"narinfo over {self.config.max_narinfo} bytes in batch frame")
                texts += nlen
                if texts > layout.UPLOAD_BATCH_NARINFO_BYTES:
                    raise HTTPError(
                        413, f"the batch's narinfos exceed {layout.UPLOAD_BATCH_NARINFO_BYTES} bytes in all"
                    )
                total += nlen + zlen
                if total > self.config.max_body:
                    raise HTTPError(413, f"batch exceeds the limit of {self.config.max_body} bytes")
                if len(entries) >= MAX_UPLOAD_BATCH:
                    raise HTTPError(413, f"at most {MAX_UPLOAD_BATCH} paths per upload batch")
                try:
                    body = await pace.read(request.content.readexactly(nlen), nlen)
                except asyncio.IncompleteReadError:
                    raise HTTPError(400, "batch body truncated") from None
                e = BatchEntry(h, body)
                if zlen:
                    # the narinfo first (it comes first in the frame): a refused one's NAR
                    # is read past, never stored
                    await loop.run_in_executor(None, admit_entry, e, admit)
                    f: BinaryIO | None = None
                    ver: NarVerifier | None = None
                    if e.error is None:
                        f, _ = stack.enter_context(src.storage.staged())
                        ver = NarVerifier(max_nar_size=self.config.max_nar)
                    left = zlen
                    while left:
                        chunk = await pace.read(request.content.read(min(CHUNK, left)), 1)
                        if not chunk:
                            raise HTTPError(400, "batch body truncated")
                        if e.error is None:
                            # (staged above: an entry's error, once set, stays)
                            assert f is not None and ver is not None
                            try:  # off the event loop, as for a single PUT
                                await loop.run_in_executor(None, _absorb, f, ver, chunk)
                            except KilnError as ex:  # over max_nar: this entry fails
                                e.error = str(ex)
                        left -= len(chunk)
                    if f is not None and ver is not None:
                        f.close()
                        if e.error is None:
                            try:
                                e.nar_digests, e.nar_file = ver.finish(), f
                            except KilnError as ex:
                                e.error = str(ex)
                entries.append(e)
            results = await asyncio.get_running_loop().run_in_executor(None, src.commit_batch, entries, admit)
        out = [
            {"hash": e.hash_part, "status": st, "message": msg}
            for e, (st, msg) in zip(entries, results, strict=True)
        ]
        return web.json_response({"results": out})

    async def sweep_temp(self) -> None:
        """Every ``storage.SWEEP_EVERY`` seconds, remove the temp files of writers that
        died since the start-up sweep (``FileStorage.sweep_temp``: those whose writer
        lock is free), for ever. One worker runs it; it covers every worker's and every
        other writer's files. A failure is said and tried again at the next wake-up."""
        from .storage import SWEEP_EVERY, FileStorage

        src = self.source
        assert isinstance(src, DirSource)  # (``make_app`` runs this for a directory only)
        storage = src.storage
        assert isinstance(storage, FileStorage)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                gone = await loop.run_in_executor(None, storage.sweep_temp)
            except Exception as e:  # noqa: BLE001 - serving goes on; tried again at the next wake-up
                print(f"kiln serve: cannot sweep {storage.url}/.kiln/tmp: {e}", file=sys.stderr, flush=True)
                continue
            if gone:
                print(
                    f"kiln serve: removed {gone} temp file(s) left by killed writers",
                    file=sys.stderr,
                    flush=True,
                )


def _absorb(f: BinaryIO, ver: NarVerifier, chunk: bytes) -> None:
    """Stage and verify one piece of an uploaded object (on an executor thread)."""
    f.write(chunk)
    ver.update(chunk)
