"""Runtime values of the recipe language.

=================  ==========================================================
recipe value       Python representation
=================  ==========================================================
string             ``str``, or ``CStr`` when it carries *context*
number / boolean   ``int`` / ``bool``
list               ``tuple``
record             ``Record`` (a ``dict`` subclass, field order = source order)
package, fetch     ``DrvValue``: a finalized derivation and its ``.drv`` path
``path "./dir"``   ``SourceValue``: a source store path
=================  ==========================================================

*Context* (as in Nix) is the set of store objects a string mentions: entries are
``("d", drv_path, output)`` for derivation outputs and ``("s", path)`` for sources.
Interpolating a package or source into a string adds it to the context, and a package
field's context becomes that derivation's inputs. Context is a ``frozenset`` and only
ever read in sorted order, so set ordering never reaches a derivation.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.store.derivation import Derivation

#: integers are 64-bit signed, as in Nix: a literal outside is a syntax error, arithmetic
#: that leaves the range an error (so no result depends on Python's big integers)
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class CStr:
    """A string with a non-empty context."""

    text: str
    ctx: frozenset

    def __hash__(self) -> int:  # the text alone: hashing the context each time costs more
        return hash(self.text)


class Record(dict):
    """A record value."""


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class DrvValue:
    """A package or fetched source: ``drv`` is finalized, ``path`` its ``.drv`` path.
    ``fields`` holds the evaluated fields (for ``pkg.field``); ``attr`` the recipe name.
    Compared by identity, as the evaluator always has (two evaluations of one package
    are the same value only through the cache that returns the same object)."""

    drv: Derivation
    path: str
    fields: dict
    attr: str

    @property
    def out(self) -> str:
        return self.drv.outputs[0][1].path if len(self.drv.outputs) == 1 else self.drv.output_path("out")

    def as_cstr(self) -> CStr:
        return CStr(self.out, frozenset((("d", self.path, "out"),)))

    def __repr__(self) -> str:  # (the generated one would print every field, recursively)
        return f"<package {self.attr} {self.path}>"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class SourceValue:
    """A local directory or file added to the store as a NAR-hashed source (compared by
    identity, as before)."""

    path: str
    origin: str

    def as_cstr(self) -> CStr:
        return CStr(self.path, frozenset((("s", self.path),)))

    def __repr__(self) -> str:
        return f"<source {self.path}>"


def type_name(v: object) -> str:
    """The recipe-language name of a value's type, for error messages."""
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "a number"
    if isinstance(v, str | CStr):
        return "a string"
    if isinstance(v, tuple):
        return "a list"
    if isinstance(v, Record):
        return "a record"
    if isinstance(v, DrvValue):
        return "a package"
    if isinstance(v, SourceValue):
        return "a source path"
    return "a function"


def canonical(v: object) -> object:
    """A hashable, order-independent key for a value (memoizing package variants)."""
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, int):
        return ("i", v)
    if isinstance(v, str):
        return ("s", v, ())
    if isinstance(v, CStr):
        return ("s", v.text, tuple(sorted(v.ctx)))
    if isinstance(v, tuple):
        return ("l", tuple(canonical(x) for x in v))
    if isinstance(v, Record):
        return ("r", tuple((k, canonical(x)) for k, x in sorted(v.items())))
    if isinstance(v, DrvValue):
        return ("d", v.path)
    if isinstance(v, SourceValue):
        return ("p", v.path)
    return ("f", id(v))
