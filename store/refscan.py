"""Runtime reference scanning of a build output.

Theory of operation (as Nix ``path-references.cc``): a store path's runtime dependencies
are the store paths whose 32-character hash part occurs anywhere in its NAR: file
contents, symlink targets and entry names. Like Nix's ``search``, every 32-character
window of nix32 characters counts, whatever surrounds it (``abc<hash>``, a URL-encoded
``%2f<hash>``, GHC's z-encoding): we find the runs of 32 or more nix32 characters with
one compiled regex, slide a 32-character window over each run and keep the windows that
are in the candidate set (the input closure plus the derivation's own outputs).

In addition, every ``<storedir>/<hash>-`` occurrence (also spelled with doubled slashes
or ``./`` segments) whose hash is *not* a candidate is
reported as a stray reference: the output refers to a store path the build was not
given, which kiln treats as an error (the path could not be in the closure and would
dangle on another machine).

Chunks overlap by 31 + len(storedir) bytes so a hash split across a chunk boundary is
still seen; matches are de-duplicated through sets, so overlap never double counts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import KilnError
from .trees import walk

_NIX32 = b"[0-9a-df-np-sv-z]"
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ScanResult:
    """``found``: candidate hash parts seen; ``stray``: (file, hash part) pairs of
    store paths referenced under the store dir that are not candidates."""

    found: frozenset[str]
    stray: tuple[tuple[str, str], ...]


class ScanStopped(KilnError):
    """``scan`` was stopped from outside (its ``stop`` returned true)."""


def scan(
    root: Path, candidates: Iterable[str], store_dir: str, stop: Callable[[], bool] | None = None
) -> ScanResult:
    """Scan the file or tree at ``root`` for hash parts in ``candidates``. ``stop()`` is
    asked before each file and each 1 MiB read: when it is true the scan raises
    ``ScanStopped`` (a cancelled build must not go on scanning gigabytes)."""
    stopped = stop or (lambda: False)
    cand = {c.encode() for c in candidates}
    runs = re.compile(_NIX32 + b"{32,}")
    prefixed = re.compile(re.escape(store_dir.encode() + b"/") + b"(" + _NIX32 + b"{32})-")
    # /kiln/store//<hash>-x and /kiln/./store/<hash>-x name the same file: where the data
    # has such spellings, strays are looked for in a copy with them collapsed (linear;
    # a pattern allowing them everywhere backtracks quadratically on runs of '/')
    extra_seps = re.compile(rb"/(?:\.?/)+")
    found: set[bytes] = set()
    stray: dict[tuple[str, str], None] = {}
    overlap = 32 + len(store_dir) + 1

    def scan_bytes(data: bytes, rel: str) -> None:
        for m in runs.finditer(data):
            run = m.group(0)
            for i in range(len(run) - 31):  # every window, as Nix does
                h = run[i : i + 32]
                if h in cand:
                    found.add(h)
        if b"//" in data or b"/./" in data:
            data = extra_seps.sub(b"/", data)
        for m in prefixed.finditer(data):
            h = m.group(1)
            if h not in cand:
                stray[(rel, h.decode())] = None

    def scan_file(p: Path, rel: str) -> None:
        with open(p, "rb", buffering=0) as f:
            tail = b""
            while True:
                if stopped():
                    raise ScanStopped(f"the reference scan of {root} was stopped")
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                data = tail + chunk
                scan_bytes(data, rel)
                tail = data[-overlap:]

    if root.is_symlink() or not root.is_dir():
        _scan_entry(root, "", scan_file, scan_bytes)
    else:
        for dirpath, dirnames, filenames in walk(str(root)):
            dirnames.sort()
            for name in [*filenames, *dirnames]:  # names are in the NAR too
                scan_bytes(os.fsencode(name), os.path.relpath(os.path.join(dirpath, name), root))
            for name in [
                *sorted(filenames),
                *(d for d in dirnames if os.path.islink(os.path.join(dirpath, d))),
            ]:
                p = Path(dirpath, name)
                _scan_entry(p, str(p.relative_to(root)), scan_file, scan_bytes)
    return ScanResult(frozenset(h.decode() for h in found), tuple(stray))


def _scan_entry(p: Path, rel: str, scan_file, scan_bytes) -> None:
    if p.is_symlink():
        scan_bytes(os.fsencode(os.readlink(p)), rel)
    elif p.is_file():
        scan_file(p, rel)
