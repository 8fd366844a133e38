"""Hashed source mirrors: where they come from, how they are laid out, trees inside them.

A mirror is a directory, a ``file://`` URL or an ``http(s)`` URL holding files under
``<mirror>/<algo>/<hex digest>`` (only ``sha256`` in practice). ``fetch_url`` tries the
explicit mirrors, then those in ``KILN_SOURCE_MIRRORS``, before any URL.

NAR-hashed sources (``fetchgit``, recursive fetchurl) live in the same flat layout: the
file stored is the tree's NAR serialisation, and the sha256 of a NAR *is* the recursive
hash, so fetching it is an ordinary verified flat fetch followed by a restore
(``fetch_tree_from_mirror``); ``put_tree_in_mirror`` stores one after checking the hash.
Writes into a mirror directory go through a temporary file and a rename, so a reader never
sees a partial entry; a write that fails there (a full disk) is a ``LocalWriteError``
naming the file.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from .errors import FormatError, HashMismatch
from .fetchsink import LocalWriteError
from .hashes import Hash
from .nar_restore import write_all

CHUNK = 1 << 16


_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*"


def parse_mirror_list(text: str) -> list[str]:
    """Split a ``KILN_SOURCE_MIRRORS`` value.

    Whitespace separates entries (the recommended form). For backward compatibility a
    colon separates too, PATH-style, but only where the text after it starts a new entry
    (``/`` for a path, or ``scheme://``), and never the colon of a ``scheme:`` itself. So
    ``/a:/b`` is two paths, ``http://h:8080/m:https://x/y`` two URLs, and a colon inside a
    URL (a port, an IPv6 literal ``http://[::1]:8080/m``, ``user:password@``) is kept
    (a mirror with credentials is then skipped with a warning: kiln sends none).
    Words without ``://`` are split at every colon, as they always were."""
    out: list[str] = []
    for word in text.split():
        if "://" not in word:
            out.extend(p for p in word.split(":") if p)
            continue
        start = 0
        for m in re.finditer(":", word):
            i = m.start()
            after = word[i + 1 :]
            ends_scheme = after.startswith("//") and re.fullmatch(_SCHEME, word[start:i])
            if ends_scheme or not (
                (after.startswith("/") and not after.startswith("//")) or re.match(_SCHEME + "://", after)
            ):
                continue
            if word[start:i]:
                out.append(word[start:i])
            start = i + 1
        if word[start:]:
            out.append(word[start:])
    return out


def mirrors_from_env(explicit: Iterable[str] = ()) -> list[str]:
    """The explicit mirrors, then those in ``KILN_SOURCE_MIRRORS``, without duplicates."""
    seen: list[str] = []
    for m in [*explicit, *parse_mirror_list(os.environ.get("KILN_SOURCE_MIRRORS", ""))]:
        m = str(m).rstrip("/") or "/"
        if m not in seen:
            seen.append(m)
    return seen


def mirror_location(mirror: str, expected: Hash) -> str:
    """Where ``expected`` lives in ``mirror`` (a path or a URL)."""
    return f"{mirror.rstrip('/')}/{expected.algo}/{expected.hex}"


def fetch_tree_from_mirror(expected: Hash, dest: Path, *, mirrors: list[str], progress: bool = False) -> bool:
    """Restore the tree whose NAR hash is ``expected`` from a hashed mirror to ``dest``.
    Returns False (and leaves nothing at ``dest``) if no mirror has it."""
    from . import nar_restore
    from .fetch import FetchError, fetch_url

    if not mirrors_from_env(mirrors):
        return False
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name[:60]}.", suffix=".nar", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            fetch_url([], expected, tmp, mirrors=mirrors, progress=progress)
        except FetchError:
            return False
        try:
            with open(tmp, "rb") as f:
                nar_restore.restore(f, dest)
        except FormatError as e:
            # the bytes do hash to ``expected``, so they are what the mirror holds under
            # that name: a flat file (a recipe that gave a tarball's sha256 where a tree's
            # NAR hash belongs, say). Not this tree: the other sources get their turn,
            # and report the hash they do find.
            print(
                f"warning: mirror entry for {expected.to_hex()} is not a NAR ({e}); "
                "was a flat file's sha256 given for a tree? trying the other sources",
                file=sys.stderr,
            )
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def put_tree_in_mirror(tree: Path, mirror_dir: Path, expected: Hash) -> None:
    """Store the NAR of ``tree`` in a hashed mirror directory under ``expected``; raises
    ``HashMismatch`` (storing nothing) if the tree's NAR hash differs."""
    from . import nar

    target_dir = Path(mirror_dir) / expected.algo
    fd, tmp_name = _temp_in(target_dir, ".nar")
    try:
        h = hashlib.new(expected.algo)
        with os.fdopen(fd, "wb", buffering=0) as out:
            for chunk in nar.dump(tree):
                _write(out, chunk, tmp_name)
                h.update(chunk)
            _sync(out, tmp_name)
        got = Hash(expected.algo, h.digest())
        if got != expected:
            raise HashMismatch(str(tree), expected.to_hex(), got.to_hex())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target_dir / expected.hex)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def copy_to_mirror(src: Path, mirror_dir: Path, algo: str = "sha256") -> Hash:
    """Copy a file into a hashed mirror directory (atomically) and return its hash."""
    h = hashlib.new(algo)
    target_dir = Path(mirror_dir) / algo
    fd, tmp_name = _temp_in(target_dir, "")
    try:
        with os.fdopen(fd, "wb", buffering=0) as out, open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                _write(out, chunk, tmp_name)
                h.update(chunk)
            _sync(out, tmp_name)
        digest = Hash(algo, h.digest())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target_dir / digest.hex)
        return digest
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _temp_in(target_dir: Path, suffix: str) -> tuple[int, str]:
    """A new temporary file in ``target_dir`` (made if missing): ``mkstemp``'s pair."""
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=".in.", suffix=suffix, dir=target_dir)
    except OSError as e:
        raise LocalWriteError.of(e, target_dir / ".in.", "a mirror entry") from e


def _write(out: BinaryIO, chunk: bytes, name: str) -> None:
    """Write ``chunk`` to the unbuffered ``out`` (a buffer would be written again at its
    close after a failure, and fail again, without a name)."""
    try:
        write_all(out.fileno(), chunk)
    except OSError as e:
        raise LocalWriteError.of(e, name, "a mirror entry") from e


def _sync(out: BinaryIO, name: str) -> None:
    try:
        out.flush()
        os.fsync(out.fileno())
    except OSError as e:
        raise LocalWriteError.of(e, name, "a mirror entry") from e
