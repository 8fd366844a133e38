"""The evaluator's runtime objects: scopes (``Env``), lazy bindings (``Thunk``), package
definitions (``PackageFn``), builtins and loaded modules. Mutable, owned by one
``Evaluator``; values that reach derivations are in ``values``.

A ``Thunk``'s ``value`` is ``UNSET`` until forced and ``RUNNING`` while being computed
(reaching it again then is infinite recursion, see ``Evaluator.force``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from . import nodes as ast

if TYPE_CHECKING:
    from .evaluator import Evaluator

#: a builtin: it gets the evaluator, its ``Call`` node and the calling scope, evaluates
#: its own arguments and returns its value (``builtins``)
BuiltinFn = Callable[["Evaluator", ast.Call, "Env"], object]

RUNNING = object()
UNSET = object()


class Thunk:
    """A lazily evaluated binding."""

    __slots__ = ("node", "env", "value", "name")

    def __init__(self, node: ast.Node, env: Env, name: str) -> None:
        self.node = node
        self.env = env
        self.value: object = UNSET
        self.name = name


class Env:
    __slots__ = ("vars", "parent")

    def __init__(self, vars: dict[str, object], parent: Env | None) -> None:
        """``vars``: name -> a ``Thunk``, ``PackageFn``, ``Builtin`` or value."""
        self.vars = vars
        self.parent = parent

    def names(self) -> list[str]:
        out: list[str] = []
        e: Env | None = self
        while e is not None:
            out.extend(e.vars)
            e = e.parent
        return out


class PackageFn:
    """A ``package`` definition: callable with parameters, memoized per variant."""

    __slots__ = ("node", "env")

    def __init__(self, node: ast.Package, env: Env) -> None:
        self.node = node
        self.env = env


class Builtin:
    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn: BuiltinFn) -> None:
        self.name = name
        self.fn = fn


class Module:
    """A loaded file: its scope and the names it defines itself (in source order)."""

    __slots__ = ("path", "ast", "env", "own")

    def __init__(self, path: str, tree: ast.Module, env: Env, own: list[str]) -> None:
        self.path = path
        self.ast = tree
        self.env = env
        self.own = own
