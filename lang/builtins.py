"""Builtin functions: sources (``fetchurl``, ``fetchgit``, ``path``), the Debian
toolchain (``debian_rootfs``); the string/list helpers are in ``stringfns``. ``BUILTINS``
is the table of every builtin the evaluator offers.

Each builtin receives the evaluator, its ``Call`` node and the calling scope, and
evaluates its own arguments (so errors can point at the argument at fault).

Fixed-output derivations (see docs/recipe-language.md):

- ``fetchurl``: builder ``builtin:fetchurl``, env ``url`` (the first), ``urls``
  (space-joined), ``name``; output ``sha256`` (flat) with the hex hash.
- ``fetchgit``: builder ``builtin:fetchgit``, env ``url``, ``rev``, ``name``; output
  ``r:sha256`` (NAR hash of the tree at ``rev`` without ``.git``).
- ``debian_rootfs``: one ``builtin:fetchurl`` FOD per lock entry (``url`` =
  ``debian:<filename>``, ``version`` = the entry's, epoch included) and a ``builtin:unpack-debs`` derivation with env ``debs`` (the
  .deb paths in lock order) and ``kilnRootfs = "1"``.

Sizes (``limits``): a joined list (``urls``, ``debs``) is measured before it is joined,
and each derivation's environment is held to ``limits.check_derivation``. A list built
by doubling repeats one object millions of times: a URL or lock entry is checked, and a
lock entry's fetch made, once per distinct object (by identity).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from kiln.store.aptlock import entry_problem, lock_value_problem
from kiln.store.derivation import Derivation, Output, check_drv_name
from kiln.store.errors import FormatError, KilnError
from kiln.store.hashes import Hash
from kiln.store.paths import check_name

from . import limits, roots
from . import nodes as ast
from . import stringfns as fns
from . import urls as url_rules
from .compile import add_drv, sanitize_name, split_context
from .errors import (
    BadValue,
    HashFormat,
    MissingField,
    RecipeError,
    RecipeTypeError,
    UnknownField,
    did_you_mean,
    visible,
)
from .sources import fingerprint
from .values import CStr, DrvValue, Record, SourceValue, type_name

if TYPE_CHECKING:
    from .evaluator import Evaluator
    from .scope import BuiltinFn, Env

#: a builtin's arguments: name -> (value, the node it came from)
Args = dict[str, tuple[object, ast.Node]]


def _record_args(
    ev: Evaluator, node: ast.Call, env: Env, required: tuple[str, ...], optional: tuple[str, ...]
) -> Args:
    """Arguments of ``f { k = v }`` or ``f(k = v)`` as name → (value, node)."""
    out: Args = {}
    args = node.args
    if len(args) == 1 and args[0][0] is None:
        arg = args[0][1]
        if isinstance(arg, ast.RecordExpr):
            allowed = (*required, *optional)
            for f in arg.fields:
                if f.name not in allowed:
                    _unknown(node.name, f.name, allowed, f)
                out[f.name] = (ev.eval(f.expr, env), f.expr)
        else:
            v = ev.eval(arg, env)
            if not isinstance(v, Record):
                raise RecipeTypeError(f"{node.name} takes a record, found {type_name(v)}", arg.src, arg.pos)
            out = {k: (x, arg) for k, x in v.items()}
    else:
        for name, arg in args:
            if name is None:
                raise RecipeTypeError(
                    f"{node.name} takes named fields: {node.name} {{ field = value }}", arg.src, arg.pos
                )
            out[name] = (ev.eval(arg, env), arg)
    allowed = (*required, *optional)
    for k, (_, n) in out.items():
        if k not in allowed:
            _unknown(node.name, k, allowed, n)
    for k in required:
        if k not in out:
            raise MissingField(f"{node.name} needs a '{k}' field", node.src, node.pos)
    return out


def _unknown(fn: str, name: str, allowed: tuple[str, ...], node: ast.Node) -> NoReturn:
    hint = did_you_mean(name, allowed) or f" (its fields: {', '.join(allowed)})"
    raise UnknownField(f"{fn} has no field '{name}'{hint}", node.src, node.pos)


def _string(ev: Evaluator | None, value: object, node: ast.Node, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, CStr):
        raise RecipeTypeError(
            f"{what} must be a plain string, not one that refers to a package or source", node.src, node.pos
        )
    raise RecipeTypeError(f"{what} must be a string, found {type_name(value)}", node.src, node.pos)


def _sha256(value: object, node: ast.Node, what: str) -> str:
    text = _string(None, value, node, what)
    try:
        return Hash.parse(text, "sha256").hex
    except FormatError as e:
        raise HashFormat(f"bad hash in {what}: {e}", node.src, node.pos) from None


def _kind(v: object) -> str:
    return "an empty list" if isinstance(v, list | tuple) and not v else type_name(v)


def _given_name(ev: Evaluator, a: Args, what: str) -> str:
    """A ``name`` the recipe gives: used as written, or an error at it (a name derived
    from a file or URL is made valid instead, ``sanitize_name``)."""
    value, node = a["name"]
    name = _string(ev, value, node, f"{what} 'name'")
    try:
        check_name(name)
    except FormatError as e:
        raise BadValue(f"{what} name {name!r} cannot be a store path name: {e}", node.src, node.pos) from None
    try:
        check_drv_name(name)
    except FormatError as e:
        raise BadValue(f"{what} name: {e}", node.src, node.pos) from None
    return name


def _fod(
    ev: Evaluator,
    name: str,
    builder: str,
    env: dict[str, str],
    algo: str,
    hex_hash: str,
    fields: dict[str, object],
    attr: str,
    node: ast.Node,
) -> DrvValue:
    env = {**env, "name": name, "out": ""}
    limits.check_derivation(env, (), node, f"{attr} '{name}'")
    drv = Derivation.make(
        name,
        outputs={"out": Output("", algo, hex_hash)},
        builder=builder,
        env=env,
        store_dir=ev.store_dir,
    )
    return add_drv(ev, drv, fields, attr)


def _fetch_url(ev: Evaluator, v: object, node: ast.Node, what: str) -> str:
    """A ``fetchurl`` URL (``urls.fetch_url``)."""
    return url_rules.fetch_url(_string(ev, v, node, what), node, what)


def fetchurl(ev: Evaluator, node: ast.Call, env: Env) -> DrvValue:
    a = _record_args(ev, node, env, ("sha256",), ("url", "urls", "name"))
    urls: list[str] = []
    if "url" in a:
        urls.append(_fetch_url(ev, a["url"][0], a["url"][1], "fetchurl 'url'"))
    if "urls" in a:
        v, n = a["urls"]
        if not isinstance(v, tuple) or not v:
            raise RecipeTypeError(
                f"fetchurl 'urls' must be a non-empty list of strings, found {_kind(v)}", n.src, n.pos
            )
        # the space-joined 'urls' variable, measured first: the list may hold one long URL
        # millions of times (the checks keep a URL's length)
        size = sum(map(len, urls)) + sum(len(u) for u in v if isinstance(u, str)) + len(urls) + len(v) - 1
        limits.check_string(size, n, "fetchurl's 'urls', joined,")
        checked: dict[int, str] = {}  # by identity: each distinct URL is checked once
        for u in v:
            if id(u) not in checked:
                checked[id(u)] = _fetch_url(ev, u, n, "each of fetchurl 'urls'")
            urls.append(checked[id(u)])
    if not urls:
        raise MissingField("fetchurl needs a 'url' (or 'urls') field", node.src, node.pos)
    h = _sha256(a["sha256"][0], a["sha256"][1], "fetchurl 'sha256'")
    name = _given_name(ev, a, "fetchurl") if "name" in a else url_rules.url_name(urls[0])
    env_vars = {"url": urls[0], "urls": " ".join(urls)}
    return _fod(
        ev,
        name,
        "builtin:fetchurl",
        env_vars,
        "sha256",
        h,
        {k: v for k, (v, _) in a.items()},
        "fetchurl",
        node,
    )


def fetchgit(ev: Evaluator, node: ast.Call, env: Env) -> DrvValue:
    a = _record_args(ev, node, env, ("url", "rev", "sha256"), ("name",))
    url = url_rules.git_url(
        _string(ev, a["url"][0], a["url"][1], "fetchgit 'url'"), a["url"][1], "fetchgit 'url'"
    )
    rev = _string(ev, a["rev"][0], a["rev"][1], "fetchgit 'rev'")
    if not rev or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in rev):
        raise BadValue(
            f"fetchgit 'rev' must be a commit, tag or branch name without whitespace or control "
            f"characters, found {rev!r}",
            a["rev"][1].src,
            a["rev"][1].pos,
        )
    h = _sha256(a["sha256"][0], a["sha256"][1], "fetchgit 'sha256'")
    name = _given_name(ev, a, "fetchgit") if "name" in a else url_rules.url_name(url, True)
    return _fod(
        ev,
        name,
        "builtin:fetchgit",
        {"url": url, "rev": rev},
        "r:sha256",
        h,
        {k: v for k, (v, _) in a.items()},
        "fetchgit",
        node,
    )


def path(ev: Evaluator, node: ast.Call, env: Env) -> SourceValue:
    if len(node.args) == 1 and node.args[0][0] is None and not isinstance(node.args[0][1], ast.RecordExpr):
        arg = node.args[0][1]
        a = {"path": (ev.eval(arg, env), arg)}
    else:
        a = _record_args(ev, node, env, ("path",), ("name",))
    rel = _string(ev, a["path"][0], a["path"][1], "path")
    n = a["path"][1]
    base = os.path.dirname(node.src.path) if node.src.path else os.getcwd()
    target = os.path.normpath(os.path.join(base, rel))
    if node.src.path and ev.root is not None:  # (command-line expressions have the entry's)
        real = roots.source_real(target)
        if not roots.inside(ev.root, real):
            raise BadValue(roots.outside_message(f"path {rel!r}", real, ev.root), n.src, n.pos)
    if not os.path.exists(target):
        raise BadValue(
            f"path {rel!r} does not exist (paths are relative to the recipe's directory)", n.src, n.pos
        )
    name = _given_name(ev, a, "path") if "name" in a else _source_name(rel)
    # Fingerprinted before and after adding: the cache pairs this store path with what
    # the source looked like *when it was read*; an edit during the add is not cached.
    try:
        before = fingerprint(Path(target))
        store_path = ev.add_source(Path(target), name)
        after = fingerprint(Path(target))
    except RecipeError as e:
        if e.src is not None:
            raise
        # e.g. a .kilnignore that is not UTF-8: locate it at the path that was named
        raise BadValue(f"cannot add path {rel!r} to the store: {visible(e.message)}", n.src, n.pos) from None
    except (KilnError, OSError) as e:  # a fifo or an unreadable file in the source, ...
        # (the store's message may name a file of the source as it is, newline and all)
        raise BadValue(f"cannot add path {rel!r} to the store: {visible(str(e))}", n.src, n.pos) from None
    ev.sources[store_path] = target
    ev.source_fps[store_path] = before if after == before else None
    return SourceValue(store_path, target)


def _source_name(rel: str) -> str:
    """A ``path`` source's default name: the last component of the path *as the recipe
    writes it*, made valid (``sanitize_name``); ``source`` where that names no component
    (``"."``, ``".."``, ``"./x/.."``), as Nix flakes name theirs. The name of the directory
    a checkout happens to sit in must not enter the store path: the same recipe gives the
    same paths in ``~/app`` and in ``~/app-main``."""
    last = os.path.basename(os.path.normpath(rel))
    return "source" if last in ("", ".", "..") else sanitize_name(last)


_LOCK_FIELDS = ("name", "version", "arch", "sha256", "filename")


def _lock_entry(ev: Evaluator, i: int, entry: object, lock_node: ast.Node) -> DrvValue:
    """The fetch of ``debian_rootfs`` lock entry ``i`` (from 0), its rules checked."""
    where = f"debian_rootfs lock entry {i + 1}"
    if not isinstance(entry, Record):
        raise RecipeTypeError(
            f"{where} must be a record, found {type_name(entry)}", lock_node.src, lock_node.pos
        )
    for k in _LOCK_FIELDS:
        if k not in entry:
            raise MissingField(
                f"{where} has no '{k}' field (needs {', '.join(_LOCK_FIELDS)})",
                lock_node.src,
                lock_node.pos,
            )
    # the lock's own value rules (a filename with a space would split the URL, one
    # with '..' leave the archive), located at the lock
    label = f"{where} ({entry['name']!r})" if isinstance(entry["name"], str) else where
    for k in (*_LOCK_FIELDS, "size"):
        v = entry.get(k, "")
        if isinstance(v, CStr):  # (the lock's own wording would show its repr)
            raise BadValue(
                f"{label}: '{k}': expected a plain string, found a string that refers to store paths",
                lock_node.src,
                lock_node.pos,
            )
        if not isinstance(v, str | int) or isinstance(v, bool):  # a package, a list...: named, not shown
            raise BadValue(
                f"{label}: '{k}': expected {'a whole number' if k == 'size' else 'a string'}, "
                f"found {type_name(v)}",
                lock_node.src,
                lock_node.pos,
            )
        problem = lock_value_problem(k, entry[k]) if k in entry else None
        if problem:
            raise BadValue(f"{label}: '{k}': {problem}", lock_node.src, lock_node.pos)
    # the build pins each .deb by its file name: the entry's other fields must agree
    ident = [v for k in ("name", "version", "arch", "filename") if isinstance(v := entry.get(k), str)]
    if len(ident) == 4 and (problem := entry_problem(*ident)):
        raise BadValue(f"{label}: {problem}", lock_node.src, lock_node.pos)
    filename = _string(ev, entry["filename"], lock_node, f"{where} 'filename'")
    h = _sha256(entry["sha256"], lock_node, f"{where} ({filename}) 'sha256'")
    url = f"debian:{filename}"
    # the lock's version, epoch included: the pool file name drops the epoch, and the SBOM
    # reports this (a purl without the epoch names another version: gcc 4:12.2.0-3)
    fetch_env = {"url": url, "urls": url, "version": str(entry["version"])}
    if "size" in entry:  # the fetcher stops a source at the exact size
        fetch_env["size"] = str(entry["size"])
    return _fod(
        ev,
        url_rules.fetch_name(filename.rsplit("/", 1)[-1]),
        "builtin:fetchurl",
        fetch_env,
        "sha256",
        h,
        dict(entry),
        "deb",
        lock_node,
    )


def debian_rootfs(ev: Evaluator, node: ast.Call, env: Env) -> DrvValue:
    a = _record_args(ev, node, env, ("lock",), ("name",))
    lock, lock_node = a["lock"]
    if not isinstance(lock, tuple) or not lock:
        raise RecipeTypeError(
            f"debian_rootfs 'lock' must be a non-empty list of records, found {_kind(lock)}",
            lock_node.src,
            lock_node.pos,
        )
    debs: list[DrvValue] = []
    done: dict[int, DrvValue] = {}  # by identity: a lock built by doubling repeats entries
    for i, entry in enumerate(lock):
        deb = done.get(id(entry))
        if deb is None:
            deb = done[id(entry)] = _lock_entry(ev, i, entry, lock_node)
        debs.append(deb)
    size = sum(len(d.out) for d in debs) + len(debs) - 1
    limits.check_string(size, lock_node, "debian_rootfs' list of .deb paths, joined,")
    # a given name is used as written, as for the fetchers and ``path`` (an error at it if
    # it cannot be a store path name); the env's ``name`` is the derivation's
    name = _given_name(ev, a, "debian_rootfs") if "name" in a else "debian-rootfs"
    input_drvs, _ = split_context({("d", d.path, "out") for d in debs})
    env_vars = {"debs": " ".join(d.out for d in debs), "kilnRootfs": "1", "name": name, "out": ""}
    limits.check_derivation(env_vars, (), node, f"debian_rootfs '{name}'")
    drv = Derivation.make(
        name,
        outputs={"out": Output()},
        input_drvs=input_drvs,
        builder="builtin:unpack-debs",
        env=env_vars,
        store_dir=ev.store_dir,
    )
    return add_drv(ev, drv, {"debs": tuple(debs)}, "debian_rootfs")


BUILTINS: dict[str, BuiltinFn] = {
    "fetchurl": fetchurl,
    "fetchgit": fetchgit,
    "path": path,
    "debian_rootfs": debian_rootfs,
    "join": fns.join,
    "split": fns.split,
    "replace": fns.replace,
    "lower": fns.str_fn(str.lower),
    "upper": fns.str_fn(str.upper),
    "strip": fns.str_fn(str.strip),
    "basename": fns.str_fn(lambda s: s.rstrip("/").rsplit("/", 1)[-1]),
    "starts_with": fns.pred(str.startswith),
    "ends_with": fns.pred(str.endswith),
    "contains": fns.pred(lambda s, x: x in s),
    "length": fns.length,
    "str": fns.to_str,
    "optional": fns.optional,
    "elem": fns.elem,
}
