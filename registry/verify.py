"""Streaming verification of compressed NARs and narinfo admission rules.

``NarVerifier`` is fed the bytes of a ``.nar.zst`` file as they arrive (from an upload,
a download or a mirror source). It hashes the compressed bytes and, through a zstd
stream writer with a bounded output buffer, the decompressed NAR, so memory stays flat
even for a decompression bomb, and nothing is read twice. It also follows the zstd frames
(``zstdframes``), so a stream cut after a block, which decompresses without error, is
refused. ``finish`` returns the four digests/sizes; callers compare them with what the
URL and the narinfo promise.

``check_narinfo`` is the single admission rule used by the server (uploads), mirror sync
and substitution: the narinfo must parse for the registry's store dir, point at
``nar/<nix32 FileHash>.nar.zst`` with ``Compression: zstd``, and carry at least
``sigs_needed`` valid signatures from distinct trusted keys. A client names the cache it
read (``source``): a narinfo that is not zstd is then the source's (say, a cache ``nix
copy`` wrote with its default xz), with how to re-create it. With ``content_proves``
(substitution, a copy into a store or a registry directory, ``kiln registry verify``:
callers that check the content against the claim) a path whose ``CA:`` gives its store
path needs no signature (``caclaim``), as Nix takes ``nix copy --derivation``'s unsigned
``.drv`` files; a registry admitting an upload still asks signatures of every path. Its ``CA:`` (not covered by
the signatures) is judged against the object by ``ca_refusal`` once the object's
digests are known: ``NarVerifier`` also hashes the contents of a NAR that is one plain
file (``Digests.flat_hash``), so a flat or text claim costs no second read.

A ``HashMismatch`` about a narinfo's object names the store path and the object's URL in
the registry (``object_of``), so an operator can find the bad file.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import zstandard

from kiln.store import narinfo as ni
from kiln.store.caclaim import claim_gives_path
from kiln.store.errors import FormatError, HashMismatch, KilnError
from kiln.store.hashes import Hash
from kiln.store.pathadmit import FlatHasher, ca_problem, nar_content
from kiln.store.pathinfo import PathInfo
from kiln.store.signing import PublicKey, valid_signers
from kiln.store.zstdframes import FrameTracker

from . import layout
from .layout import nar_key

OUT_CHUNK = 1 << 20


class _HashSink:
    __slots__ = ("sha", "size", "limit", "flat")

    def __init__(self, limit: int | None) -> None:
        self.sha, self.size, self.limit = hashlib.sha256(), 0, limit
        self.flat = FlatHasher()  # for a flat or text CA claim (``ca_refusal``)

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise FormatError(f"decompressed NAR exceeds {self.limit} bytes")
        self.sha.update(data)
        self.flat.update(data)
        return len(data)


@dataclass(frozen=True, slots=True)
class Digests:
    file_hash: Hash
    file_size: int
    nar_hash: Hash
    nar_size: int
    #: sha256 of the contents when the NAR is one non-executable regular file (what a
    #: flat ``fixed:sha256`` or ``text:sha256`` CA names), else None
    flat_hash: Hash | None = None

    def to_record(self) -> bytes:
        """The ``.kiln/nars/<hex>`` record a registry directory keeps of these digests."""
        import json

        return json.dumps(
            {
                "file_hash": self.file_hash.to_hex(),
                "file_size": self.file_size,
                "nar_hash": self.nar_hash.to_hex(),
                "nar_size": self.nar_size,
                "flat_hash": self.flat_hash.to_hex() if self.flat_hash is not None else "",
            }
        ).encode()

    @classmethod
    def from_record(cls, rec: bytes, file_hash: Hash) -> Digests | None:
        """The digests in a record (``to_record``), or None if it is not a whole,
        well-formed record of ``file_hash`` (records are never fsynced: a crash can leave
        one empty or torn)."""
        import json

        try:
            d = json.loads(rec)
            flat = d["flat_hash"]  # (a record older than this field is recomputed)
            got = cls(
                Hash.parse(d["file_hash"]),
                d["file_size"],
                Hash.parse(d["nar_hash"]),
                d["nar_size"],
                Hash.parse(flat) if flat else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, KilnError):
            return None
        sizes = (got.file_size, got.nar_size)
        if got.file_hash.digest != file_hash.digest or not all(type(n) is int and n > 0 for n in sizes):
            return None
        return got


class NarVerifier:
    """Incremental hasher of a ``.nar.zst`` stream and the NAR inside it. With limits
    (a narinfo's NarSize/FileSize when downloading), ``update`` raises ``FormatError`` as
    soon as either side grows past its limit: no unbounded download or decompression."""

    def __init__(
        self, max_nar_size: int | None = None, max_file_size: int | None = None, what: str = ""
    ) -> None:
        """``what`` names the object in ``finish``'s errors (``object_of``; "": unnamed)."""
        self.what = what
        self._file = hashlib.sha256()
        self._size = 0
        self._max_file = max_file_size
        self._sink = _HashSink(max_nar_size)
        # (zstandard calls only the sink's write(); its stubs ask for a whole IO[bytes])
        self._dec = zstandard.ZstdDecompressor().stream_writer(
            self._sink,  # type: ignore[arg-type]
            write_size=OUT_CHUNK,
            write_return_read=True,
            closefd=False,
        )
        self._frames = FrameTracker()  # the decompressor accepts a stream cut after a block
        self._bad: str | None = None

    @property
    def size(self) -> int:
        """Compressed bytes seen so far."""
        return self._size

    def update(self, chunk: bytes) -> None:
        if self._max_file is not None and self._size + len(chunk) > self._max_file:
            raise FormatError(f"compressed NAR exceeds its FileSize of {self._max_file} bytes")
        self._file.update(chunk)
        self._size += len(chunk)
        if self._bad is None:
            try:
                self._frames.update(chunk)
            except FormatError as e:  # not zstd: reported by ``finish``, as corrupt data is
                self._bad = str(e)
                return
            try:
                self._dec.write(chunk)  # (past the NAR size limit, ``_HashSink`` raises through this)
            except zstandard.ZstdError as e:
                self._bad = str(e)

    def finish(self, file_hash: Hash | None = None) -> Digests:
        """The digests; ``HashMismatch`` if the bytes were not whole, valid zstd frames,
        or, first, if ``file_hash`` is given and the bytes are not that file (the most
        telling answer for a damaged copy of a known object)."""
        of = f" of {self.what}" if self.what else ""
        if file_hash is not None and self._file.digest() != file_hash.digest:
            got = Hash("sha256", self._file.digest())
            raise HashMismatch(
                f"compressed file{of}", file_hash.to_nix32(), f"{got.to_nix32()} ({self._size} bytes)"
            )
        if self._bad is None:
            try:
                self._dec.flush()
            except zstandard.ZstdError as e:
                self._bad = str(e)
        if self._bad is None:
            try:
                self._frames.check_complete()
            except FormatError as e:
                self._bad = str(e)
        if self._bad is not None:
            raise HashMismatch(f"compressed NAR{of}", "a valid zstd stream", f"corrupt data ({self._bad})")
        return Digests(
            Hash("sha256", self._file.digest()),
            self._size,
            Hash("sha256", self._sink.sha.digest()),
            self._sink.size,
            self._sink.flat.result(),
        )


def expect(
    what: str,
    got: Digests,
    file_hash: Hash | None,
    file_size: int | None,
    nar_hash: Hash | None,
    nar_size: int | None,
) -> None:
    """Raise ``HashMismatch`` unless every given expectation holds."""
    if file_hash is not None and got.file_hash.digest != file_hash.digest:
        raise HashMismatch(f"compressed file of {what}", file_hash.to_nix32(), got.file_hash.to_nix32())
    if file_size is not None and got.file_size != file_size:
        raise HashMismatch(f"compressed file size of {what}", str(file_size), str(got.file_size))
    if nar_hash is not None and got.nar_hash.digest != nar_hash.digest:
        raise HashMismatch(f"NAR of {what}", nar_hash.to_nix32(), got.nar_hash.to_nix32())
    if nar_size is not None and got.nar_size != nar_size:
        raise HashMismatch(f"NAR size of {what}", str(nar_size), str(got.nar_size))


def object_of(info: ni.NarInfo) -> str:
    """``info``'s path and the URL of its object in the registry, as errors name them."""
    return f"{info.path} (object {info.url})"


def expect_info(info: ni.NarInfo, got: Digests) -> None:
    """``expect`` with every digest and size ``info`` gives (``HashMismatch`` naming its path
    and object: ``object_of``)."""
    expect(object_of(info), got, info.file_hash, info.file_size, info.nar_hash, info.nar_size)


def ca_refusal(info: ni.NarInfo, got: Digests, nar_chunks: Callable[[], Iterable[bytes]]) -> str:
    """Why ``info``'s ``CA:`` (unsigned) is not true of its object, whose digests ``got``
    match ``info`` (checked first, ``expect_info``); "" if it is or there is none. The
    judge is the store's (``pathadmit.ca_problem``, as ``kiln store verify`` and every
    import use); ``nar_chunks()`` streams the NAR, read only for a non-sha256 claim."""
    if not info.ca:
        return ""
    return ca_problem(info, nar_content(got.nar_hash, got.flat_hash, nar_chunks))


def verifier_for(info: ni.NarInfo) -> NarVerifier:
    """A verifier bounded by ``info``'s FileSize and NarSize: a download stops at the
    first, the NAR inside at the second."""
    return NarVerifier(max_nar_size=info.nar_size, max_file_size=info.file_size, what=object_of(info))


def verified_bytes(info: ni.NarInfo, data: bytes) -> Digests:
    """The digests of an object held in memory, checked against ``info``: ``FormatError``
    past a size limit, ``HashMismatch`` for a wrong digest or size."""
    ver = verifier_for(info)
    ver.update(data)
    digests = ver.finish()
    expect_info(info, digests)
    return digests


def trusted_sigs_only(info: ni.NarInfo, trusted: list[PublicKey]) -> ni.NarInfo:
    """``info`` keeping only the signatures that verify against ``trusted`` keys: what an
    upload may add to a published narinfo's (a merge must not accumulate junk ``Sig:``
    lines from every authenticated upload)."""
    good = tuple(s for s in info.sigs if valid_signers(dataclasses.replace(info, sigs=(s,)), trusted))
    return info if good == info.sigs else dataclasses.replace(info, sigs=good)


class UntrustedError(KilnError):
    """A narinfo lacks enough valid signatures from trusted keys."""


def check_narinfo(
    text: str,
    store_dir: str,
    trusted: list[PublicKey],
    sigs_needed: int = 1,
    hash_part: str | None = None,
    source: str | None = None,
    content_proves: bool = False,
) -> ni.NarInfo:
    """Parse and admit a narinfo (see module docstring); raise a ``KilnError`` if not.
    ``source``: the cache a client read it from (its URL), for a client's wording of a
    narinfo that is not zstd; None: a registry admitting an upload. ``content_proves``:
    a path whose ``CA:`` gives it needs no signature, because the caller checks the
    content against the claim before the path is used (``caclaim``)."""
    info = ni.parse(text, store_dir)
    base = info.path.rsplit("/", 1)[1]
    if hash_part is not None and base[:32] != hash_part:
        raise FormatError(f"narinfo for {hash_part} describes another path: {info.path}")
    if info.compression != "zstd":
        if source is not None:  # a cache Nix wrote with its default (xz): not kiln's to fix
            raise FormatError(
                f"{info.path}: the source cache {source} is "
                f"{'uncompressed' if info.compression == 'none' else info.compression + '-compressed'} "
                f"(Compression: {info.compression}); kiln reads only zstd binary caches: "
                f"{layout.ZSTD_HINT}"
            )
        raise FormatError(f"{info.path}: Compression is {info.compression!r}; this registry stores zstd only")
    if info.file_hash is None or info.file_size is None or info.file_hash.algo != "sha256":
        raise FormatError(f"{info.path}: narinfo needs a sha256 FileHash and a FileSize")
    if info.url != nar_key(info.file_hash):
        raise FormatError(f"{info.path}: URL must be {nar_key(info.file_hash)}, found {info.url!r}")
    # a path its content address proves instead of signatures, as Nix takes one
    # (``caclaim``), where the caller checks the content against the claim
    if sigs_needed > 0 and not (content_proves and claim_gives_path(info)):
        good = valid_signers(info, trusted)
        if len(good) < sigs_needed:
            have = ", ".join(s.partition(":")[0] for s in info.sigs) or "none"
            # (no key trusted at all: the usual cause is a missing flag, so say which)
            fix = "" if trusted else "; a key is trusted with --trusted-key PUB"
            # a signature under a trusted key's name that does not verify is no missing
            # signature: the narinfo (or its content's hash) was changed after signing
            names = {k.name for k in trusted}
            forged = sorted({s.partition(":")[0] for s in info.sigs} & names - set(good))
            bad = (
                f"; {', '.join(forged)}'s signature does not verify: the narinfo was changed after it "
                "was signed (NarHash, NarSize, references or path), or the signature is forged"
                if forged
                else ""
            )
            raise UntrustedError(
                f"{info.path}: {len(good)} valid signature(s) from trusted keys, {sigs_needed} required "
                f"(signatures by: {have}; trusted: {', '.join(k.name for k in trusted) or 'none'}{fix}){bad}"
            )
    return info


def nar_file_hash(info: PathInfo) -> Hash:
    """The hash of ``info``'s compressed object (its FileHash), which every narinfo
    ``check_narinfo`` admits has, and every store path a push sends (``push`` refuses
    one without first); ``FormatError`` for one without (a caller that skipped those)."""
    if info.file_hash is None:
        raise FormatError(f"{info.path}: no FileHash (no compressed object is known for it)")
    return info.file_hash
