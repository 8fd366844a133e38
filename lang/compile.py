"""Turning packages and fetches into derivations.

Contract with the build loop (see docs/recipe-language.md, "Derivations"):

- A package becomes ``Derivation.make(name, builder="/bin/bash",
  args=["-euo", "pipefail", "-c", <build>], env=...)`` then ``finalize``. ``name`` is the
  ``name`` field, else ``<package>-<version>`` (or ``<package>`` without a version).
- ``env`` holds every field as a string (lists space-joined, booleans ``"1"``/``""``,
  numbers in decimal, packages as their ``out`` path, sources as their store path), plus
  ``name``, ``out`` and ``PATH`` = ``<dep>/bin:...:/usr/bin:/bin`` over ``deps`` (unless a
  ``PATH`` field is given). A list inside ``deps`` is spliced into it (one level:
  ``toolchain`` is a list of packages), so ``deps = [toolchain, zlib]`` lists three.
  ``debian_packages`` (names in the toolchain's lock, for the SBOM) becomes those
  entries' ``pkg:deb`` purls (``debpkgs``).
- Inputs are the union of the string contexts of all fields: every package or source
  mentioned (in ``deps`` or interpolated anywhere) is an input.
- Variants: a package is memoized per full parameter assignment (after defaults), so
  ``zlib`` and ``zlib(static = false)`` are the same derivation.
- Sizes (``limits``): a list field's space-joined text is held to the string limit
  before it is joined (a list built by doubling may hold one long string millions of
  times), and so is ``PATH``; a package's environment and arguments together are held to it too
  (``limits.check_derivation``), as each field within it does not bound their sum.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

from kiln.store.derivation import Derivation, Output, check_drv_name
from kiln.store.errors import FormatError
from kiln.store.paths import check_name

from . import debpkgs, limits
from . import nodes as ast
from .deep import handler_depth, has_frames_above
from .drvhash import finalize_fast
from .errors import BadValue, InfiniteRecursion, MissingField, RecipeTypeError, UnknownField, did_you_mean
from .values import CStr, DrvValue, Record, SourceValue, canonical, type_name

if TYPE_CHECKING:
    from .evaluator import Evaluator
    from .scope import PackageFn

BASH_ARGS = ("-euo", "pipefail", "-c")
BASE_PATH = "/usr/bin:/bin"
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9+\-._?=]")


def sanitize_name(s: str) -> str:
    """A valid store path name from arbitrary text: bad characters become ``_``."""
    s = _BAD_NAME_CHARS.sub("_", s).lstrip(".")[:211]
    return s or "source"


def add_drv(ev: Evaluator, drv: Derivation, fields: dict, attr: str) -> DrvValue:
    """Finalize ``drv`` (output paths), record it in the evaluation, return its value.
    ``ev.memo`` gets its hash modulo, so dependents never re-serialize it."""
    drv, path, modulo = finalize_fast(drv, ev.memo)
    ev.memo[path] = modulo
    ev.drvs[path] = drv
    return DrvValue(drv, path, fields, attr)


def env_text(v: object, node: ast.Node, field: str, ctx: set) -> str:
    """A field value as an environment string, collecting its context into ``ctx``."""
    if isinstance(v, str):
        return v
    if isinstance(v, CStr):
        ctx |= v.ctx
        return v.text
    if isinstance(v, bool):
        return "1" if v else ""
    if isinstance(v, int):
        return str(v)
    if isinstance(v, DrvValue | SourceValue):
        c = v.as_cstr()
        ctx |= c.ctx
        return c.text
    if isinstance(v, tuple):
        parts = []
        for x in v:
            if isinstance(x, tuple | Record):
                raise RecipeTypeError(
                    f"field '{field}' is a list containing {type_name(x)}; only strings, numbers, "
                    "booleans and packages can be list elements of a field",
                    node.src,
                    node.pos,
                )
            parts.append(env_text(x, node, field, ctx))
        # (measured before joining: the list may repeat one long string millions of times)
        limits.check_string(sum(map(len, parts)) + len(parts) - 1, node, f"field '{field}', joined,")
        return " ".join(parts)
    raise RecipeTypeError(
        f"field '{field}' is {type_name(v)}, which cannot become an environment variable "
        "(use 'let' for values that are not)",
        node.src,
        node.pos,
    )


class TooDeep:
    """``Evaluator.instances`` value of a variant whose evaluation went too deep when
    entered with ``depth`` Python frames above it: entered again as deep or deeper, it
    would again (the same evaluation, with less room), so it fails at once instead of
    recursing as deep again; entered nearer the top, it may fit, and is tried."""

    __slots__ = ("depth",)

    def __init__(self, depth: int) -> None:
        self.depth = depth


#: a variant that went too deep is remembered (``TooDeep``) only if entered within this
#: fraction of the recursion limit from the top: its runaway then fails every binding that
#: uses it at once. One entered deeper (below a long chain, or inside an expression nested
#: deep: it takes frames, not entries of ``ev.stack``) is likely finite, and fits from
#: nearer the top: remembering it too would only cost memory and a check per use.
NEAR_TOP = 8


def instantiate(
    ev: Evaluator, fn: PackageFn, args: dict[str, tuple[object, ast.Node]], call: ast.Node
) -> DrvValue:
    """The derivation of package ``fn`` with ``args`` (name → (value, node))."""
    pkg: ast.Package = fn.node
    params: dict[str, object] = {}
    known = {p.name for p in pkg.params}
    for name, (_, node) in args.items():
        if name not in known:
            hint = did_you_mean(name, known) or (
                f" (its parameters: {', '.join(sorted(known))})" if known else " (it has no parameters)"
            )
            pos = call.name_pos.get(name, node.pos) if isinstance(call, ast.Call) else node.pos
            raise UnknownField(f"package '{pkg.name}' has no parameter '{name}'{hint}", node.src, pos)
    # every missing parameter in one error (one at a time took a run each)
    missing = [p.name for p in pkg.params if p.name not in args and p.default is None]
    if missing:
        names = ", ".join(f"'{m}'" for m in missing)
        write = ", ".join(f"{m} = ..." for m in missing)
        plural = "s" if len(missing) > 1 else ""
        raise MissingField(
            f"package '{pkg.name}' needs parameter{plural} {names}: write {pkg.name}({write})",
            call.src,
            call.pos,
        )
    for p in pkg.params:
        if p.name in args:
            params[p.name] = args[p.name][0]
        else:
            assert p.default is not None  # (checked above)
            params[p.name] = ev.eval(p.default, fn.env)
    key = (id(fn), tuple(canonical(params[p.name]) for p in pkg.params))
    done = ev.instances.get(key)
    if isinstance(done, DrvValue):
        return done
    if isinstance(done, TooDeep):
        if has_frames_above(done.depth):  # one runaway variant costs its depth once
            raise InfiniteRecursion(
                f"evaluation went too deep: package '{pkg.name}' with these parameters went too deep "
                "before, from no deeper than here: unbounded recursion through package variants "
                "(like p(n = n + 1)) or nesting deeper than kiln evaluates",
                call.src,
                call.pos,
            )
        done = None  # nearer the top than when it failed: it may fit now
    if done is not None:
        chain = " → ".join([*(n for n, _ in ev.stack), pkg.name])
        raise InfiniteRecursion(f"package '{pkg.name}' depends on itself: {chain}", call.src, call.pos)
    ev.instances[key] = False
    ev.stack.append((pkg.name, pkg))
    try:
        value = _compile(ev, fn, pkg, params)
    except RecursionError as e:
        try:
            depth: int | None = handler_depth(e)
        except RecursionError:  # (no room left even to measure: not remembered)
            depth = None
        if depth is not None and depth <= sys.getrecursionlimit() // NEAR_TOP:
            ev.instances[key] = TooDeep(depth)
        else:
            del ev.instances[key]
        raise
    except BaseException:
        del ev.instances[key]
        raise
    finally:
        ev.stack.pop()
    ev.instances[key] = value
    return value


def _compile(ev: Evaluator, fn: PackageFn, pkg: ast.Package, params: dict[str, object]) -> DrvValue:
    from .scope import Env, Thunk

    env = Env(dict(params), fn.env)
    thunks: dict[str, Thunk] = {}
    for b in (*pkg.lets, *pkg.fields):
        env.vars[b.name] = thunks[b.name] = Thunk(b.expr, env, b.name)
    fields: dict = {}
    by_name = {b.name: b for b in pkg.fields}
    for b in pkg.fields:
        if b.name == "out":
            raise BadValue("'out' is set by kiln (the output path); choose another field name", b.src, b.pos)
        if b.name in ("outPath", "drvPath"):  # pkg.outPath / pkg.drvPath read the paths
            raise BadValue(
                f"'{b.name}' names the package's {'output' if b.name == 'outPath' else '.drv'} path "
                "(pkg." + b.name + "); choose another field name",
                b.src,
                b.pos,
            )
        fields[b.name] = ev.force(thunks[b.name])
    dep_nodes: list[ast.Node] = []
    if isinstance(fields.get("deps"), tuple):
        fields["deps"], dep_nodes = splice_deps(fields["deps"], by_name["deps"].expr)
    if "build" not in fields:
        raise MissingField(
            f"package '{pkg.name}' has no 'build' field (the shell script that builds it)", pkg.src, pkg.pos
        )
    ctx: set = set()
    env_vars: dict[str, str] = {}
    for name, v in fields.items():
        text = env_text(v, by_name[name].expr, name, ctx)
        if "\0" in text:  # execve would refuse it at build time, far from the cause
            e = by_name[name].expr
            raise BadValue(
                f"field '{name}' contains a NUL character, which an environment variable cannot hold",
                e.src,
                e.pos,
            )
        env_vars[name] = text
    if not isinstance(fields["build"], str | CStr):
        b = by_name["build"]
        raise RecipeTypeError(
            f"field 'build' must be a string, found {type_name(fields['build'])}", b.expr.src, b.expr.pos
        )
    deps = fields.get("deps", ())
    if not isinstance(deps, tuple):
        b = by_name["deps"]
        raise RecipeTypeError(f"field 'deps' must be a list, found {type_name(deps)}", b.expr.src, b.expr.pos)
    bins = []
    for i, d in enumerate(deps):
        if not isinstance(d, DrvValue | SourceValue):
            node = dep_nodes[i]
            raise RecipeTypeError(
                f"'deps' entries must be packages or sources (or lists of them), found {type_name(d)}",
                node.src,
                node.pos,
            )
        bins.append(f"{d.out if isinstance(d, DrvValue) else d.path}/bin")
    toolchains = [
        i for i, d in enumerate(deps) if isinstance(d, DrvValue) and dict(d.drv.env).get("kilnRootfs") == "1"
    ]
    if len(toolchains) > 1:
        # (the build loop mounts one as /usr, /bin, /lib: found here, not at build time)
        node = dep_nodes[toolchains[1]]
        raise BadValue(
            f"'deps' holds {len(toolchains)} toolchains (debian_rootfs); a package builds on one",
            node.src,
            node.pos,
        )
    if debpkgs.FIELD in fields:
        tc = deps[toolchains[0]] if toolchains else None
        env_vars[debpkgs.FIELD] = debpkgs.resolve(fields[debpkgs.FIELD], by_name[debpkgs.FIELD].expr, tc)
    if "PATH" not in fields:
        if bins:
            size = sum(map(len, bins)) + len(bins) + len(BASE_PATH)
            limits.check_string(size, by_name["deps"].expr, "the PATH made of 'deps'")
        env_vars["PATH"] = ":".join([*bins, BASE_PATH])
    if "name" in fields:
        name = env_vars["name"]
        node = by_name["name"].expr
    else:
        version = env_vars.get("version")
        name = f"{pkg.name}-{version}" if version else pkg.name
        node = by_name["version"].expr if version else pkg
    try:
        check_name(name)
    except FormatError as e:
        raise BadValue(
            f"package name {name!r} cannot be a store path name: {e}", node.src, node.pos
        ) from None
    try:
        check_drv_name(name)
    except FormatError as e:
        raise BadValue(f"package name: {e}", node.src, node.pos) from None
    env_vars["name"] = name
    env_vars["out"] = ""
    limits.check_derivation(env_vars, (*BASH_ARGS, env_vars["build"]), pkg, f"package '{pkg.name}'")
    input_drvs, input_srcs = split_context(ctx)
    drv = Derivation.make(
        name,
        outputs={"out": Output()},
        input_drvs=input_drvs,
        input_srcs=input_srcs,
        builder="/bin/bash",
        args=(*BASH_ARGS, env_vars["build"]),
        env=env_vars,
        store_dir=ev.store_dir,
    )
    return add_drv(ev, drv, fields, pkg.name)


def splice_deps(deps: tuple, expr: ast.Node) -> tuple[tuple, list[ast.Node]]:
    """``deps`` with each list in it spliced in its place (one level; a list in such a list
    is refused), and for each entry the node it came from, for error positions: its item
    when the field is a list literal, else the whole expression."""
    items = expr.items if isinstance(expr, ast.ListExpr) and len(expr.items) == len(deps) else None
    out: list = []
    nodes: list[ast.Node] = []
    for i, d in enumerate(deps):
        node = items[i] if items is not None else expr
        for x in d if isinstance(d, tuple) else (d,):
            if isinstance(x, tuple):
                raise RecipeTypeError(
                    "'deps' entries must be packages or sources (or lists of them), found a list of lists",
                    node.src,
                    node.pos,
                )
            out.append(x)
            nodes.append(node)
    return tuple(out), nodes


def split_context(ctx: set) -> tuple[dict[str, list[str]], list[str]]:
    """Context entries → (input derivations with outputs, input sources)."""
    input_drvs: dict[str, list[str]] = {}
    input_srcs: list[str] = []
    for entry in sorted(ctx):
        if entry[0] == "d":
            input_drvs.setdefault(entry[1], []).append(entry[2])
        else:
            input_srcs.append(entry[1])
    return input_drvs, input_srcs
