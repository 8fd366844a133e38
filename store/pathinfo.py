"""``PathInfo``: what the store knows about one valid path (one row of the ``paths`` table,
the signed part of a narinfo).

The signature fingerprint is Nix's (``ValidPathInfo::fingerprint``):
``1;<path>;<narHash as sha256:nix32>;<narSize>;<comma-separated sorted full ref paths>``.
It does not cover the compressed file (URL, FileHash, FileSize), the deriver or the
content address (``ca``); kiln checks the compressed file against ``file_hash``
separately and always re-derives the NAR hash while streaming, so an unsigned FileHash
cannot smuggle content in, and an imported ``ca`` is checked against the content
(``pathadmit.check_ca``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import FormatError
from .hashes import Hash


@dataclass(frozen=True, slots=True)
class PathInfo:
    """Metadata of a valid store path. ``references`` are full store paths, sorted;
    ``file_hash``/``file_size`` describe the zstd-compressed NAR object."""

    path: str
    nar_hash: Hash
    nar_size: int
    references: tuple[str, ...] = ()
    deriver: str | None = None
    sigs: tuple[str, ...] = ()
    file_hash: Hash | None = None
    file_size: int | None = None
    ca: str | None = None
    registration_time: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if tuple(sorted(set(self.references))) != tuple(self.references):
            object.__setattr__(self, "references", tuple(sorted(set(self.references))))

    def fingerprint(self) -> bytes:
        """The bytes an ed25519 signature covers."""
        if self.nar_size <= 0:
            raise FormatError(f"cannot make a fingerprint for {self.path}: narSize is {self.nar_size}")
        if self.nar_hash.algo != "sha256":
            raise FormatError(f"cannot make a fingerprint for {self.path}: NAR hash is not sha256")
        return (
            f"1;{self.path};{self.nar_hash.to_nix32()};{self.nar_size};{','.join(self.references)}".encode()
        )
