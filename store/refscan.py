"""Runtime reference scanning of a build output.

Theory of operation (as Nix ``path-references.cc``): a store path's runtime dependencies
are the store paths whose 32-character hash part occurs anywhere in its NAR: file
contents, symlink targets and entry names. Like Nix's ``search``, every 32-character
window of nix32 characters counts, whatever surrounds it (``abc<hash>``, a URL-encoded
``%2f<hash>``, GHC's z-encoding), and is kept if it is in the candidate set (the input
closure plus the derivation's own outputs).

Speed: each buffer is mapped with ``bytes.translate`` to 1 (a nix32 character) / 0 and
the runs of 32 or more ones are found with ``bytes.find`` (both C loops: data without
such runs, zeros, random bytes, most text, costs no Python per byte); only those runs
are looked at in Python. Files are read in 1 MiB chunks, each scanned with the last
``_OVERLAP`` bytes of the one before, so a hash split across a chunk boundary is seen
(and a stray's context below and name are whole); matches are de-duplicated through
sets, so the overlap never double counts.

Stray references, an error for the build (the path could not be in the closure and
would dangle on another machine). What is checked, and nothing else:

- every ``<storedir>/<hash>-`` whose hash part is not a candidate, in file contents,
  symlink targets and entry names: the 32 characters must be exactly a run of nix32
  characters after a ``/`` and before a ``-``, and what is before them, read as a path
  lexically (``//`` and ``/./`` collapsed, ``x/..`` removed:
  ``/kiln/store/../store/<hash>-x``, ``/kiln//store/<hash>-x``,
  ``/kiln/store/<other>/../<hash>-x``) over at most ``_CONTEXT`` (4096, PATH_MAX) bytes
  and ``_STEPS`` (32) segments, must end with ``<storedir>/``. Like a plain substring
  search it does not care what comes before (``PATH=/kiln/store/...``);
- a relative symlink target, resolved lexically against the symlink's logical path
  (the output's store path, ``logical``): ``../<hash>-x`` (from any depth) names
  ``<storedir>/<hash>-x`` as surely as the absolute spelling does.

Not seen (as for Nix): references compressed or encoded (gzip, UTF-16, base64,
``%2F``-escaped slashes), built at run time from pieces, or reached only through other
symlinks (resolution is lexical, never on the file system), and spellings whose part
before the hash is longer than 4096 bytes or 32 segments (a run of ``/`` counts as one).
A bare hash part without the store dir is a reference only when it is a candidate
(Nix's rule), never a stray.

Besides references, each file's first chunk tells whether it is an ELF program whose
loader (``PT_INTERP``) lies outside the store dir (``host_loaders``: it would start with
the host's C library; ``elfinterp``), shared libraries (``*.so``, ``*.so.N``: ``libc.so.6``
has one to run as a program) aside. Free: the chunk is read anyway.

Cost: no Python per byte outside runs of 32+ nix32 characters (~1 CPU-s per GiB of
zeros or random bytes, ~6 for text full of store paths, against ~12 and ~18 for the
regex scan this replaced); at most ``_STEPS`` steps per non-candidate hash after a
``/``, so a hostile output packed with hashes behind chains of ``..`` costs up to
~0.2 CPU-s per MiB.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .elfinterp import interpreter
from .errors import KilnError
from .trees import walk

_NIX32 = b"0123456789abcdfghijklmnpqrsvwxyz"
_CHUNK = 1 << 20
#: bytes before a stray hash read to decide whether they spell the store dir (PATH_MAX),
#: and path segments (a bound on the work per hash: a hostile output packed with hashes
#: each after a long chain of '..' costs at most this many steps per hash)
_CONTEXT = 4096
_STEPS = 32
#: bytes read after a stray hash's "-" for its name: a store path name (Nix's max 211) and one more
_AFTER = 1 + 211
#: chunk overlap: a stray hash, the '/' and context before it and its name fit in one buffer
_OVERLAP = _CONTEXT + 1 + 32 + _AFTER
_ONES = bytes(1 if c in _NIX32 else 0 for c in range(256))
_RUN = b"\x01" * 32
_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-._?=")
_SLASH, _DASH = ord("/"), ord("-")
#: a shared library's name (``libc.so.6`` has a PT_INTERP too, to run as a program: not one
#: a build made to be started)
_LIBRARY = re.compile(r"\.so(?:\.[0-9]+)*\Z")


@dataclass(frozen=True, slots=True)
class ScanResult:
    """``found``: candidate hash parts seen; ``stray``: (file, hash part) pairs of
    store paths referenced under the store dir that are not candidates (file: the path
    relative to the output, ``""`` for the output itself); ``names``: (hash part, name)
    for those strays whose hash was followed by ``-`` and a valid store path name (the
    first seen), to show the whole base name."""

    found: frozenset[str]
    stray: tuple[tuple[str, str], ...]
    names: tuple[tuple[str, str], ...] = ()
    #: (file, interpreter) of ELF programs whose loader is outside the store dir (the
    #: host's: ``elfinterp``), in scan order; not an error, the build loop warns
    host_loaders: tuple[tuple[str, str], ...] = ()
    #: ELF programs (a ``PT_INTERP``, and not named like a shared library), by path
    #: relative to the output, in scan order, at most ``MAX_PROGRAMS`` (``libcheck`` reads
    #: their dynamic sections: the libraries they need; a library's own needs are met
    #: by what the program that loads it loads)
    programs: tuple[str, ...] = ()


#: ELF programs ``ScanResult.programs`` lists at most (an output of 100,000 objects is
#: looked at no further: a warning about some is as good as about all)
MAX_PROGRAMS = 4096


class ScanStopped(KilnError):
    """``scan`` was stopped from outside (its ``stop`` returned true)."""


def scan(
    root: Path,
    candidates: Iterable[str],
    store_dir: str,
    stop: Callable[[], bool] | None = None,
    logical: str | None = None,
) -> ScanResult:
    """Scan the file or tree at ``root`` for hash parts in ``candidates``, and for stray
    references (see the module docstring). ``logical``: the store path ``root`` will
    have (relative symlinks are resolved against it); default ``<store_dir>/<root's
    name>``. ``stop()`` is asked before each file and each 1 MiB read: when it is true
    the scan raises ``ScanStopped`` (a cancelled build must not go on scanning
    gigabytes). ``OSError`` (an unreadable tree) passes through."""
    stopped = stop or (lambda: False)
    s = _Scanner({c.encode() for c in candidates}, store_dir.encode())
    top = os.fsencode(logical if logical is not None else f"{store_dir}/{root.name}")
    sd_slash = store_dir + "/"
    host_loaders: list[tuple[str, str]] = []
    programs: list[str] = []

    def scan_file(p: Path, rel: str) -> None:
        with open(p, "rb", buffering=0) as f:
            tail = b""
            if stopped():
                raise ScanStopped(f"the reference scan of {root} was stopped")
            chunk = f.read(_CHUNK)
            if chunk[:4] == b"\x7fELF":
                interp = interpreter(chunk)
                if interp is not None and not _LIBRARY.search(rel):
                    if not interp.startswith(sd_slash):
                        host_loaders.append((rel, interp))
                    if len(programs) < MAX_PROGRAMS:
                        programs.append(rel)
            while chunk:
                if stopped():
                    raise ScanStopped(f"the reference scan of {root} was stopped")
                nxt = f.read(_CHUNK)  # (one ahead: the last buffer checks to its end)
                data = tail + chunk
                # strays are decided where their context and name are whole: from where
                # the buffer before left off, to where this one's overlap begins
                lo = max(0, len(tail) - 32 - _AFTER)
                hi = len(data) - 32 - _AFTER if nxt else len(data)
                s.scan_bytes(data, rel, lo, hi)
                tail = data[-_OVERLAP:]
                chunk = nxt

    def scan_link(p: Path, rel: str) -> None:
        target = os.fsencode(os.readlink(p))
        s.scan_bytes(target, rel)
        if not target.startswith(b"/"):
            here = posixpath.dirname(posixpath.join(top, os.fsencode(rel))) if rel else posixpath.dirname(top)
            s.stray_in_resolved(posixpath.normpath(posixpath.join(here, target)), rel)

    if root.is_symlink() or not root.is_dir():
        _scan_entry(root, "", scan_file, scan_link)
    else:
        for dirpath, dirnames, filenames in walk(str(root)):
            dirnames.sort()
            for name in [*filenames, *dirnames]:  # names are in the NAR too
                s.scan_bytes(os.fsencode(name), os.path.relpath(os.path.join(dirpath, name), root))
            for name in [
                *sorted(filenames),
                *(d for d in dirnames if os.path.islink(os.path.join(dirpath, d))),
            ]:
                p = Path(dirpath, name)
                _scan_entry(p, str(p.relative_to(root)), scan_file, scan_link)
    return ScanResult(
        frozenset(h.decode() for h in s.found),
        tuple(s.stray),
        tuple((h, n) for h, n in s.names.items()),
        tuple(host_loaders),
        tuple(programs),
    )


class _Scanner:
    """The sets one scan fills, and the per-buffer search (see the module docstring)."""

    def __init__(self, cand: set[bytes], store_dir: bytes) -> None:
        self.cand = cand
        self.sd = store_dir
        self.sd_slash = store_dir + b"/"
        # the store dir's segments, last first: what a stray's context must end with
        self.need = [seg for seg in reversed(store_dir.split(b"/")) if seg]
        self.found: set[bytes] = set()
        self.stray: dict[tuple[str, str], None] = {}
        self.names: dict[str, str] = {}

    def scan_bytes(self, data: bytes, rel: str, lo: int = 0, hi: int | None = None) -> None:
        """Find candidates in all of ``data``; strays whose hash starts in ``[lo, hi)``."""
        hi = len(data) if hi is None else hi
        ones = data.translate(_ONES)
        cand, found, n, find = self.cand, self.found, len(data), ones.find
        pos = find(_RUN)
        while pos >= 0:
            end = pos + 32
            if end == n or not ones[end]:  # exactly 32: a hash part, the usual case
                h = data[pos:end]
                if h in cand:
                    found.add(h)
                elif (
                    pos > 0 and lo <= pos < hi and end < n and data[end] == _DASH and data[pos - 1] == _SLASH
                ):
                    self._maybe_stray(data, pos, rel)
            else:
                end = find(b"\x00", end)
                if end < 0:
                    end = n
                if end - pos - 31 > 4 * len(cand):  # a long run: look for each candidate in it
                    run = data[pos:end]
                    found.update(c for c in cand if c not in found and c in run)
                else:  # every window, as Nix does
                    for i in range(pos, end - 31):
                        h = data[i : i + 32]
                        if h in cand:
                            found.add(h)
            pos = find(_RUN, end)

    def _maybe_stray(self, data: bytes, pos: int, rel: str) -> None:
        """The non-candidate ``data[pos:pos+32]`` (after '/', before '-'): a stray if
        what is before it spells the store dir."""
        if data[max(0, pos - len(self.sd_slash)) : pos] == self.sd_slash or self._spells_store_dir(
            data, pos - 1
        ):
            self._add(rel, data[pos : pos + 32], data[pos + 33 : pos + 33 + _AFTER])

    def _spells_store_dir(self, data: bytes, slash: int) -> bool:
        """Whether the path ending at ``data[slash]`` (a '/'), read lexically over at most
        ``_CONTEXT`` bytes and ``_STEPS`` segments back (a run of '/' counts as one),
        ends with the store dir: its segments are walked from the right, skipping empty
        ones and '.', and each '..' with the segment it undoes."""
        floor = max(0, slash - _CONTEXT)
        need, k, undo, end = self.need, 0, 0, slash
        for _ in range(_STEPS):
            start = data.rfind(b"/", floor, end)
            if start < 0:
                return False  # (what is before the first '/' is never a whole segment)
            seg = data[start + 1 : end]
            end = start
            if not seg:  # a run of '/' (``//``, ``///``...): one step, skipped in C
                end = floor + len(data[floor:end].rstrip(b"/"))
                continue
            if seg == b".":
                continue
            if seg == b"..":
                undo += 1
            elif undo:
                undo -= 1
            elif seg != need[k]:
                return False
            else:
                k += 1
                if k == len(need):
                    return True
        return False

    def stray_in_resolved(self, path: bytes, rel: str) -> None:
        """``path``, a symlink's target resolved lexically, if it is ``<storedir>/<hash>-...``
        with a hash that is not a candidate."""
        if not path.startswith(self.sd_slash):
            return
        base = path[len(self.sd_slash) :].split(b"/", 1)[0]
        h = base[:32]
        if len(base) > 32 and base[32] == _DASH and not h.translate(_ONES).count(0) and h not in self.cand:
            self._add(rel, h, base[33:])

    def _add(self, rel: str, h: bytes, after: bytes) -> None:
        hs = h.decode()
        self.stray[(rel, hs)] = None
        n = 0
        while n < len(after) and after[n] in _NAME_CHARS:
            n += 1
        if 0 < n <= 211 and after[0] != ord("."):  # (a valid store path name: Nix's rules)
            self.names.setdefault(hs, after[:n].decode())


def _scan_entry(
    p: Path, rel: str, scan_file: Callable[[Path, str], None], scan_link: Callable[[Path, str], None]
) -> None:
    if p.is_symlink():
        scan_link(p, rel)
    elif p.is_file():
        scan_file(p, rel)
