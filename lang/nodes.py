"""Syntax tree of a recipe file.

Every node records ``src`` (the ``SourceText`` it came from) and ``pos`` (a character
offset into that file, also for expressions parsed out of ``${...}`` interpolations),
so any evaluation error can point at the exact spot. Nodes are plain slotted classes,
built once by the parser and never mutated.
"""

from __future__ import annotations

from .errors import SourceText


class Node:
    __slots__ = ("src", "pos")

    def __init__(self, src: SourceText, pos: int) -> None:
        self.src = src
        self.pos = pos


class Const(Node):
    """A number, boolean or string without interpolation."""

    __slots__ = ("value",)

    def __init__(self, src: SourceText, pos: int, value: object) -> None:
        super().__init__(src, pos)
        self.value = value


class Str(Node):
    """A string with interpolations: ``parts`` are ``str`` pieces and expression nodes."""

    __slots__ = ("parts",)

    def __init__(self, src: SourceText, pos: int, parts: tuple[str | Node, ...]) -> None:
        super().__init__(src, pos)
        self.parts = parts


class Var(Node):
    __slots__ = ("name",)

    def __init__(self, src: SourceText, pos: int, name: str) -> None:
        super().__init__(src, pos)
        self.name = name


class ListExpr(Node):
    __slots__ = ("items",)

    def __init__(self, src: SourceText, pos: int, items: tuple[Node, ...]) -> None:
        super().__init__(src, pos)
        self.items = items


class Binding(Node):
    """``name = expr`` (a record/package field or a ``let``); ``pos`` is the name's."""

    __slots__ = ("name", "expr")

    def __init__(self, src: SourceText, pos: int, name: str, expr: Node) -> None:
        super().__init__(src, pos)
        self.name = name
        self.expr = expr


class Let(Binding):
    """A ``let name = expr`` binding (top level or inside a package body)."""

    __slots__ = ()


class RecordExpr(Node):
    __slots__ = ("fields",)

    def __init__(self, src: SourceText, pos: int, fields: tuple[Binding, ...]) -> None:
        super().__init__(src, pos)
        self.fields = fields


class Select(Node):
    __slots__ = ("expr", "name")

    def __init__(self, src: SourceText, pos: int, expr: Node, name: str) -> None:
        super().__init__(src, pos)
        self.expr = expr
        self.name = name


class Call(Node):
    """``name(args)``, ``name { record }`` or ``name "string"``.
    ``args`` is a tuple of ``(arg_name or None, node)``."""

    __slots__ = ("name", "args", "name_pos")

    def __init__(
        self,
        src: SourceText,
        pos: int,
        name: str,
        args: tuple[tuple[str | None, Node], ...],
        name_pos: dict[str, int] | None = None,
    ) -> None:
        super().__init__(src, pos)
        self.name = name
        self.args = args
        self.name_pos = name_pos or {}  # argument name -> position of the name


class If(Node):
    __slots__ = ("cond", "then", "else_")

    def __init__(self, src: SourceText, pos: int, cond: Node, then: Node, else_: Node) -> None:
        super().__init__(src, pos)
        self.cond = cond
        self.then = then
        self.else_ = else_


class BinOp(Node):
    """``op`` is one of ``+ == != && ||``; ``pos`` is the operator's."""

    __slots__ = ("op", "left", "right")

    def __init__(self, src: SourceText, pos: int, op: str, left: Node, right: Node) -> None:
        super().__init__(src, pos)
        self.op = op
        self.left = left
        self.right = right


class UnOp(Node):
    __slots__ = ("op", "expr")

    def __init__(self, src: SourceText, pos: int, op: str, expr: Node) -> None:
        super().__init__(src, pos)
        self.op = op
        self.expr = expr


class Param(Node):
    __slots__ = ("name", "default")

    def __init__(self, src: SourceText, pos: int, name: str, default: Node | None) -> None:
        super().__init__(src, pos)
        self.name = name
        self.default = default


class Package(Node):
    """``package name(params) { fields; let ... }``; ``pos`` is the name's."""

    __slots__ = ("name", "params", "fields", "lets")

    def __init__(
        self,
        src: SourceText,
        pos: int,
        name: str,
        params: tuple[Param, ...],
        fields: tuple[Binding, ...],
        lets: tuple[Let, ...],
    ) -> None:
        super().__init__(src, pos)
        self.name = name
        self.params = params
        self.fields = fields
        self.lets = lets


class Import(Node):
    __slots__ = ("path",)

    def __init__(self, src: SourceText, pos: int, path: str) -> None:
        super().__init__(src, pos)
        self.path = path


class Module:
    """A parsed file: its imports, top-level ``let`` bindings and packages, in order."""

    __slots__ = ("src", "imports", "lets", "packages")

    def __init__(
        self, src: SourceText, imports: list[Import], lets: list[Let], packages: list[Package]
    ) -> None:
        self.src = src
        self.imports = imports
        self.lets = lets
        self.packages = packages
