"""kiln.lang: the recipe language (``.recipe`` files) and its evaluation to derivations.

Public API (the build loop and the CLI use only this)::

    ev = evaluate_file("recipes/hello.recipe", store_dir="/kiln/store",
                       add_source=None, cache_dir=None)
    ev.packages        # attr name -> Derivation (this file's own top-level packages and
                       #   derivation-valued lets, default variants, source order)
    ev.drv_paths       # attr name -> .drv store path
    ev.attributes()    # the same, or the error of the first top-level binding that failed
    ev.broken          # top-level name -> RecipeError: evaluating it failed, which only
                       #   fails what uses it (select, attributes())
    ev.drvs            # .drv path -> Derivation, the whole closure (fetches included)
    ev.sources         # source store path -> absolute local origin (``path "./dir"``)
    ev.files           # absolute path -> sha256 of every recipe file read
    ev.select("zlib(static = true)")   # -> (.drv path, Derivation); names, variants,
                                       #   imported names, any expression in file scope
    ev.attr("zlib", static=True)       # -> Derivation

``add_source(abs_path: Path, name: str) -> str`` is called for every ``path "..."``
source and returns its logical store path (the CLI adds it to the local store with
``LocalStore.add_path(abs_path, name, filter=kiln.lang.sources.make_filter(abs_path))``).
Without one, the paths are computed (``sources.hash_only``) but nothing is stored.
With ``cache_dir``, an unchanged evaluation is served from the cache (``kiln.lang.cache``)
without importing the parser; ``ev.from_cache`` says so. Errors are ``RecipeError``s
(``kiln.lang.errors``), all with ``kiln_user_error = True``.

Derivations are not written to the store here; that is the caller's job
(``LocalStore.add_text(name, drv.serialize(), drv.references())``).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Mapping

from . import cache as _cache
from .errors import RecipeError, visible

# typing.TYPE_CHECKING without importing typing, and no pathlib or threading at import
# time: a cache hit (see kiln.lang.cache) needs none of them
TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: a cache hit needs no Derivation objects
    from pathlib import Path

    from kiln.store.derivation import Derivation

    from .evaluator import Evaluator
    from .nodes import Node
    from .scope import Module
    from .values import DrvValue

__all__ = ["Evaluation", "RecipeError", "evaluate_file", "DEFAULT_STORE_DIR"]

DEFAULT_STORE_DIR = "/kiln/store"
AddSource = Callable[["Path", str], str]


class Evaluation:
    """The result of evaluating one entry file (see the module docstring)."""

    def __init__(
        self,
        file: str,
        display: str,
        store_dir: str,
        add_source: AddSource | None,
        drv_paths: dict[str, str],
        drvs: Mapping[str, Derivation],
        sources: dict[str, str],
        files: dict[str, str],
        from_cache: bool,
        live: tuple[Evaluator, Module] | None = None,
        broken: dict[str, RecipeError] | None = None,
        root: str = "",
    ) -> None:
        self.file = file
        self.root = root  # the recipe tree (``roots``)
        self.display = display
        self.store_dir = store_dir
        self.drv_paths = drv_paths
        self.drvs = drvs
        self.sources = sources
        self.files = files
        self.from_cache = from_cache
        self._add_source = add_source
        self._live = live  # (Evaluator, Module) once evaluated in this process
        self.broken = broken or {}  # top-level name -> the error evaluating it raised

    def attributes(self) -> dict[str, str]:
        """Every attribute (name → ``.drv`` path), for commands that take them all;
        raises the error of the first top-level binding that failed to evaluate (a
        ``let`` that fails might have been a derivation)."""
        if self.broken:
            raise next(iter(self.broken.values()))
        return self.drv_paths

    def name_of(self, drv_path: str) -> str:
        """The name of derivation ``drv_path`` (from the cache's tuples on a hit)."""
        if isinstance(self.drvs, _cache.LazyDrvs):
            return self.drvs.name_of(drv_path)
        return self.drvs[drv_path].name

    def out_path(self, drv_path: str, output: str = "out") -> str:
        """The path of ``output`` of derivation ``drv_path`` (on a cache hit, without
        building Derivation objects)."""
        if isinstance(self.drvs, _cache.LazyDrvs):
            return self.drvs.out_path(drv_path, output)
        return self.drvs[drv_path].output_path(output)

    @property
    def packages(self) -> dict[str, Derivation]:
        return {a: self.drvs[p] for a, p in self.drv_paths.items()}

    def closure(self, *drv_paths: str) -> list[str]:
        """The ``drv_paths`` and every derivation they depend on, each once,
        dependencies first (one walk for all of them: linear in the closure's size)."""
        out: list[str] = []
        seen: set[str] = set()
        stack = [(p, False) for p in reversed(drv_paths)]
        while stack:
            p, done = stack.pop()
            if done:
                out.append(p)
                continue
            if p in seen:
                continue
            seen.add(p)
            stack.append((p, True))
            for dep, _ in reversed(self.drvs[p].input_drvs):
                if dep not in seen:
                    stack.append((dep, False))
        return out

    def _evaluator(self) -> tuple[Evaluator, Module]:
        """The evaluator and module of this evaluation (on a cache hit, the file is
        evaluated now, once)."""
        if self._live is None:
            fresh = _evaluate(self.file, self.display, self.store_dir, self._add_source, self.root)
            self._live = fresh._live
            merged = dict(self.drvs)
            merged.update(fresh.drvs)
            self.drvs = merged
        live = self._live
        assert live is not None, "_evaluate keeps the evaluator and module it made"
        return live

    def value(self, expr: str) -> tuple[str, Derivation] | object:
        """What ``select`` gives for a package; for any other value (a string, number,
        boolean, list or record: a ``let`` being debugged) its data as JSON takes it
        (``to_data``), where ``select`` raises "not a package"."""
        from .deep import _deep, _recursion_is_recipe_error
        from .values import DrvValue

        found = self._cached(expr)
        if found is not None:
            return found
        node, v = self._eval(expr)
        if isinstance(v, DrvValue):
            return self._package(v)
        return _deep(_recursion_is_recipe_error(lambda: to_data(v, node)))

    def select(self, expr: str) -> tuple[str, Derivation]:
        """The derivation an attribute expression denotes: a top-level name, a variant
        ``name(param = value)`` or any expression in the file's scope."""
        from .values import DrvValue, type_name

        found = self._cached(expr)
        if found is not None:
            return found
        node, v = self._eval(expr)
        if not isinstance(v, DrvValue):
            shown = expr.strip() if len(expr.strip()) <= 60 else expr.strip()[:57] + "..."
            # (an expression over lines must not add lines to the message)
            raise RecipeError(f"'{visible(shown)}' is {type_name(v)}, not a package", node.src, node.pos)
        return self._package(v)

    def _cached(self, expr: str) -> tuple[str, Derivation] | None:
        """A top-level package's (path, derivation) without evaluating; a top-level
        name whose evaluation failed raises its error; else None."""
        p = self.drv_paths.get(expr.strip())
        if p is not None:
            return p, self.drvs[p]
        if expr.strip() in self.broken:
            raise self.broken[expr.strip()]
        return None

    def _eval(self, expr: str) -> tuple[Node, object]:
        """``expr`` parsed and evaluated in the file's scope, on the deep thread."""
        from .reading import check_utf8

        expr = check_utf8(expr, "<attribute>")
        ev, mod = self._evaluator()
        from .parser import parse_expr

        def run() -> tuple[Node, object]:
            # parsed on the deep thread too: a long ATTR expression nests as deeply as
            # one in a file, and must fail the same way (a recipe error, not a crash)
            node = parse_expr(expr, "<attribute>", self.file)
            return node, ev.eval(node, mod.env)

        from .deep import _deep, _recursion_is_recipe_error

        return _deep(_recursion_is_recipe_error(run))

    def _package(self, v: DrvValue) -> tuple[str, Derivation]:
        ev, _mod = self._evaluator()
        if isinstance(self.drvs, dict):
            self.drvs.update(ev.drvs)
        return v.path, v.drv

    def attr(self, name: str, **params: str | int | bool | list[str]) -> Derivation:
        """The derivation of package ``name`` with ``params`` (Python values: str, int,
        bool, list of str)."""
        if not params:
            return self.select(name)[1]
        args = ", ".join(f"{k} = {_literal(v)}" for k, v in params.items())
        return self.select(f"{name}({args})")[1]


#: the most values ``to_data`` writes out (a list of lists that share parts can denote
#: 2**40 strings in a few tuples: shown whole, it would never end)
DATA_MAX = 1_000_000


def to_data(v: object, node: object = None) -> object:
    """``v`` as JSON data: strings, numbers, booleans, lists, records (objects), a package
    as its output path and a source as its store path, as ``nix eval --json`` shows
    them; a function, or more than ``DATA_MAX`` values, is a ``RecipeError``."""
    from .values import CStr, DrvValue, Record, SourceValue, type_name

    count = 0

    def conv(x: object) -> object:
        nonlocal count
        count += 1
        if count > DATA_MAX:
            raise RecipeError(f"the value is too large to show (over {DATA_MAX:,} values)")
        if isinstance(x, bool | int | str):
            return x
        if isinstance(x, CStr):
            return x.text
        if isinstance(x, DrvValue):
            return x.out
        if isinstance(x, SourceValue):
            return x.path
        if isinstance(x, tuple):
            return [conv(e) for e in x]
        if isinstance(x, Record):
            return {k: conv(e) for k, e in sorted(x.items())}
        raise RecipeError(f"cannot show {type_name(x)} as data")

    try:
        return conv(v)
    except RecipeError as e:
        src, pos = getattr(node, "src", None), getattr(node, "pos", None)
        raise RecipeError(e.message, src, pos) from None


def _literal(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    raise TypeError(f"cannot pass {type(v).__name__} as a recipe parameter")


def _evaluate(file: str, display: str, store_dir: str, add_source: AddSource | None, root: str) -> Evaluation:
    from .deep import _deep, _recursion_is_recipe_error, _too_deep
    from .evaluator import Evaluator
    from .scope import PackageFn, Thunk
    from .values import DrvValue

    ev = Evaluator(store_dir, add_source, root)

    def evaluate_module() -> tuple[Module, dict[str, str], dict[str, RecipeError]]:
        mod = ev.load(file, display)
        attrs: dict[str, str] = {}
        broken: dict[str, RecipeError] = {}
        for name in mod.own:
            b = mod.env.vars[name]
            try:
                if isinstance(b, PackageFn):
                    if any(p.default is None for p in b.node.params):
                        continue  # needs arguments: only reachable as name(...)
                    v: object = ev._instantiate(ev, b, {}, b.node)
                else:
                    v = ev.force(b) if isinstance(b, Thunk) else b
            except RecipeError as e:
                # kept for whoever asks for this binding (or for every attribute): a
                # broken package does not block building its neighbours, as in Nix
                broken[name] = e
                continue
            except (RecursionError, MemoryError) as e:  # unwound to here: as above
                broken[name] = _too_deep(e)
                continue
            if isinstance(v, DrvValue):
                attrs[name] = v.path
        return mod, attrs, broken

    # The evaluation allocates hundreds of thousands of long-lived objects and frees
    # almost nothing: the cyclic GC would only re-scan them (a quarter of the time).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        mod, attrs, broken = _deep(_recursion_is_recipe_error(evaluate_module))
    finally:
        if was_enabled:
            gc.enable()
    return Evaluation(
        file,
        display,
        store_dir,
        add_source,
        attrs,
        ev.drvs,
        ev.sources,
        ev.files,
        False,
        (ev, mod),
        broken,
        root,
    )


def evaluate_file(
    path: str | os.PathLike,
    store_dir: str = DEFAULT_STORE_DIR,
    add_source: AddSource | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Evaluation:
    """Evaluate the recipe file at ``path`` (see the module docstring). Imports and
    ``path`` sources must stay in its recipe tree (``roots``: ``$KILN_RECIPE_ROOT`` if
    set, else the nearest directory above the file holding ``.kilnroot``, else its
    directory)."""
    from .roots import ROOT_VAR, recipe_root

    display = os.fspath(path)
    file = os.path.realpath(display)  # as Evaluator.load: the real file, however it is named
    root = recipe_root(file, os.environ.get(ROOT_VAR))
    if cache_dir is not None:
        data = _cache.load(cache_dir, file, store_dir, root)
        if data is not None:
            return Evaluation(
                file,
                display,
                store_dir,
                add_source,
                dict(data["packages"]),
                _cache.LazyDrvs(data["drvs"], data.get("index")),
                {sp: o for sp, o, _ in data["sources"]},
                dict(data["files"]),
                True,
                root=root,
            )
    result = _evaluate(file, display, store_dir, add_source, root)
    if cache_dir is not None and not result.broken:  # (the cache holds whole evaluations)
        # a cache that cannot be written only makes the next evaluation slower; save
        # refuses (ValueError) when a source changed while being added
        import contextlib

        with contextlib.suppress(OSError, ValueError):
            _cache.save(
                cache_dir,
                file,
                store_dir,
                result.files,
                result._evaluator()[0].source_fps,
                result.sources,
                result.drv_paths,
                result.drvs,
                root,
            )
    return result
