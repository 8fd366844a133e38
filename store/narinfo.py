"""``.narinfo`` files: the metadata a binary cache serves for one store path.

Format (Nix ``NarInfo::to_string``), one ``Key: value`` per line, in this order::

    StorePath: /nix/store/<hash>-<name>
    URL: nar/<filehash>.nar.zst
    Compression: zstd
    FileHash: sha256:<nix32>         (only when known)
    FileSize: <bytes>                (only when known)
    NarHash: sha256:<nix32>
    NarSize: <bytes>
    References: <base> <base> ...    (always present; "References: " when empty)
    Deriver: <base>                  (optional)
    Sig: <name>:<base64>             (zero or more)
    CA: <content address>            (optional)

``render`` produces exactly that (byte-identical to what ``nix copy --to file://`` writes
for the same data). ``parse`` is strict about the keys it knows: a malformed line, a
duplicated single-valued key, a bad hash, size or store path, or a missing required key
(StorePath, URL, NarHash, NarSize) raises ``FormatError`` naming the line number and the
line. Unknown keys are ignored, as Nix ignores them, so newer writers stay readable.
Like Nix, a missing ``Compression`` means ``bzip2`` and ``Deriver: unknown-deriver``
means no deriver.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .errors import FormatError
from .hashes import Hash
from .pathinfo import PathInfo
from .paths import StorePath

_SINGLE = (
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "CA",
)
_REQUIRED = ("StorePath", "URL", "NarHash", "NarSize")


@dataclass(frozen=True, slots=True)
class NarInfo(PathInfo):
    """``PathInfo`` plus where the (compressed) NAR file is and how it is compressed."""

    url: str = ""
    compression: str = "none"

    @classmethod
    def from_pathinfo(cls, info: PathInfo, url: str, compression: str) -> NarInfo:
        kw = {f.name: getattr(info, f.name) for f in fields(PathInfo)}
        return cls(**kw, url=url, compression=compression)

    def to_pathinfo(self) -> PathInfo:
        return PathInfo(**{f.name: getattr(self, f.name) for f in fields(PathInfo)})

    def render(self) -> str:
        """The narinfo text (Nix's exact line format; ends with a newline)."""
        sd = _store_dir(self.path)
        lines = [f"StorePath: {self.path}", f"URL: {self.url}", f"Compression: {self.compression}"]
        if self.file_hash is not None:
            lines.append(f"FileHash: {self.file_hash.to_nix32()}")
        if self.file_size is not None:
            lines.append(f"FileSize: {self.file_size}")
        lines.append(f"NarHash: {self.nar_hash.to_nix32()}")
        lines.append(f"NarSize: {self.nar_size}")
        lines.append("References: " + " ".join(StorePath.parse(r, sd).base for r in self.references))
        if self.deriver:
            lines.append(f"Deriver: {StorePath.parse(self.deriver, sd).base}")
        lines += [f"Sig: {s}" for s in self.sigs]
        if self.ca:
            lines.append(f"CA: {self.ca}")
        return "\n".join(lines) + "\n"


def _store_dir(path: str) -> str:
    return path.rpartition("/")[0]


def _int(value: str, what: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise FormatError(f"{what} must be a non-negative decimal integer, found {value!r}")
    return int(value)


def parse(text: str, store_dir: str) -> NarInfo:
    """Parse narinfo ``text`` whose paths live in ``store_dir`` (see module docstring)."""
    seen: dict[str, str] = {}
    sigs: list[str] = []
    for lineno, raw in enumerate(text.split("\n"), 1):
        if raw == "":
            continue
        key, sep, value = raw.partition(": ")
        if not sep:
            # Nix also writes "References: " (with the space); accept "Key:" with nothing after.
            if raw.endswith(":") and " " not in raw:
                key, value = raw[:-1], ""
            else:
                raise FormatError(f"narinfo line {lineno}: expected 'Key: value', found {raw[:80]!r}")
        if key == "Sig":
            if not value:
                raise FormatError(f"narinfo line {lineno}: empty Sig")
            sigs.append(value)
            continue
        if key not in _SINGLE:
            continue  # unknown keys are ignored, like Nix does
        if key in seen:
            raise FormatError(f"narinfo line {lineno}: duplicate {key}")
        seen[key] = value
        try:
            _check(key, value, store_dir)
        except FormatError as e:
            raise FormatError(f"narinfo line {lineno} ({raw[:80]!r}): {e}") from None
    missing = [k for k in _REQUIRED if k not in seen]
    if missing:
        raise FormatError(f"narinfo is missing required field(s): {', '.join(missing)}")
    refs = tuple(str(StorePath.parse_base(b, store_dir)) for b in seen.get("References", "").split())
    deriver = seen.get("Deriver")
    return NarInfo(
        path=seen["StorePath"],
        nar_hash=Hash.parse(seen["NarHash"]),
        nar_size=int(seen["NarSize"]),
        references=refs,
        deriver=str(StorePath.parse_base(deriver, store_dir))
        if deriver and deriver != "unknown-deriver"
        else None,
        sigs=tuple(sigs),
        file_hash=Hash.parse(seen["FileHash"]) if "FileHash" in seen else None,
        file_size=int(seen["FileSize"]) if "FileSize" in seen else None,
        ca=seen.get("CA") or None,
        url=seen["URL"],
        compression=seen.get("Compression") or "bzip2",
    )


def _check(key: str, value: str, store_dir: str) -> None:
    """Validate one known field (raises FormatError without the line context)."""
    if key == "StorePath":
        StorePath.parse(value, store_dir)
    elif key == "URL":
        if not value or any(c.isspace() for c in value):
            raise FormatError("URL must be non-empty without whitespace")
    elif key in ("NarHash", "FileHash"):
        if ":" not in value and "-" not in value:
            raise FormatError(f"{key} needs an algorithm prefix like 'sha256:'")
        Hash.parse(value)
    elif key in ("NarSize", "FileSize"):
        _int(value, key)
    elif key == "References":
        for b in value.split():
            StorePath.parse_base(b, store_dir)
    elif key == "Deriver" and value != "unknown-deriver":
        StorePath.parse_base(value, store_dir)
    elif key == "Compression" and (not value or any(c.isspace() for c in value)):
        raise FormatError("Compression must be one word")
