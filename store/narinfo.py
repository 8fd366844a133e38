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

Size: Nix sets no limit on a narinfo, but every kiln reader holds one in memory, so a
server must not read an unbounded one. ``MAX_SIZE`` is the one limit every kiln
program agrees on: a server accepts narinfos up to it, push and copy refuse (before
uploading anything) to send a larger one, and no reader refuses one within it. A
reference costs at most 213 bytes (hash, ``-``, a name of at most 211 characters, a
space), so it holds over 19,000 references of the longest names and about 90,000 of
typical ones; the widest paths real closures hold have a few thousand.
"""

from __future__ import annotations

import re
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

#: The largest narinfo, in bytes, a kiln server accepts and a kiln client sends (see
#: the module docstring).
MAX_SIZE = 4 << 20


def check_size(text: bytes | str, path: str) -> None:
    """``FormatError`` naming ``path`` if the narinfo ``text`` is over ``MAX_SIZE``
    bytes (what a producer checks before it sends one)."""
    n = len(text if isinstance(text, bytes) else text.encode())
    if n > MAX_SIZE:
        raise FormatError(
            f"the narinfo of {path} is {n} bytes, over the limit of {MAX_SIZE} bytes "
            f"(too many references to publish)"
        )


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
    seen: dict[str, object] = {}  # key -> the field's checked, parsed value
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
        try:
            seen[key] = _check(key, value, store_dir)
        except FormatError as e:
            raise FormatError(f"narinfo line {lineno} ({raw[:80]!r}): {e}") from None
    missing = [k for k in _REQUIRED if k not in seen]
    if missing:
        raise FormatError(f"narinfo is missing required field(s): {', '.join(missing)}")
    deriver = seen.get("Deriver")
    return NarInfo(
        path=seen["StorePath"],  # type: ignore[arg-type]
        nar_hash=seen["NarHash"],  # type: ignore[arg-type]
        nar_size=seen["NarSize"],  # type: ignore[arg-type]
        references=seen.get("References", ()),  # type: ignore[arg-type]
        deriver=deriver if deriver != "unknown-deriver" else None,  # type: ignore[arg-type]
        sigs=tuple(sigs),
        file_hash=seen.get("FileHash"),  # type: ignore[arg-type]
        file_size=seen.get("FileSize"),  # type: ignore[arg-type]
        ca=seen.get("CA") or None,  # type: ignore[arg-type]
        url=seen["URL"],  # type: ignore[arg-type]
        compression=seen.get("Compression") or "bzip2",  # type: ignore[arg-type]
    )


_WHITESPACE = re.compile(r"\s")


def _check(key: str, value: str, store_dir: str) -> object:
    """Validate one known field and return its value as ``NarInfo`` holds it (raises
    FormatError without the line context)."""
    if key == "StorePath":
        return str(StorePath.parse(value, store_dir))
    if key in ("URL", "Compression"):
        if not value or _WHITESPACE.search(value):
            what = (
                "URL must be non-empty without whitespace" if key == "URL" else "Compression must be one word"
            )
            raise FormatError(what)
        return value
    if key in ("NarHash", "FileHash"):
        if ":" not in value and "-" not in value:
            raise FormatError(f"{key} needs an algorithm prefix like 'sha256:'")
        if value != value.strip():  # Nix takes the value as is: a padded hash is corrupt
            raise FormatError(f"{key} has whitespace around the hash")
        return Hash.parse(value)
    if key in ("NarSize", "FileSize"):
        n = _int(value, key)
        if key == "NarSize" and n == 0:  # no NAR is empty; Nix calls such a narinfo corrupt
            raise FormatError("NarSize must be positive, found 0")
        return n
    if key == "References":
        # separated by spaces, as Nix splits them (a tab is part of a name, so an error)
        return tuple(str(StorePath.parse_base(b, store_dir)) for b in value.split(" ") if b)
    if key == "Deriver" and value != "unknown-deriver":
        return str(StorePath.parse_base(value, store_dir))
    if key == "CA" and value:
        check_ca(value)
    return value


def check_ca(ca: str) -> str:
    """``ca`` if it is a content address as Nix writes them (``text:sha256:<hash>``,
    ``fixed:[r:]<algo>:<hash>``), else ``FormatError``: it is not covered by the
    signature, so a malformed one must not reach the store."""
    method, _, rest = ca.partition(":")
    if method == "fixed" and rest.startswith("r:"):
        rest = rest[2:]
    if method not in ("text", "fixed") or (method == "text" and not rest.startswith("sha256:")):
        raise FormatError(f"CA {ca[:80]!r} is not 'text:sha256:...' or 'fixed:[r:]ALGO:...'")
    Hash.parse(rest)  # raises FormatError naming what is wrong
    return ca
