"""Checks on the parts of a path's metadata that no signature covers: its content
address (``ca``) and its list of signatures.

A narinfo's signature fingerprint is ``1;path;narHash;narSize;refs`` (``pathinfo``): the
``CA:`` field and the ``Sig:`` lines themselves are whatever the registry (or an
uploader with a write token) wrote. So wherever such metadata is admitted, its claims
are checked against the content, never taken on trust.

Invariants:

- ``ca_problem`` is the one judge of a ``ca`` claim, for every place one is checked:
  ``kiln store verify`` (``verify``), import into a local store (``importbatch``,
  ``Registering.import_nar``/``import_object``), a registry's upload admission, mirror
  sync and ``kiln registry verify`` (``registry.verify.ca_refusal``). It follows Nix:
  the claimed hash must be the content's hash by the claimed method
  (``LocalStore::addToStore``, "ca hash mismatch") and the store path must be the one
  the claim implies (``makeFixedOutputPathFromCA``, which ``copyStorePath`` asserts):

  - ``fixed:r:<algo>:X``: X is the hash of the NAR (for sha256: the NarHash); the path
    is the source path of X with the references (``self`` for a self-reference), or,
    for another algorithm, the ``fixed:out:r:`` output path (no references);
  - ``fixed:<algo>:X`` (flat): X is the hash of the one non-executable regular file the
    path is; the path is the ``fixed:out:`` output path (no references);
  - ``text:sha256:X``: X is the sha256 of the one non-executable regular file; the path
    is the ``text:<refs>`` path of X.

  The judge needs only a ``ContentHash`` (the content's hash by a method), so a caller
  holding a tree (``tree_content``), a NAR stream (``FlatHasher``) or a registry's digest
  record can ask it. Its callers have checked the NarHash against the content first.
- ``keep_sigs`` is the one filter of imported signature lists (copy, substitution,
  ``import_*``): only well-formed signatures, each once, with trusted keys only valid
  ones by them, at most ``MAX_SIGS``. A registry cannot grow a store's database without
  bound by serving junk ``Sig:`` lines. Nor can whoever wrote a path's ``Sig:`` lines
  first crowd out a genuine signature listed after theirs: over the limit, which ones
  are kept is decided by what can be checked, not by their order — first every
  signature valid by a key known here (``local_keys``: the store's own keys and
  ``$KILN_HOME/keys``), then those by names no such key has, last those naming a
  known key but not valid by it (forged, or another key of the same name); within a
  rank, and in what is kept, the order they came in. Signatures by keys unknown here
  cannot be told from junk, so among them the limit is first come, first kept.
- ``sigs_to_add`` is the one filter of signatures added to a path the store already
  holds (``kiln copy`` of a valid path whose source re-signed it, as ``nix store
  copy-sigs``): only well-formed ones, each once, not there already, valid by a key
  trusted for that copy for the *local* path's fingerprint (its NarHash, NarSize and
  references as this store has them: a signature of another build of the same path is
  no signature of this one), at most up to ``MAX_SIGS`` in all. It only ever adds.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import hashlib
import os
import stat
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from . import nar
from .errors import FormatError, KilnError
from .hashes import Hash
from .nar_read import HDR_CONTENTS, HDR_REGULAR, HDR_ROOT, TOK_CLOSE
from .pathinfo import PathInfo
from .paths import StorePath, make_fixed_output_path, make_source_path, make_store_path

if TYPE_CHECKING:  # (imported where used: kiln imports lazily for start-up time)
    from .signing import PublicKey

#: ``(algo, recursive)`` -> the content's hash by that method: of its NAR (recursive), or
#: of the one non-executable regular file it is (flat; None when it is not one)
ContentHash = Callable[[str, bool], "Hash | None"]

#: the most signatures kept for one imported path (a real path has one or two)
MAX_SIGS = 64

_NOT_FLAT = "(not a plain file)"


class ContentAddressError(KilnError):
    """A path's ``ca`` claim is not true of its content: it is refused."""


def ca_problem(info: PathInfo, content: ContentHash) -> str:
    """Why ``info.ca`` is not true of the content ``content`` describes ("" when it is,
    or when there is no ``ca``); see the module docstring. A malformed ``ca`` is a
    problem too, never an exception."""
    if not info.ca:
        return ""
    try:
        return _problem(info, info.ca, content)
    except FormatError as e:
        return f"ca {info.ca[:80]!r} is malformed: {e}"


def check_ca(info: PathInfo, content: ContentHash) -> None:
    """Raise ``ContentAddressError`` (naming the path, what the claim expects and what
    was found) unless ``ca_problem`` finds nothing."""
    why = ca_problem(info, content)
    if why:
        raise ContentAddressError(f"{info.path}: refusing its content address: {why}")


def _problem(info: PathInfo, ca: str, content: ContentHash) -> str:
    sp = StorePath.parse(info.path)
    method, _, rest = ca.partition(":")
    recursive = method == "fixed" and rest.startswith("r:")
    h = Hash.parse(rest.removeprefix("r:") if recursive else rest)
    if method == "text":
        if h.algo != "sha256":
            raise FormatError("a text content address must be sha256")
        what = "the file's sha256"
        want = make_store_path(":".join(["text", *info.references]), h, sp.name, sp.store_dir)
    elif method == "fixed":
        what = f"the NAR's {h.algo}" if recursive else f"the file's {h.algo}"
        if recursive and h.algo == "sha256":
            others = [StorePath.parse(r) for r in info.references if r != info.path]
            want = make_source_path(sp.name, h, others, info.path in info.references, sp.store_dir)
        elif info.references:
            return (
                f"ca {ca}: a {'flat' if not recursive else h.algo} fixed-output path cannot have references"
            )
        else:
            want = make_fixed_output_path(sp.name, h, recursive, sp.store_dir)
    else:
        raise FormatError("expected 'text:' or 'fixed:'")
    got = content(h.algo, recursive)
    if got is None or got.digest != h.digest:
        found = got.to_nix32() if got is not None else _NOT_FLAT
        return f"ca {ca} expects {what} to be {h.to_nix32()}, found {found}"
    if str(want) != info.path:
        return f"ca {ca} gives path {want}, not {info.path}"
    return ""


def tree_content(real: Path, nar_hash: Hash) -> ContentHash:
    """The ``ContentHash`` of the tree at ``real``, whose NAR has sha256 ``nar_hash``
    (checked by the caller, so it is not re-archived for that)."""

    def get(algo: str, recursive: bool) -> Hash | None:
        if recursive:
            if algo == nar_hash.algo:
                return nar_hash
            h = hashlib.new(algo)
            for chunk in nar.dump(real):
                h.update(chunk)
            return Hash(algo, h.digest())
        return flat_file_hash(real, algo)

    return get


def flat_file_hash(real: Path, algo: str = "sha256") -> Hash | None:
    """Hash of the tree at ``real`` if it is what a flat hash covers, a non-executable
    regular file (as Nix requires), else None. The tree itself, never what it points at:
    a symlink to a file with the right bytes elsewhere proves nothing about the path."""
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symlink
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o111:
            return None
        h = hashlib.new(algo)
        while b := os.read(fd, 1 << 20):
            h.update(b)
        return Hash(algo, h.digest())
    finally:
        os.close(fd)


#: the start of the NAR of one non-executable regular file, before its 8-byte size
_FLAT_HEAD = HDR_ROOT + HDR_REGULAR + HDR_CONTENTS


class FlatHasher:
    """Fed a NAR's bytes in order, hashes the contents of the file it holds if the NAR
    is exactly one non-executable regular file (``result``: that hash, else None).
    Memory stays flat: only the header and the last few bytes are kept."""

    __slots__ = ("_algo", "_h", "_head", "_size", "_left", "_tail", "_off")

    def __init__(self, algo: str = "sha256") -> None:
        self._algo, self._h = algo, hashlib.new(algo)
        self._head = bytearray()
        self._size = self._left = -1
        self._tail = bytearray()
        self._off = False  # not a flat file's NAR (or not one we can tell)

    def update(self, data: bytes | memoryview) -> None:
        if self._off:
            return
        mv = memoryview(data)
        if self._left < 0:
            need = len(_FLAT_HEAD) + 8 - len(self._head)
            self._head += mv[:need]
            mv = mv[need:]
            n = min(len(self._head), len(_FLAT_HEAD))
            if self._head[:n] != _FLAT_HEAD[:n]:
                self._off = True
                return
            if len(self._head) < len(_FLAT_HEAD) + 8:
                return
            self._size = self._left = int.from_bytes(self._head[len(_FLAT_HEAD) :], "little")
        if self._left:
            take = mv[: self._left]
            self._h.update(take)
            self._left -= len(take)
            mv = mv[len(take) :]
        if mv:
            self._tail += mv
            if len(self._tail) > 8 + len(TOK_CLOSE):
                self._off = True

    def result(self) -> Hash | None:
        if self._off or self._left != 0 or self._tail != bytes(-self._size % 8) + TOK_CLOSE:
            return None
        return Hash(self._algo, self._h.digest())


def nar_content(
    nar_hash: Hash, flat_sha256: Hash | None, nar_chunks: Callable[[], Iterable[bytes]]
) -> ContentHash:
    """The ``ContentHash`` of a NAR known by its sha256 ``nar_hash`` and the sha256 of
    the flat file it holds (``FlatHasher``; None if it is not one); other algorithms
    (rare: Nix's old ``sha1``/``md5`` fetches) re-read it with ``nar_chunks()``."""

    def get(algo: str, recursive: bool) -> Hash | None:
        if algo == "sha256":
            return nar_hash if recursive else flat_sha256
        h, flat = hashlib.new(algo), FlatHasher(algo)
        for chunk in nar_chunks():
            h.update(chunk)
            flat.update(chunk)
        return Hash(algo, h.digest()) if recursive else flat.result()

    return get


# ------------------------------------------------------------------ signatures

_P = TypeVar("_P", bound=PathInfo)


def sigs_to_add(local: PathInfo, offered: Iterable[str], trusted: Iterable[PublicKey]) -> tuple[str, ...]:
    """The signatures of ``offered`` to add to the valid path ``local`` (see the module
    docstring), in their order; () without ``trusted`` keys."""
    from .signing import valid_signers

    keys = list(trusted)
    room = MAX_SIGS - len(local.sigs)
    out: list[str] = []
    for sig in dict.fromkeys(offered):
        if len(out) >= room:
            break
        if sig in local.sigs or not well_formed_sig(sig):
            continue
        if valid_signers(dataclasses.replace(local, sigs=(sig,)), keys):
            out.append(sig)
    return tuple(out)


def well_formed_sig(sig: str) -> bool:
    """Whether ``sig`` looks like a Nix signature: ``<name>:<base64 of 64 bytes>``, the
    name non-empty without whitespace."""
    name, sep, b64 = sig.partition(":")
    if not sep or not name or any(c.isspace() for c in name) or len(b64) != 88:
        return False
    try:
        return len(base64.b64decode(b64, validate=True)) == 64
    except ValueError:
        return False


def keep_sigs(
    info: _P, trusted: Iterable[PublicKey] | None = None, store_root: Path | None = None
) -> tuple[_P, str]:
    """``info`` with only the signatures worth keeping (see the module docstring), at
    most ``MAX_SIGS`` in their order, and a one-line warning saying what was dropped
    ("" when nothing was). ``trusted``: ``PublicKey``s; when non-empty, only valid
    signatures by them are kept. Otherwise, only when more than ``MAX_SIGS`` remain,
    those valid by ``local_keys(store_root)`` are kept first (the keys are read then,
    so the common case reads no file)."""
    keys = list(trusted or [])
    seen = dict.fromkeys(s for s in info.sigs if well_formed_sig(s))
    good = list(seen)
    rank: dict[str, int] = {}  # (with trusted keys: each one's, for the filter and the warning)
    if keys:
        rank = {s: _rank(info, s, keys) for s in good}
        good = [s for s in good if rank[s] == 0]
    if len(good) > MAX_SIGS:
        known = keys or local_keys(store_root)
        chosen = set(sorted(good, key=lambda s: _rank(info, s, known))[:MAX_SIGS])  # (stable)
        kept = tuple(s for s in good if s in chosen)
    else:
        kept = tuple(good)
    if kept == info.sigs:
        return info, ""
    parts = []
    if len(seen) < len(info.sigs):
        parts.append(f"{len(info.sigs) - len(seen)} malformed or repeated")
    if len(good) < len(seen):
        # told apart: a valid signature by a key not trusted here (a rotation, another
        # cache) is no alarm; one in a trusted key's name that does not verify is
        ranks = list(rank.values())
        if n := ranks.count(1):
            parts.append(f"{n} not by a trusted key")
        if n := ranks.count(2):
            parts.append(f"{n} in a trusted key's name but not valid by it")
    if len(good) > MAX_SIGS:
        parts.append(f"{len(good) - MAX_SIGS} over the limit of {MAX_SIGS}")
    why = f"{info.path}: keeping {len(kept)} of its {len(info.sigs)} signatures ({', '.join(parts)} dropped)"
    return dataclasses.replace(info, sigs=kept), why


def _rank(info: PathInfo, sig: str, keys: list[PublicKey]) -> int:
    """0: ``sig`` is valid by one of ``keys``; 1: no key of its name is among them;
    2: it names one of them but is not valid by it."""
    from .signing import valid_signers

    name = sig.partition(":")[0]
    if not any(k.name == name for k in keys):
        return 1
    return 0 if valid_signers(dataclasses.replace(info, sigs=(sig,)), keys) else 2


def local_keys(store_root: Path | None = None) -> list[PublicKey]:
    """The ``PublicKey``s of this machine's own signers: every readable ``*.pub`` in the
    store's ``keys/`` (``default.pub``, what ``kiln build`` signs with by default, and
    rotated ones) when ``store_root`` is given, and in ``$KILN_HOME/keys`` (``kiln key
    generate``'s, for ``--sign-key``; the default store's own). A file that is not a
    public key is skipped: it proves nothing either way."""
    from .home import kiln_home_dir
    from .keyfiles import load_public_key

    dirs = [Path(store_root) / "keys"] if store_root is not None else []
    with contextlib.suppress(KilnError):  # (no home directory: the store's keys only)
        dirs.append(Path(kiln_home_dir()) / "keys")
    out: list[PublicKey] = []
    for d in dict.fromkeys(os.path.realpath(x) for x in dirs):
        try:
            pubs = sorted(Path(d).glob("*.pub"))
        except OSError:
            continue
        for pub in pubs:
            try:
                out.append(load_public_key(pub))
            except (KilnError, OSError):
                continue
    return out


#: dropped-signature warnings shown in full per process; the rest are counted and
#: summed up in one line at exit (a copy after a key rotation drops one on every path)
SHOWN_DROPS = 3
_drops = {"paths": 0}
_drops_lock = threading.Lock()


def admitted_sigs(info: _P, trusted: Iterable[PublicKey] | None = None, store_root: Path | None = None) -> _P:
    """``keep_sigs``, saying on stderr what it dropped (every importer calls this): the
    first ``SHOWN_DROPS`` paths' warnings in full, then one line at exit for all."""
    kept, why = keep_sigs(info, trusted, store_root)
    if why:
        with _drops_lock:  # (importers run on several threads)
            _drops["paths"] += 1
            show = _drops["paths"] <= SHOWN_DROPS
            if not show and not _drops.get("registered"):
                import atexit

                atexit.register(_sum_drops)
                _drops["registered"] = 1
        if show:
            print(f"warning: {why}", file=sys.stderr)
    return kept


def reset_drop_warnings() -> None:
    """Show the next dropped-signature warnings in full again (for a process that runs
    many commands, and tests)."""
    _drops["paths"] = 0


def _sum_drops() -> None:
    if _drops["paths"] <= SHOWN_DROPS:
        return  # (reset since)
    print(
        f"warning: signatures were dropped from {_drops['paths']} paths in all (only the first "
        f"{SHOWN_DROPS} are shown above)",
        file=sys.stderr,
    )
