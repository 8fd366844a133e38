"""Store paths, computed exactly as Nix computes them.

A store path is ``<storedir>/<digest>-<name>`` where ``digest`` is 32 nix32 characters:
the SHA-256 of the fingerprint ``<type>:sha256:<hex inner>:<storedir>:<name>`` XOR-folded
to 20 bytes. The store dir is part of the hash, so the same content in ``/kiln/store``
and ``/nix/store`` gets different digests.

Type strings (Nix ``makeType``):
- ``text[:ref...]`` for ``.drv`` files (inner digest: sha256 of the text);
- ``source[:ref...][:self]`` for NAR-hashed content (inner digest: sha256 of the NAR);
- ``output:<name>`` for derivation outputs (inner digest: hash of the derivation modulo).
- Fixed outputs that are not recursive sha256 use ``output:out`` over
  ``sha256("fixed:out:<method><algo>:<hex>:")``.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import nixbase32
from .errors import FormatError
from .hashes import Hash

DEFAULT_STORE_DIR = "/kiln/store"
HASH_PART_LEN = 32
_NAME_RE = re.compile(r"^[A-Za-z0-9+\-._?=]+\Z")
MAX_NAME_LEN = 211


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid store path name, else raise ``FormatError``.

    Nix's rules: 1..211 characters from ``[A-Za-z0-9+-._?=]``, not starting with ``.``.
    """
    if not name:
        raise FormatError("store path name is empty")
    if len(name) > MAX_NAME_LEN:
        raise FormatError(f"store path name {name[:40]!r}... is {len(name)} characters (max {MAX_NAME_LEN})")
    if name.startswith("."):
        raise FormatError(f"store path name {name!r} must not start with '.'")
    if not _NAME_RE.match(name):
        bad = sorted({c for c in name if not _NAME_RE.match(c)})
        raise FormatError(f"store path name {name!r} contains invalid characters {''.join(bad)!r}")
    return name


#: Entries of a local store's root (``LocalStore``: its layout, and what commands keep
#: beside it). The materialised trees live at ``<root>/<store dir minus "/">``, so a store
#: dir starting with one of these would make the store dir one of them: GC would then
#: delete e.g. every object as an "unregistered tree".
STORE_ROOT_ENTRIES = frozenset(
    {
        "attestations",
        "config.json",
        "db.sqlite",
        "db.sqlite-journal",
        "db.sqlite-shm",
        "db.sqlite-wal",
        "eval-cache",
        "gc.lock",
        "gcroots",
        "index-state",
        "keys",
        "locks",
        "logs",
        "objects",
        "quarantine",
        "reserved",
        "temproots",
        "tmp",
    }
)


def check_store_dir(store_dir: str, *, local: bool = False) -> str:
    """Return ``store_dir`` if it can be a store dir, else raise ``FormatError``.

    A store dir is an absolute, normalised path with at least one component: no trailing
    slash, no empty, ``.`` or ``..`` components (``/kiln/..`` would map a local store's
    trees onto its root itself). A ``local`` store's dir (``LocalStore``, whose trees live
    at ``<root>/<store dir>``) may moreover not start with one of ``STORE_ROOT_ENTRIES``;
    other stores' (a registry's, a narinfo's) may. Called for every parsed path, so the
    answer is cached."""
    problem = _store_dir_problem(store_dir) or (_clash(store_dir) if local else "")
    if problem:
        raise FormatError(
            f"invalid store dir {store_dir!r}: {problem} "
            f"(expected an absolute path like {DEFAULT_STORE_DIR} without '.', '..' or empty components)"
        )
    return store_dir


def new_store_dir_problem(store_dir: str) -> str:
    """Why a *new* local store may not use ``store_dir`` ("" if it may), beyond
    ``check_store_dir``: builds pass store paths in whitespace-separated lists (a
    ``.deb`` list, ``urls``) and in ``PATH``, so a space or a ``:`` in the store dir
    breaks them. Existing stores with one still open (what they hold stays readable)."""
    odd = sorted({c for c in store_dir if c.isspace() or c == ":"})
    if odd:
        return f"it contains {', '.join(repr(c) for c in odd)}, which builds cannot pass in lists and PATH"
    return ""


@functools.lru_cache(maxsize=64)  # every StorePath.parse asks
def _store_dir_problem(store_dir: str) -> str:
    """Why ``store_dir`` is not a valid store dir ("" if it is)."""
    if not store_dir.startswith("/"):
        return "it is not absolute"
    if store_dir == "/":
        return "it is the root directory"
    if store_dir.endswith("/"):
        return "it ends with '/'"
    parts = store_dir[1:].split("/")
    if "" in parts:
        return "it has an empty component ('//')"
    bad = [c for c in parts if c in (".", "..")]
    if bad:
        return f"it has a {bad[0]!r} component"
    # it is written into narinfos, nix-cache-info, .drv files and build environments, one
    # line each: a line break would inject fields, other control characters break them
    # (a byte that is not UTF-8 arrives as a lone surrogate, which is not printable).
    # A plain space is printable and allowed: stores made with one stay usable.
    odd = sorted({c for c in store_dir if not c.isprintable()})
    if odd:
        return f"it contains {', '.join(repr(c) for c in odd)} (printable characters only)"
    return ""


def _clash(store_dir: str) -> str:
    first = store_dir[1:].split("/")[0]
    if first in STORE_ROOT_ENTRIES:
        return (
            f"its first component {first!r} clashes with the store root's own entries "
            f"({', '.join(sorted(STORE_ROOT_ENTRIES))}), so a local store cannot use it; the paths "
            "of a store an older kiln made with it stay usable from a registry (any store dir): "
            "push them there with that kiln (kiln push --to file:///DIR)"
        )
    return ""


@dataclass(frozen=True, slots=True, order=True)
class StorePath:
    """A store path split into its parts. ``str()`` gives the full path."""

    store_dir: str
    hash_part: str
    name: str

    @property
    def base(self) -> str:
        """``<hash>-<name>``, the form narinfo ``References`` uses."""
        return f"{self.hash_part}-{self.name}"

    def __str__(self) -> str:
        return f"{self.store_dir}/{self.hash_part}-{self.name}"

    @classmethod
    def parse(cls, text: str, store_dir: str | None = None) -> StorePath:
        """Parse ``/dir/<hash>-<name>``. When ``store_dir`` is given the path must be in it."""
        d, sep, base = text.rpartition("/")
        if not sep or not d:
            raise FormatError(f"{text!r} is not a store path (expected <storedir>/<hash>-<name>)")
        if store_dir is not None and d != store_dir:
            raise FormatError(f"path {text!r} is not in the store {store_dir!r}")
        sp = cls.parse_base(base, d)
        return sp

    @classmethod
    def parse_base(cls, base: str, store_dir: str) -> StorePath:
        """Parse ``<hash>-<name>`` relative to ``store_dir``."""
        if len(base) < HASH_PART_LEN + 2 or base[HASH_PART_LEN] != "-":
            raise FormatError(f"{base!r} is not a store path base name (expected <32-char hash>-<name>)")
        h, name = base[:HASH_PART_LEN], base[HASH_PART_LEN + 1 :]
        if not nixbase32.is_valid(h, 20):
            raise FormatError(f"{base!r} has an invalid hash part {h!r}")
        check_name(name)
        return cls(check_store_dir(store_dir), h, name)


def compress_hash(digest: bytes, size: int = 20) -> bytes:
    """XOR-fold ``digest`` to ``size`` bytes (Nix ``compressHash``)."""
    out = bytearray(size)
    for i, b in enumerate(digest):
        out[i % size] ^= b
    return bytes(out)


def make_store_path(type_: str, inner: Hash, name: str, store_dir: str = DEFAULT_STORE_DIR) -> StorePath:
    """Nix ``makeStorePath``: the path for fingerprint ``type:sha256:<hex>:<storedir>:<name>``."""
    check_name(name)
    check_store_dir(store_dir)
    fp = f"{type_}:{inner.algo}:{inner.hex}:{store_dir}:{name}"
    digest = compress_hash(hashlib.sha256(fp.encode()).digest())
    return StorePath(store_dir, nixbase32.encode(digest), name)


def _type_with_refs(kind: str, references: list[StorePath] | tuple[StorePath, ...], self_ref: bool) -> str:
    parts = [kind, *sorted(str(r) for r in references)]
    if self_ref:
        parts.append("self")
    return ":".join(parts)


def make_text_path(
    name: str, text: bytes, references: Iterable[StorePath] = (), store_dir: str = DEFAULT_STORE_DIR
) -> StorePath:
    """Path of a text object (a ``.drv`` file): ``text:<refs>`` over sha256(text)."""
    return make_store_path(
        _type_with_refs("text", list(references), False), Hash.sha256_of(text), name, store_dir
    )


def make_source_path(
    name: str,
    nar_hash: Hash,
    references: Iterable[StorePath] = (),
    self_ref: bool = False,
    store_dir: str = DEFAULT_STORE_DIR,
) -> StorePath:
    """Path of NAR-addressed content, as ``nix-store --add`` computes it."""
    if nar_hash.algo != "sha256":
        raise FormatError("source paths need a sha256 NAR hash")
    return make_store_path(_type_with_refs("source", list(references), self_ref), nar_hash, name, store_dir)


def make_fixed_output_path(
    name: str,
    h: Hash,
    recursive: bool,
    store_dir: str = DEFAULT_STORE_DIR,
    references: Sequence[StorePath] = (),
) -> StorePath:
    """Nix ``makeFixedOutputPath``: recursive sha256 is a source path; anything else hashes
    ``fixed:out:<r:>algo:hex:``."""
    if recursive and h.algo == "sha256":
        return make_source_path(name, h, references, store_dir=store_dir)
    if references:
        raise FormatError("flat fixed-output paths cannot have references")
    inner = Hash.sha256_of(f"fixed:out:{'r:' if recursive else ''}{h.algo}:{h.hex}:".encode())
    return make_store_path("output:out", inner, name, store_dir)


def make_output_path(drv_hash: Hash, output: str, name: str, store_dir: str = DEFAULT_STORE_DIR) -> StorePath:
    """Output path of an input-addressed derivation whose hash modulo is ``drv_hash``."""
    return make_store_path(
        f"output:{output}", drv_hash, name if output == "out" else f"{name}-{output}", store_dir
    )
