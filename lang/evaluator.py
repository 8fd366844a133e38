"""The evaluator: modules, scopes, lazy bindings and expressions.

Theory of operation
-------------------
A file is parsed once per evaluation (``Evaluator.load``). Its top-level ``let``s and
packages, plus every name its ``import``s define, form one scope (``Env``); a name may
be defined once. Bindings are *thunks*, forced on first use, so order of definition does
not matter; a binding reached again while it is being computed is reported as
``InfiniteRecursion`` with the chain (there are no functions, so this is the only way
to recurse). Package bodies are a scope of their own (params, fields and local ``let``s,
mutually visible) over the module scope. A name that is a package evaluates to its
default variant; ``name(k = v)`` to another variant (``compile.instantiate``).

Everything is deterministic: scopes are dicts in source order, string contexts are
sorted before they reach a derivation, and nothing reads the environment, clock or cwd.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import limits, roots
from . import nodes as ast
from .errors import (
    BadValue,
    ImportCycle,
    InfiniteRecursion,
    RecipeError,
    RecipeTypeError,
    UnknownName,
    did_you_mean,
    visible,
)
from .parser import parse_module
from .reading import read_recipe
from .scope import RUNNING, UNSET, Builtin, Env, Module, PackageFn, Thunk
from .values import INT_MAX, INT_MIN, CStr, DrvValue, Record, SourceValue, equal, type_name

if TYPE_CHECKING:
    from kiln.store.derivation import Derivation
    from kiln.store.hashes import Hash

    from .compile import TooDeep

AddSource = Callable[[Path, str], str]

#: names a build script gets from the sandbox (``$out``, ``$src``...), which an author
#: may write as kiln's ``${...}`` by mistake
SHELL_NAMES = frozenset({"out", "src", "HOME", "TMPDIR", "PWD", "KILN_CORES", "KILN_BUILD_TOP", "PATH"})


class Evaluator:
    """One evaluation: shares modules, derivations and hash memo across all files."""

    def __init__(self, store_dir: str, add_source: AddSource | None, root: str | None = None) -> None:
        """``root``: the recipe tree imports and ``path`` sources must stay in
        (``roots``); None: that of the first file loaded."""
        from . import builtins, compile

        self.store_dir = store_dir
        self.root = root
        if add_source is None:
            from .sources import hash_only

            add_source = hash_only(store_dir)
        self.add_source = add_source
        self.modules: dict[str, Module] = {}
        self.loading: list[tuple[str, str, ast.Import | None]] = []
        self.drvs: dict[str, Derivation] = {}  # drv path -> Derivation (the whole closure)
        self.memo: dict[str, Hash] = {}  # drv path -> hash modulo
        self.sources: dict[str, str] = {}  # store path -> absolute origin
        #: store path -> the origin's fingerprint taken *before* it was added, or None if
        #: it changed while being added (then the evaluation is not cached)
        self.source_fps: dict[str, str | None] = {}
        self.files: dict[str, str] = {}  # absolute path -> sha256 of its bytes (every file read)
        #: (id of the PackageFn, its parameters' ``canonical`` keys) -> the variant's value,
        #: False while it is being computed, or ``TooDeep`` (``compile.instantiate``)
        self.instances: dict[tuple[int, tuple[object, ...]], DrvValue | TooDeep | bool] = {}
        self.stack: list[tuple[str, ast.Node]] = []
        self.builtins = Env({n: Builtin(n, f) for n, f in builtins.BUILTINS.items()}, None)
        self._instantiate = compile.instantiate
        # each method takes a node of its key's type, which a dict's type cannot say (Any)
        self._dispatch: dict[type[ast.Node], Callable[[Any, Env], object]] = {
            ast.Const: self._const,
            ast.Str: self._str,
            ast.Var: self._var,
            ast.ListExpr: self._list,
            ast.RecordExpr: self._record,
            ast.Select: self._select,
            ast.Call: self._call,
            ast.If: self._if,
            ast.BinOp: self._binop,
            ast.UnOp: self._unop,
        }

    # ------------------------------------------------------------------ modules
    def load(self, path: str, display: str, via: ast.Import | None = None) -> Module:
        """Load (once) the module at absolute ``path``, reported as ``display``. Symlinks are
        followed first (as Nix does), so a file's relative imports and ``path`` sources are
        resolved from where it really is, whatever name it was reached by."""
        # (a NUL cannot be in a path: read_recipe says so, located at the import)
        real = os.path.realpath(path) if "\0" not in path else path
        if real != path:
            # the evaluation cache checks the name still leads to the same file (a
            # repointed symlink must not serve the old file's result)
            self.files[path] = "=" + real
        path = real
        if self.root is None:
            self.root = roots.recipe_root(path)
        elif via is not None and not roots.inside(self.root, path):
            raise RecipeError(
                roots.outside_message(f"import {via.path!r}", path, self.root), via.src, via.pos
            )
        mod = self.modules.get(path)
        if mod is not None:
            return mod
        for i, (p, _, _) in enumerate(self.loading):
            if p == path:
                chain = [visible(d) for _, d, _ in self.loading[i:]] + [visible(display)]
                raise ImportCycle(
                    "import cycle: " + " → ".join(chain), via.src if via else None, via.pos if via else None
                )
        raw, text = read_recipe(path, display, via)
        self.files[path] = hashlib.sha256(raw).hexdigest()
        tree = parse_module(text, display, path)
        self.loading.append((path, display, via))
        try:
            env = Env({}, self.builtins)
            for b in tree.lets:
                env.vars[b.name] = Thunk(b.expr, env, b.name)
            for pkg in tree.packages:
                env.vars[pkg.name] = PackageFn(pkg, env)
            # source order, lets and packages interleaved as written
            defs: list[ast.Let | ast.Package] = [*tree.lets, *tree.packages]
            own = [d.name for d in sorted(defs, key=lambda d: d.pos)]
            # imported files are named from this file's directory as the user named it,
            # unless that name reached it through a symlinked directory: then relative
            # names would point beside the link, where the files are not
            shown_dir = os.path.dirname(display)
            if os.path.realpath(shown_dir or ".") != os.path.dirname(path):
                shown_dir = os.path.dirname(path)
            came_from: dict[str, str] = {}  # imported name -> the file it came from
            for imp in tree.imports:
                rel = os.path.normpath(os.path.join(shown_dir, imp.path))
                target = os.path.normpath(os.path.join(os.path.dirname(path), imp.path))
                sub = self.load(target, rel, imp)
                for name in sub.own:
                    if env.vars.get(name) is sub.env.vars[name]:
                        continue  # the same file imported twice (by two spellings): same binding
                    if name in env.vars:
                        where = (
                            "defined in this file"
                            if name in own
                            else f"from {visible(came_from[name])}, imported earlier"
                        )
                        raise RecipeError(
                            f"'{name}' from {visible(rel)} clashes with '{name}' {where} (an import "
                            "brings every top-level name of its file: rename one)",
                            imp.src,
                            imp.pos,
                        )
                    env.vars[name] = sub.env.vars[name]
                    came_from[name] = rel
        finally:
            self.loading.pop()
        mod = Module(path, tree, env, own)
        self.modules[path] = mod
        return mod

    # ------------------------------------------------------------------ forcing
    def force(self, t: Thunk) -> object:
        v = t.value
        if v is UNSET:
            t.value = RUNNING
            self.stack.append((t.name, t.node))
            try:
                v = t.value = self.eval(t.node, t.env)
            except BaseException:
                t.value = UNSET
                raise
            finally:
                self.stack.pop()
        elif v is RUNNING:
            names = [n for n, _ in self.stack]
            start = max(i for i, n in enumerate(names) if n == t.name) if t.name in names else 0
            chain = " → ".join([*names[start:], t.name])
            raise InfiniteRecursion(f"'{t.name}' depends on itself: {chain}", t.node.src, t.node.pos)
        return v

    def lookup(self, env: Env, name: str, node: ast.Node) -> object:
        e: Env | None = env
        while e is not None:
            v = e.vars.get(name, UNSET)
            if v is not UNSET:
                return self.force(v) if isinstance(v, Thunk) else v
            e = e.parent
        hint = did_you_mean(name, env.names())
        if not hint and name in SHELL_NAMES:
            # ``${out}`` in a build script is kiln's interpolation, not the shell's
            hint = f" (the build's ${name} is the shell's: write ${name}, not ${{{name}}}, in a build script)"
        raise UnknownName(f"unknown name '{name}'{hint}", node.src, node.pos)

    # ------------------------------------------------------------------ expressions
    def eval(self, node: ast.Node, env: Env) -> object:
        return self._dispatch[type(node)](node, env)

    def _const(self, node: ast.Const, env: Env) -> object:
        return node.value

    def _str(self, node: ast.Str, env: Env) -> str | CStr:
        texts: list[str] = []
        ctx: set = set()
        for part in node.parts:
            if isinstance(part, str):
                texts.append(part)
            else:
                t, c = self.to_text(self.eval(part, env), part, "interpolated into a string")
                texts.append(t)
                if c:
                    ctx |= c
        # measured before joining: ``"${s}${s}"`` doubles a string as ``s + s`` does
        limits.check_string(sum(map(len, texts)), node, '"${...}"')
        text = "".join(texts)
        return CStr(text, frozenset(ctx)) if ctx else text

    def to_text(self, v: object, node: ast.Node, what: str) -> tuple[str, frozenset | None]:
        """Coerce an interpolated value to text plus context."""
        if isinstance(v, str):
            return v, None
        if isinstance(v, CStr):
            return v.text, v.ctx
        if isinstance(v, DrvValue | SourceValue):
            c = v.as_cstr()
            return c.text, c.ctx
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v), None
        raise RecipeTypeError(
            f"expected a string, found {type_name(v)} ({what})"
            + ('; use join(" ", ...) to make a string of a list' if isinstance(v, tuple) else ""),
            node.src,
            node.pos,
        )

    def _var(self, node: ast.Var, env: Env) -> object:
        v = self.lookup(env, node.name, node)
        if isinstance(v, PackageFn):
            return self._instantiate(self, v, {}, node)
        if isinstance(v, Builtin):
            raise RecipeTypeError(f"builtin '{node.name}' must be called with arguments", node.src, node.pos)
        return v

    def _list(self, node: ast.ListExpr, env: Env) -> tuple[object, ...]:
        # (a list, not a generator: from Python 3.12 each resumption of a generator is a C
        # call, counted against a C recursion limit that ``deep`` cannot raise; a chain of
        # packages each in the last one's list stopped evaluating at ~800 on 3.12.1)
        return tuple([self.eval(x, env) for x in node.items])

    def _record(self, node: ast.RecordExpr, env: Env) -> Record:
        return Record([(f.name, self.eval(f.expr, env)) for f in node.fields])  # (as ``_list``)

    def _select(self, node: ast.Select, env: Env) -> object:
        v = self.eval(node.expr, env)
        if isinstance(v, Record):
            if node.name in v:
                return v[node.name]
            raise UnknownName(
                f"record has no field '{node.name}'{did_you_mean(node.name, v)}", node.src, node.pos
            )
        if isinstance(v, DrvValue):
            if node.name in ("out", "outPath"):
                return v.as_cstr()
            if node.name == "drvPath":
                return v.path
            if node.name in v.fields:
                return v.fields[node.name]
            known = [*v.fields, "out", "drvPath"]
            raise UnknownName(
                f"package '{v.attr}' has no field '{node.name}'{did_you_mean(node.name, known)}",
                node.src,
                node.pos,
            )
        raise RecipeTypeError(f"cannot select '.{node.name}' from {type_name(v)}", node.src, node.pos)

    def _call(self, node: ast.Call, env: Env) -> object:
        # Only packages and builtins can be called, and no expression evaluates to one,
        # so only those are considered: a field may share a builtin's or package's name
        # (``zlib = zlib(static = true)``, ``upper = upper(x)``) without shadowing it.
        f = UNSET
        e: Env | None = env
        while e is not None:
            v = e.vars.get(node.name, UNSET)
            if isinstance(v, PackageFn | Builtin):
                f = v
                break
            e = e.parent
        if f is UNSET:
            f = self.lookup(env, node.name, node)
        if isinstance(f, PackageFn):
            args: dict[str, tuple[object, ast.Node]] = {}
            for name, arg in node.args:
                if name is None:
                    raise RecipeTypeError(
                        f"package '{node.name}' takes named parameters: {node.name}(name = value)",
                        arg.src,
                        arg.pos,
                    )
                args[name] = (self.eval(arg, env), arg)
            return self._instantiate(self, f, args, node)
        if isinstance(f, Builtin):
            return f.fn(self, node, env)
        raise RecipeTypeError(
            f"'{node.name}' is {type_name(f)}, not a package or builtin; it cannot be called",
            node.src,
            node.pos,
        )

    def _if(self, node: ast.If, env: Env) -> object:
        c = self.eval(node.cond, env)
        if not isinstance(c, bool):
            raise RecipeTypeError(f"'if' needs a boolean, found {type_name(c)}", node.cond.src, node.cond.pos)
        return self.eval(node.then if c else node.else_, env)

    def _binop(self, node: ast.BinOp, env: Env) -> object:
        op = node.op
        if op in ("&&", "||"):
            left = self._bool(self.eval(node.left, env), node.left, op)
            if (op == "&&") != left:
                return left
            return self._bool(self.eval(node.right, env), node.right, op)
        a, b = self.eval(node.left, env), self.eval(node.right, env)
        if op == "==":
            return equal(a, b)
        if op == "!=":
            return not equal(a, b)
        return self._add(a, b, node)

    def _bool(self, v: object, node: ast.Node, op: str) -> bool:
        if not isinstance(v, bool):
            raise RecipeTypeError(f"'{op}' needs booleans, found {type_name(v)}", node.src, node.pos)
        return v

    def _add(self, a: object, b: object, node: ast.BinOp) -> object:
        if isinstance(a, str | CStr | DrvValue | SourceValue) and isinstance(
            b, str | CStr | DrvValue | SourceValue
        ):
            ta, ca = self.to_text(a, node.left, "in '+'")
            tb, cb = self.to_text(b, node.right, "in '+'")
            limits.check_string(len(ta) + len(tb), node, "'+'")
            ctx = (ca or frozenset()) | (cb or frozenset())
            return CStr(ta + tb, ctx) if ctx else ta + tb
        if isinstance(a, tuple) and isinstance(b, tuple):
            limits.check_list(len(a) + len(b), node, "'+'")
            return a + b
        if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool) and not isinstance(b, bool):
            r = a + b
            if not INT_MIN <= r <= INT_MAX:
                raise BadValue(f"integer overflow: {a} + {b} is outside the 64-bit range", node.src, node.pos)
            return r
        if isinstance(a, Record) and isinstance(b, Record):
            return Record({**a, **b})
        # the hint only fits a number next to a string (a boolean is an int to Python)
        texty = str | CStr | DrvValue | SourceValue
        number_and_text = any(
            isinstance(x, int) and not isinstance(x, bool) and isinstance(y, texty)
            for x, y in ((a, b), (b, a))
        )
        raise RecipeTypeError(
            f"cannot add {type_name(a)} and {type_name(b)}"
            + (' (use "${...}" to put a number into a string)' if number_and_text else ""),
            node.src,
            node.pos,
        )

    def _unop(self, node: ast.UnOp, env: Env) -> object:
        v = self.eval(node.expr, env)
        if node.op == "!":
            return not self._bool(v, node.expr, "!")
        if isinstance(v, int) and not isinstance(v, bool):
            if v == INT_MIN:
                raise BadValue(f"integer overflow: -({v}) is outside the 64-bit range", node.src, node.pos)
            return -v
        raise RecipeTypeError(f"'-' needs a number, found {type_name(v)}", node.expr.src, node.expr.pos)
