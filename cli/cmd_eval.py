"""``kiln eval``, ``kiln show-derivation``, ``kiln path``, ``kiln graph``.

All four evaluate a recipe file with ``kiln.lang.evaluate_file`` (served from the
evaluation cache under ``<store root>/eval-cache`` when nothing changed; ``--no-cache``
skips it, and so does a store root holding no store: evaluating never creates one, see
``_cache_dir``) and print derivations; none of them builds anything. ``ATTR`` is a top-level
name, a variant such as ``'zlib(static = true)'`` or any expression in the file's scope.
Local ``path "..."`` sources are added to the local store when there is one (they have
to be hashed anyway); with none, their paths are computed without writing anything
(``evalsources.Sources``), and ``kiln eval --write`` creates the store it writes into.
The logical store dir is the store's own (its ``config.json``), else ``/kiln/store``,
unless ``--store-dir`` says otherwise. ``kiln eval --write`` also writes the ``.drv``
closure into the local store (what ``nix-instantiate`` does by default).

The everyday ``kiln eval FILE`` (one argument, no option) skips argparse: on an
evaluation-cache hit, argparse and what it imports (re, gettext, locale, shutil) would
be a quarter of the command's time. ``_plain_eval_args`` builds the same namespace the
parser would (a test holds them equal). Nothing here imports pathlib or json until a
path needs it, for the same reason.
"""

from __future__ import annotations

import gc
import os
import sys

from .common import add_store_arg, nonempty, store_root_dir
from .evalsources import Sources, has_store

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping
    from types import SimpleNamespace

    from kiln.lang import Evaluation
    from kiln.store.derivation import Derivation
    from kiln.store.localstore import LocalStore
    from kiln.store.paths import StorePath

    #: parsed arguments: argparse's, or ``_plain_eval_args``' (made without importing it)
    EvalArgs = argparse.Namespace | SimpleNamespace

DEFAULT_STORE_DIR = "/kiln/store"
#: the config ``storeconfig.init_config`` writes for a store with the default store dir:
#: known without json (a cached eval uses an existing store's cache, and json costs ms)
_DEFAULT_CONFIG = b'{"store_dir": "/kiln/store", "version": 1}\n'


def _parser(cmd: str) -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(prog=f"kiln {cmd}")
    if cmd == "show-derivation":
        p.description = "Print a derivation as JSON (like 'nix show-derivation')."
        p.add_argument("file", metavar="FILE|DRVPATH", help="a recipe file, or a .drv path")
        p.add_argument("attr", nargs="?", type=nonempty, metavar="ATTR", help="package (with FILE)")
        p.add_argument("--aterm", action="store_true", help="print the ATerm text instead")
        p.add_argument("-r", "--recursive", action="store_true", help="include every input derivation")
    else:
        p.add_argument("file", metavar="FILE", help="a .recipe file")
        p.add_argument("attr", nargs="?" if cmd == "eval" else None, type=nonempty, metavar="ATTR")
    if cmd == "eval":
        p.description = "Evaluate a recipe file and print each package's .drv and output path."
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--write", action="store_true", help="write the .drv files into the local store")
    if cmd == "path":
        p.description = "Print the output path of a package without building it."
    if cmd == "graph":
        p.description = "Print the dependency graph of a package (a tree, or DOT with --dot)."
        p.add_argument("--dot", action="store_true", help="Graphviz DOT output")
    add_store_arg(p)
    p.add_argument(
        "--store-dir", default=None, metavar="DIR", help="logical store dir (default: the store's)"
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the evaluation cache")
    return p


def _plain_eval_args(file: str) -> SimpleNamespace:
    """What ``_parser("eval").parse_args([file])`` returns, without argparse."""
    from types import SimpleNamespace

    return SimpleNamespace(
        file=file, attr=None, json=False, write=False, store=None, store_dir=None, no_cache=False
    )


def _store_dir(args: EvalArgs) -> str:
    """``--store-dir``, else the store's (its config checked as opening the store checks
    it: a damaged one is an error, never a silent default), else the default. The usual
    case, no store or the default dir, imports nothing heavy (a cached eval is fast)."""
    from kiln.store.errors import KilnError

    if args.store_dir:
        from kiln.store.errors import FormatError
        from kiln.store.paths import check_store_dir

        try:
            return check_store_dir(args.store_dir)  # (a store using it checks more, when opened)
        except FormatError as e:
            raise KilnError(f"--store-dir: {e}") from None
    return _own_store_dir(args)


def _own_store_dir(args: EvalArgs) -> str:
    """The store's logical dir (its config), else the default (``_store_dir``)."""
    from kiln.store.errors import KilnError

    cfg = os.path.join(store_root_dir(args), "config.json")
    try:
        with open(cfg, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return DEFAULT_STORE_DIR
    except OSError as e:
        raise KilnError(f"cannot read store config {cfg}: {e}") from None
    if text == _DEFAULT_CONFIG:
        return DEFAULT_STORE_DIR
    import json

    try:
        data = json.loads(text)
    except ValueError as e:
        raise KilnError(f"cannot read store config {cfg}: {e}") from None
    if isinstance(data, dict) and data.get("store_dir") == DEFAULT_STORE_DIR:
        return DEFAULT_STORE_DIR
    from pathlib import Path

    from kiln.store.localstore import config_store_dir

    return config_store_dir(Path(cfg), data)  # the store's own checks and messages


def _cache_dir(args: EvalArgs, root: str) -> str | None:
    """The evaluation cache to use: ``<root>/eval-cache`` of an existing store (its
    ``config.json``, as ``LocalStore.open`` decides), else None. Evaluating only reads:
    it never creates a store, nor the directories of one (``HOME=/nonexistent kiln path``
    made ``/nonexistent/.local/share/kiln/eval-cache``, a store ``kiln store roots``
    then said was not there)."""
    if args.no_cache or not has_store(root):
        return None
    return os.path.join(root, "eval-cache")


def _evaluate(args: EvalArgs) -> tuple[Evaluation, Sources]:
    from kiln.lang import evaluate_file

    root = store_root_dir(args)
    store_dir = _store_dir(args)
    write = getattr(args, "write", False)
    # paths for another store dir than the store's (``--store-dir``): computed as with no
    # store, without its sources or its cache (``--write`` still opens it, and refuses)
    foreign = bool(args.store_dir) and not write and has_store(root) and _own_store_dir(args) != store_dir
    sources = Sources(root, store_dir, create=write, foreign=foreign)
    cache = None if foreign else _cache_dir(args, root)
    ev = evaluate_file(args.file, store_dir=store_dir, add_source=sources, cache_dir=cache)
    if ev.from_cache and not sources.ensure(ev.sources):
        ev = evaluate_file(args.file, store_dir=store_dir, add_source=sources, cache_dir=None)
    # The evaluation's objects live until exit: keep the cyclic GC from re-scanning them
    # (a quarter of the run time for 10,000 packages). Fine in a short-lived command.
    gc.freeze()
    return ev, sources


def _show_json(ev_drvs: Mapping[str, Derivation], paths: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for p in paths:
        d = ev_drvs[p]
        outputs = {}
        for k, o in d.outputs:
            outputs[k] = {"path": o.path, **({"hashAlgo": o.hash_algo, "hash": o.hash} if o.hash else {})}
        out[p] = {
            "outputs": outputs,
            "inputSrcs": list(d.input_srcs),
            "inputDrvs": {k: list(v) for k, v in d.input_drvs},
            "system": d.platform,
            "builder": d.builder,
            "args": list(d.args),
            "env": dict(d.env),
        }
    return out


def _cmd_eval(args: EvalArgs) -> int:
    ev, sources = _evaluate(args)
    if args.attr:
        got = ev.value(args.attr)
        if not isinstance(got, tuple):  # (not a package: its value, as JSON, as nix eval --json)
            import json

            if args.write:
                from kiln.store.errors import KilnError

                raise KilnError(f"--write: {args.attr!r} is no package, so it has no derivation to write")
            print(json.dumps(got, indent=2 if args.json else None, ensure_ascii=False))
            return 0
        p = got[0]
        items = [(args.attr, p)]
    else:
        items = list(ev.attributes().items())
    if args.write:
        from .buildglue import write_drvs

        write_drvs(sources._open(), ev, [p for _, p in items])
    # names and output paths come straight from the cache's tuples on a hit
    if args.json:
        import json

        data = {a: {"name": ev.name_of(p), "drvPath": p, "outPath": ev.out_path(p)} for a, p in items}
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        width = max((len(a) for a, _ in items), default=0)
        sys.stdout.write("".join(f"{a:<{width}}  {p} -> {ev.out_path(p)}\n" for a, p in items))
    return 0


def _drv_of(store: LocalStore, target: str) -> StorePath:
    """The .drv path ``target`` names: itself, or (as ``nix show-derivation`` takes an
    output) the deriver of the output a path, GC root name, base name or hash part names."""
    from kiln.store.errors import KilnError
    from kiln.store.paths import StorePath

    from .targets import resolve_target

    path = resolve_target(store, target)
    if path.endswith(".drv"):  # (by path, base name, hash part or root name)
        return StorePath.parse(path, store.store_dir)
    info = store.query(path)
    if info is None or not info.deriver:
        raise KilnError(f"{target} is not a .drv path, and {path} has no known deriver")
    return StorePath.parse(info.deriver, store.store_dir)


def _cmd_show(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    drvs: Mapping[str, Derivation]
    if args.attr is None:
        from kiln.store.drvparse import decode, parse
        from kiln.store.errors import KilnError
        from kiln.store.paths import StorePath

        target = args.file
        if target.endswith(".recipe"):
            from kiln.lang.errors import visible

            raise KilnError(f"which package of {visible(target)}? usage: kiln show-derivation FILE ATTR")
        if Path(target).is_file():
            if args.recursive:  # its inputs are named by store path: only a store has them
                raise KilnError(
                    "-r needs a .drv path in the store (a loose .drv file names inputs it does not hold)"
                )
            text = decode(Path(target).read_bytes(), target)
            name = Path(target).name.split("-", 1)[-1].removesuffix(".drv")
            # a loose file may be made for any store dir: its own, unless --store-dir says
            drvs = {target: parse(text, name, args.store_dir or None)}
            paths = list(drvs)
        else:
            from kiln.store.localstore import LocalStore

            store = LocalStore.open(Path(store_root_dir(args)), create=False)
            sp = _drv_of(store, target)
            read: dict[str, Derivation] = {}
            paths = []
            todo = [str(sp)]
            while todo:  # -r: every input derivation, read from the store, inputs first
                p = todo.pop()
                if p in read:
                    continue
                if store.query(p) is None:
                    raise KilnError(f"{p} is not in the store (write it with 'kiln eval --write FILE')")
                read[p] = parse(
                    decode(store.real_path(p).read_bytes(), p), StorePath.parse(p).name[:-4], store.store_dir
                )
                paths.append(p)
                if args.recursive:
                    todo.extend(k for k, _ in read[p].input_drvs)
            drvs = read
            paths.sort(key=lambda p: p != str(sp))  # the one asked for first, then its inputs
    else:
        ev, _ = _evaluate(args)
        p, _ = ev.select(args.attr)
        drvs = ev.drvs
        paths = ev.closure(p)[::-1] if args.recursive else [p]
    if args.aterm:
        for p in paths:
            sys.stdout.write(drvs[p].serialize() + "\n")
    else:
        print(json.dumps(_show_json(drvs, paths), indent=2, sort_keys=True))
    return 0


def _cmd_path(args: argparse.Namespace) -> int:
    ev, _ = _evaluate(args)
    _, d = ev.select(args.attr)
    print(d.output_path("out"))
    return 0


def _label(d: Derivation) -> str:
    return d.name


def _cmd_graph(args: argparse.Namespace) -> int:
    ev, _ = _evaluate(args)
    top, _ = ev.select(args.attr)
    drvs = ev.drvs
    if args.dot:
        lines = ["digraph kiln {", "  rankdir=LR;", "  node [shape=box];"]
        for p in ev.closure(top):
            d = drvs[p]
            style = ", style=dashed" if d.is_fixed_output else ""
            lines.append(f'  "{p}" [label="{_label(d)}"{style}];')
            for dep, _ in d.input_drvs:
                lines.append(f'  "{p}" -> "{dep}";')
            for src in d.input_srcs:
                lines.append(f'  "{p}" -> "{src}";')
                lines.append(f'  "{src}" [label="{src.rsplit("/", 1)[-1][33:]}", shape=folder];')
        lines.append("}")
        print("\n".join(lines))
        return 0
    seen: set[str] = set()
    out: list[str] = []

    def walk(p: str, prefix: str, last: bool, root: bool) -> None:
        d = drvs[p]
        branch = "" if root else ("└── " if last else "├── ")
        again = p in seen
        out.append(f"{prefix}{branch}{_label(d)}  {d.output_path('out')}{' (see above)' if again else ''}")
        if again:
            return
        seen.add(p)
        kids = [k for k, _ in d.input_drvs] + list(d.input_srcs)
        child_prefix = prefix if root else prefix + ("    " if last else "│   ")
        for i, k in enumerate(kids):
            if k in drvs:
                walk(k, child_prefix, i == len(kids) - 1, False)
            else:
                out.append(f"{child_prefix}{'└── ' if i == len(kids) - 1 else '├── '}{k} (source)")

    walk(top, "", True, True)
    print("\n".join(out))
    return 0


_COMMANDS = {"eval": _cmd_eval, "show-derivation": _cmd_show, "path": _cmd_path, "graph": _cmd_graph}


def main(argv: list[str]) -> int:
    cmd, rest = argv[0], argv[1:]
    if cmd == "eval" and len(rest) == 1 and not rest[0].startswith("-"):
        return _cmd_eval(_plain_eval_args(rest[0]))
    args = _parser(cmd).parse_args(rest)
    return _COMMANDS[cmd](args)
