"""How large a string or a list may grow during an evaluation, and the checks that say so.

Theory of operation
-------------------
The language has no loops, but a chain of ``let``s can double a value at each step
(``let s1 = s0 + s0``, ``let s2 = s1 + s1``...): forty lines make a terabyte. So every
operation that can make a string or a list longer than its inputs (``+``, string
interpolation, ``join``, ``replace``, ``split``, ``upper``/``lower``, ``fetchurl``'s
joined ``urls``, ``debian_rootfs``' joined ``.deb`` paths, a list field joined into a
package's environment) computes the length it *would* produce, from its inputs'
lengths, and calls ``check_string``/``check_list`` *before* building it: a value over
the limit is never allocated, and the error is located at the operation
(file:line:col), naming the limit and the length it would have reached.
(``upper``/``lower`` can only be measured after the fact, but grow a string at most
threefold.)

Limits, the same on every machine (a recipe that evaluates here evaluates everywhere):

- ``MAX_STRING``: 2**28 = 268,435,456 *characters* (Unicode code points, as
  ``length`` counts them): 256 MiB of ASCII, at most 1 GiB of UTF-8. Characters,
  not bytes, because every operation knows its inputs' lengths in characters for free.
- ``MAX_LIST``: 2**24 = 16,777,216 elements: 128 MiB of element references, and a
  list that long already takes seconds to walk element by element.

A derivation's environment and arguments together are held to ``MAX_STRING`` as well
(``check_derivation``): each field is within the limit, but a hundred fields holding one
long string would make a ``.drv`` of a hundred times that, serialised three times over
to hash it.

They bound one value or derivation, not the evaluation: many large values can still
exhaust memory, which ``deep._too_deep`` then reports as values grown too large (or
runaway recursion).

The limits are module attributes read at each check, so a test may lower them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from . import nodes as ast
from .errors import TooLarge

MAX_STRING = 1 << 28
MAX_LIST = 1 << 24


def check_string(n: int, node: ast.Node, what: str) -> None:
    """Raise ``TooLarge`` at ``node`` if ``what`` (e.g. ``"'+'"``) would make a string of
    ``n`` characters, more than ``MAX_STRING``."""
    if n > MAX_STRING:
        raise TooLarge(
            f"string too long: {what} would make a string of {n:,} characters; "
            f"kiln's limit is {MAX_STRING:,} characters",
            node.src,
            node.pos,
        )


def check_list(n: int, node: ast.Node, what: str) -> None:
    """Raise ``TooLarge`` at ``node`` if ``what`` would make a list of ``n`` elements,
    more than ``MAX_LIST``."""
    if n > MAX_LIST:
        raise TooLarge(
            f"list too long: {what} would make a list of {n:,} elements; "
            f"kiln's limit is {MAX_LIST:,} elements",
            node.src,
            node.pos,
        )


def check_derivation(env: Mapping[str, str], args: Iterable[str], node: ast.Node, what: str) -> None:
    """Raise ``TooLarge`` at ``node`` if the environment ``env`` (names and values) and
    arguments ``args`` of ``what``'s derivation (e.g. ``"package 'p'"``) come to more than
    ``MAX_STRING`` characters: its ``.drv`` text would be at least that long."""
    n = sum(len(k) + len(v) for k, v in env.items()) + sum(map(len, args))
    if n > MAX_STRING:
        raise TooLarge(
            f"derivation too large: {what} would hold {n:,} characters of environment and "
            f"arguments; kiln's limit is {MAX_STRING:,} characters",
            node.src,
            node.pos,
        )
