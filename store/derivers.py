"""Which derivation built a store path, as far as this store can show it.

Theory of operation
-------------------
A path's recorded deriver (``PathInfo.deriver``, a narinfo's ``Deriver:`` line) is
covered by no signature: whoever imports a path, or serves it, can name any ``.drv``
there — zlib's, say, so that an SBOM would call the path "zlib 1.3.1, licence Zlib" and
``kiln sbom --attest`` would sign that. And a ``.drv`` is text-addressed, so anyone can
also write one that merely *claims* the path as its output. ``Derivers.of`` therefore
believes a deriver only when

- it is valid in this store and its text parses as a derivation;
- its declared output paths are the ones its contents give
  (``derivation.check_output_paths``, Nix's ``checkInvariants``; this needs its input
  derivations, which must be valid here too); and
- one of those outputs is this very path.

Then the derivation's text (its ``pname``, ``version``, ``license``, URLs) is what the
path's hash was computed from, so it does describe the path. Anything else is treated
as no derivation at all: the caller describes the path from its name, as for a source.

Invariants
----------
- Never raises for a bad or missing derivation: the answer is ``None``.
- Derivations are read and checked once per ``Derivers`` (results are memoized, and so
  are the hashes modulo of input derivations, which keeps a closure's cost linear).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .derivation import Derivation, check_output_paths
from .drvparse import decode, parse
from .errors import KilnError, StoreError
from .hashes import Hash
from .paths import StorePath

#: what reading a crafted or damaged ``.drv`` may raise, besides ``KilnError``: a hash
#: that is not hex (ValueError), an output the derivation lacks (KeyError), I/O
_BAD = (KilnError, ValueError, KeyError, OSError)


class Derivers:
    """Checked derivations of one store (a ``LocalStore``). ``parse_drv(path)``, when
    given, parses a ``.drv`` instead of reading it from the store (the build loop's
    already parsed graph); it may raise for a derivation it refuses."""

    def __init__(self, store: Any, parse_drv: Callable[[str], Derivation] | None = None) -> None:
        self.store = store
        self._parse_drv = parse_drv
        self._parsed: dict[str, Derivation | None] = {}
        self._checked: dict[str, Derivation | None] = {}
        self._memo: dict[str, Hash] = {}

    def _read(self, drv_path: str) -> Derivation:
        """The parsed ``.drv`` at ``drv_path`` (unchecked); raises if it is not valid here
        or does not parse."""
        if drv_path not in self._parsed:
            self._parsed[drv_path] = None
            if not self.store.is_valid(drv_path):
                raise StoreError(f"derivation {drv_path} is not valid in the store")
            if self._parse_drv is not None:
                d = self._parse_drv(drv_path)
            else:
                sp = StorePath.parse(drv_path, self.store.store_dir)
                text = decode(self.store.real_path(drv_path).read_bytes(), drv_path)
                d = parse(text, sp.name.removesuffix(".drv"), self.store.store_dir)
            self._parsed[drv_path] = d
        parsed = self._parsed[drv_path]
        if parsed is None:  # (an earlier attempt raised)
            raise StoreError(f"derivation {drv_path} could not be read")
        return parsed

    def load(self, drv_path: str | None) -> Derivation | None:
        """The derivation at ``drv_path`` if it is valid here, parses and defines the
        output paths it declares (``check_output_paths``); else ``None``."""
        if not drv_path or not drv_path.endswith(".drv"):
            return None
        if drv_path not in self._checked:
            try:
                d: Derivation | None = self._read(drv_path)
                assert d is not None
                check_output_paths(d, self._read, self._memo)
            except _BAD:
                d = None
            self._checked[drv_path] = d
        return self._checked[drv_path]

    def of(self, path: str, drv_path: str | None) -> Derivation | None:
        """``drv_path``'s derivation if it is a genuine deriver of ``path`` (``load``, and
        one of its outputs is ``path``); else ``None``: describe ``path`` as having no
        derivation."""
        d = self.load(drv_path)
        if d is None or not any(o.path == str(path) for _, o in d.outputs):
            return None
        return d
