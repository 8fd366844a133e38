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
import sys
from collections.abc import Callable, Mapping

from . import cache as _cache
from .errors import RecipeError

# typing.TYPE_CHECKING without importing typing, and no pathlib or threading at import
# time: a cache hit (see kiln.lang.cache) needs none of them
TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: a cache hit needs no Derivation objects
    from pathlib import Path
    from typing import TypeVar

    from kiln.store.derivation import Derivation

    from .scope import Module

    T = TypeVar("T")

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
        live=None,
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

    def _evaluator(self):
        if self._live is None:
            fresh = _evaluate(self.file, self.display, self.store_dir, self._add_source, self.root)
            self._live = fresh._live
            merged = dict(self.drvs)
            merged.update(fresh.drvs)
            self.drvs = merged
        return self._live

    def select(self, expr: str) -> tuple[str, Derivation]:
        """The derivation an attribute expression denotes: a top-level name, a variant
        ``name(param = value)`` or any expression in the file's scope."""
        p = self.drv_paths.get(expr.strip())
        if p is not None:
            return p, self.drvs[p]
        if expr.strip() in self.broken:
            raise self.broken[expr.strip()]
        from .reading import check_utf8

        check_utf8(expr, "<attribute>")
        ev, mod = self._evaluator()
        from .parser import parse_expr
        from .values import DrvValue, type_name

        def run() -> tuple:
            # parsed on the deep thread too: a long ATTR expression nests as deeply as
            # one in a file, and must fail the same way (a recipe error, not a crash)
            node = parse_expr(expr, "<attribute>", self.file)
            return node, ev.eval(node, mod.env)

        node, v = _deep(_recursion_is_recipe_error(run))
        if not isinstance(v, DrvValue):
            shown = expr.strip() if len(expr.strip()) <= 60 else expr.strip()[:57] + "..."
            raise RecipeError(f"'{shown}' is {type_name(v)}, not a package", node.src, node.pos)
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


def _literal(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    raise TypeError(f"cannot pass {type(v).__name__} as a recipe parameter")


def _deep(fn):
    """Run ``fn`` on a thread with a large stack: long dependency chains recurse deeply."""
    import threading

    result: list = []
    error: list = []
    done = threading.Event()

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            error.append(e)
        finally:
            # (not contextlib.suppress: its own Python code is more room for the interrupt)
            try:  # noqa: SIM105
                done.set()
            except BaseException:  # noqa: BLE001, S110 - _unwind's interrupt landed here;
                pass  # it waits on the thread's end as well

    old_limit = sys.getrecursionlimit()
    old_size = threading.stack_size()
    sys.setrecursionlimit(max(old_limit, 400_000))
    try:
        try:
            threading.stack_size(512 * 1024 * 1024)
            # daemon: Ctrl-C in the main thread must not wait for an evaluation to finish
            t = threading.Thread(target=target, name="kiln-eval", daemon=True)
            t.start()
        except (RuntimeError, ValueError, MemoryError):
            # no room for a big stack (ulimit -v): evaluate here, with the usual depth
            sys.setrecursionlimit(old_limit)
            return fn()
        finally:
            threading.stack_size(old_size)
        try:
            # an Event, not t.join(): a join interrupted by Ctrl-C can mark a running
            # thread as stopped (CPython bpo-45274), and _unwind must know it is not
            done.wait()
        except BaseException as e:  # Ctrl-C, or SIGTERM unwinding like it
            _unwind(t, done, e)
            raise
    finally:
        sys.setrecursionlimit(old_limit)
    if error:
        raise error[0]
    return result[0]


#: how long an interrupted evaluation may take to unwind before the command exits anyway
UNWIND_S = 10.0


def _unwind(t, done, e: BaseException) -> None:  # noqa: ANN001 - a Thread and its Event
    """Raise ``e``'s kind in the evaluation thread ``t`` and give it ``UNWIND_S`` to
    unwind (``done`` is set when it has): it may be adding a ``path`` source to the
    store, whose clean-up (a half-written tree and object under ``tmp/``) only runs if
    that thread unwinds. A daemon thread would otherwise just vanish at exit. A second
    Ctrl-C ends the wait."""
    import contextlib
    import ctypes
    import threading
    import time

    if done.is_set() or t.ident is None:
        return
    kind = type(e) if isinstance(e, KeyboardInterrupt | SystemExit) else KeyboardInterrupt
    ident, raise_in = ctypes.c_ulong(t.ident), ctypes.pythonapi.PyThreadState_SetAsyncExc
    # Delivered at the thread's next bytecode, so the thread unwinds as the main thread
    # does on Ctrl-C in ``kiln store add`` (the same code). One catch: CPython gives a new
    # thread's state its creator's id until the new thread runs, and sends the exception
    # to the newest state with that id; so while the evaluation starts a worker thread
    # the exception would kill that worker before it reports having started, and the
    # evaluation would wait for it for ever. A starting thread sits in
    # ``threading._limbo`` from before its state exists until after it has its own id,
    # and enters it under ``_active_limbo_lock``: so the exception is sent under that
    # lock, when no thread is starting.
    lock = getattr(threading, "_active_limbo_lock", None)
    limbo = getattr(threading, "_limbo", None)
    for _ in range(1000):
        if done.is_set():
            break
        with lock if lock is not None else contextlib.nullcontext():
            if not limbo:
                raise_in(ident, ctypes.py_object(kind))
                break
        time.sleep(0.001)
    # until the thread has unwound: ``done`` is set, or the thread is gone (if the
    # interrupt landed in setting ``done``); is_alive is sound here, as nothing joined it
    deadline = time.monotonic() + UNWIND_S
    while not done.wait(0.05) and t.is_alive() and time.monotonic() < deadline:
        pass


def _recursion_is_recipe_error(fn: Callable[[], T]) -> Callable[[], T]:
    """``fn`` wrapped so that a ``RecursionError``/``MemoryError`` it raises becomes an
    ``InfiniteRecursion`` recipe error located at the innermost recipe node found in the
    traceback (unbounded variant recursion like ``p(n = n + 1)``, or absurd nesting): a
    user error, never an internal one. Other exceptions pass through unchanged."""

    def run() -> T:
        try:
            return fn()
        except (RecursionError, MemoryError) as e:
            raise _too_deep(e) from None

    return run


def _too_deep(e: RecursionError | MemoryError) -> RecipeError:
    """The ``InfiniteRecursion`` recipe error for ``e``, located at the innermost recipe
    node among its traceback's frames (the evaluator's own stack is unwound by now)."""
    from .errors import InfiniteRecursion

    what = "too deep" if isinstance(e, RecursionError) else "out of memory"
    node, tb = None, e.__traceback__
    while tb is not None:
        cand = tb.tb_frame.f_locals.get("node")
        if getattr(cand, "src", None) is not None:
            node = cand
        tb = tb.tb_next
    return InfiniteRecursion(
        f"evaluation went {what}: unbounded recursion through package variants "
        "(like p(n = n + 1)) or nesting deeper than kiln evaluates",
        getattr(node, "src", None),
        getattr(node, "pos", None),
    )


def _evaluate(file: str, display: str, store_dir: str, add_source: AddSource | None, root: str) -> Evaluation:
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
    set, else the git work tree holding the file, else its directory)."""
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
                result._live[0].source_fps,
                result.sources,
                result.drv_paths,
                result.drvs,
                root,
            )
    return result
