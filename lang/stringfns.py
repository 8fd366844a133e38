"""Builtin string and list functions (``join``, ``split``, ``replace``, ``lower``,
``length``, ``str``, ``optional``, ``elem`` ...; the table is ``builtins.BUILTINS``).

Each takes positional arguments only, checked by ``_positional`` against a signature
of type names, and keeps the string context of its inputs (the store paths a string
refers to) on what it returns, so a path that flows through ``join`` or ``replace``
still makes its derivation an input.

A builtin that can return a longer string or list than it was given (``join``,
``replace``, ``split``, ``upper``/``lower``) checks the length against ``limits``
before building the result, located at the call; ``elem`` compares with
``values.equal``, linear in the distinct parts compared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import limits
from . import nodes as ast
from .errors import BadValue, RecipeTypeError
from .values import CStr, Record, equal, type_name

if TYPE_CHECKING:
    from .evaluator import Evaluator
    from .scope import Env


def _positional(
    ev: Evaluator, node: ast.Call, env: Env, types: tuple[str, ...]
) -> list[tuple[Any, ast.Node]]:
    """The arguments of ``node`` as (value, node), ``types`` naming each one's type
    ("string", "list", "boolean", "any"), checked here; a ``RecipeTypeError`` if they
    are not positional, as many or of those types. (Any: each value has the type named,
    which a static type cannot follow.)"""
    if any(name is not None for name, _ in node.args) or len(node.args) != len(types):
        sig = ", ".join(t for t in types)
        raise RecipeTypeError(
            f"{node.name} takes {len(types)} argument(s): {node.name}({sig})", node.src, node.pos
        )
    out = []
    for (_, arg), t in zip(node.args, types, strict=True):
        v = ev.eval(arg, env)
        ok = {
            "string": isinstance(v, str | CStr),
            "list": isinstance(v, tuple),
            "boolean": isinstance(v, bool),
            "any": True,
        }[t]
        if not ok:
            raise RecipeTypeError(f"{node.name}: expected a {t}, found {type_name(v)}", arg.src, arg.pos)
        out.append((v, arg))
    return out


def _text(v: str | CStr) -> tuple[str, frozenset]:
    return (v.text, v.ctx) if isinstance(v, CStr) else (v, frozenset())


def _mk(text: str, ctx: frozenset) -> str | CStr:
    return CStr(text, ctx) if ctx else text


def str_fn(op: Callable[[str], str]) -> Callable[[Evaluator, ast.Call, Env], str | CStr]:
    def fn(ev: Evaluator, node: ast.Call, env: Env) -> str | CStr:
        ((s, _),) = _positional(ev, node, env, ("string",))
        t, c = _text(s)
        r = op(t)
        # (only upper/lower grow a string, at most threefold: 'ß' → 'SS', 'ﬃ' → 'FFI')
        limits.check_string(len(r), node, f"{node.name}()")
        return _mk(r, c)

    return fn


def join(ev: Evaluator, node: ast.Call, env: Env) -> str | CStr:
    (sep, _), (items, n) = _positional(ev, node, env, ("string", "list"))
    sep_t, ctx = _text(sep)
    texts = []
    for x in items:
        t, c = ev.to_text(x, n, "in join")
        texts.append(t)
        if c:
            ctx = ctx | c
    limits.check_string(sum(map(len, texts)) + len(sep_t) * max(0, len(texts) - 1), node, "join()")
    return _mk(sep_t.join(texts), ctx)


def split(ev: Evaluator, node: ast.Call, env: Env) -> tuple[str | CStr, ...]:
    (s, _), (sep, n) = _positional(ev, node, env, ("string", "string"))
    t, c = _text(s)
    sep_t = _text(sep)[0]
    if not sep_t:
        raise BadValue("split: the separator is empty", n.src, n.pos)
    limits.check_list(t.count(sep_t) + 1, node, "split()")
    return tuple(_mk(p, c) for p in t.split(sep_t))


def replace(ev: Evaluator, node: ast.Call, env: Env) -> str | CStr:
    (s, _), (old, _), (new, _) = _positional(ev, node, env, ("string", "string", "string"))
    t, c = _text(s)
    nt, nc = _text(new)
    ot = _text(old)[0]
    if len(nt) > len(ot):  # (an empty ``old`` matches len(t) + 1 times, as str.count says)
        limits.check_string(len(t) + t.count(ot) * (len(nt) - len(ot)), node, "replace()")
    return _mk(t.replace(ot, nt), c | nc)


def pred(op: Callable[[str, str], bool]) -> Callable[[Evaluator, ast.Call, Env], bool]:
    def fn(ev: Evaluator, node: ast.Call, env: Env) -> bool:
        (s, _), (x, _) = _positional(ev, node, env, ("string", "string"))
        return op(_text(s)[0], _text(x)[0])

    return fn


def length(ev: Evaluator, node: ast.Call, env: Env) -> int:
    ((v, n),) = _positional(ev, node, env, ("any",))
    if isinstance(v, tuple | Record | str):
        return len(v)
    if isinstance(v, CStr):
        return len(v.text)
    raise RecipeTypeError(f"length: expected a string, list or record, found {type_name(v)}", n.src, n.pos)


def to_str(ev: Evaluator, node: ast.Call, env: Env) -> str | CStr:
    ((v, n),) = _positional(ev, node, env, ("any",))
    if isinstance(v, bool):
        return "true" if v else "false"
    t, c = ev.to_text(v, n, "in str")
    return _mk(t, c or frozenset())


def optional(ev: Evaluator, node: ast.Call, env: Env) -> tuple:
    (cond, _), (items, n) = _positional(ev, node, env, ("boolean", "any"))
    items = items if isinstance(items, tuple) else (items,)
    return items if cond else ()


def elem(ev: Evaluator, node: ast.Call, env: Env) -> bool:
    (x, _), (items, _) = _positional(ev, node, env, ("any", "list"))
    unequal: set[int] = set()  # a list built by doubling holds few distinct objects
    for y in items:
        if id(y) not in unequal:
            if equal(x, y):
                return True
            unequal.add(id(y))
    return False
