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

Lists and records may share parts (``let s1 = [s0, s0]``: forty such lines make a list
of 2**40 leaves in 41 tuples), so whatever walks a value's structure (``equal`` for
``==``/``elem``, ``canonical`` for variant keys) does so once per distinct part (by
identity), iteratively, never once per path through the tree.
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


def equal(a: object, b: object) -> bool:
    """``a == b`` in the language: strings by text (context aside), numbers and booleans
    by value (``true`` is not ``1``), packages and sources by path, lists element-wise,
    records by their set of fields and each field's value; values of different types
    are unequal.

    Lists and records may share parts (``let s1 = [s0, s0]``, forty levels deep, is a
    list of 2**40 strings held in 41 tuples), so the walk is linear in the distinct
    pairs of parts compared, not in the size of the tree: a pair that is one object is
    equal, and a pair of parts already being compared (or proven equal) in this
    comparison is not compared again, which is sound because the result is the
    conjunction of all pairs (any unequal pair ends it). The walk is iterative, a stack
    of iterators over pairs of elements, so neither depth nor width recurses."""
    seen: set[tuple[int, int]] = set()  # (the parts are alive, held by a and b: ids are stable)
    stack = [iter(((a, b),))]
    while stack:
        pair = next(stack[-1], None)
        if pair is None:
            stack.pop()
            continue
        x, y = pair
        if x is y:
            continue
        if isinstance(x, tuple) and isinstance(y, tuple):
            if len(x) != len(y):
                return False
            if (id(x), id(y)) not in seen:
                seen.add((id(x), id(y)))
                stack.append(zip(x, y, strict=True))
        elif isinstance(x, Record) and isinstance(y, Record):
            if x.keys() != y.keys():
                return False
            if (id(x), id(y)) not in seen:
                seen.add((id(x), id(y)))
                stack.append(zip(x.values(), map(y.__getitem__, x), strict=True))
        elif not _equal_leaf(x, y):
            return False
    return True


def _equal_leaf(a: object, b: object) -> bool:
    """``equal`` for a pair that is not two lists or two records."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    if isinstance(a, CStr) or isinstance(b, CStr):
        ta = a.text if isinstance(a, CStr) else a
        tb = b.text if isinstance(b, CStr) else b
        return ta == tb
    if isinstance(a, DrvValue) and isinstance(b, DrvValue):
        return a.path == b.path
    if isinstance(a, SourceValue) and isinstance(b, SourceValue):
        return a.path == b.path
    return type(a) is type(b) and a == b


def canonical(v: object) -> object:
    """A hashable, order-independent key for a value (memoizing package variants): equal
    for two values exactly when they are ``equal`` with the same contexts. A scalar is its
    own key; a list or record is keyed by a digest of its structure (``_digest``), since a
    nested tuple as key would be hashed and compared in time linear in its tree, which
    for shared parts is exponential in its size."""
    if isinstance(v, tuple):
        return ("l", _digest(v))
    if isinstance(v, Record):
        return ("r", _digest(v))
    return _scalar_key(v)


def _scalar_key(v: object) -> tuple:
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, int):
        return ("i", v)
    if isinstance(v, str):
        return ("s", v, ())
    if isinstance(v, CStr):
        return ("s", v.text, tuple(sorted(v.ctx)))
    if isinstance(v, DrvValue):
        return ("d", v.path)
    if isinstance(v, SourceValue):
        return ("p", v.path)
    return ("f", id(v))


def _digest(root: tuple | Record) -> bytes:
    """The sha256 of an unambiguous encoding of ``root``: each list or record hashes its
    length, its keys and, for each element, a fixed-size digest of the element (of its
    key, ``_scalar_key``, for a scalar). Each distinct part (by identity) is digested
    once, children first, with an explicit stack: time linear in the distinct parts and
    their lengths, however much they share, and no recursion."""
    import hashlib

    memo: dict[int, bytes] = {}

    def part(x: object) -> bytes:  # a computed child's digest, or a scalar's
        d = memo.get(id(x))
        if d is None:
            if isinstance(x, str | CStr):  # (hashed in pieces: a string may be 256 Mi characters)
                text = x.text if isinstance(x, CStr) else x
                h = hashlib.sha256(b"s%d;" % len(text))
                for i in range(0, len(text), 1 << 20):
                    h.update(text[i : i + (1 << 20)].encode("utf-8", "surrogatepass"))
                h.update(repr(_scalar_key(x)[2] if isinstance(x, CStr) else ()).encode())
            else:
                h = hashlib.sha256(repr(_scalar_key(x)).encode("utf-8", "surrogatepass"))
            d = memo[id(x)] = h.digest()
        return d

    stack: list = [root]
    while stack:
        node = stack[-1]
        if id(node) in memo:
            stack.pop()
            continue
        items = node if isinstance(node, tuple) else node.values()
        pending = {id(x): x for x in items if isinstance(x, tuple | Record) and id(x) not in memo}
        if pending:  # children first; the node is on top again once they are done
            stack.extend(pending.values())
            continue
        stack.pop()
        if isinstance(node, tuple):
            h = hashlib.sha256(b"l%d;" % len(node))
            for x in node:
                h.update(part(x))
        else:
            h = hashlib.sha256(b"r%d;" % len(node))
            for k in sorted(node):
                h.update(hashlib.sha256(k.encode("utf-8", "surrogatepass")).digest())
                h.update(part(node[k]))
        memo[id(node)] = h.digest()
    return memo[id(root)]
