"""Glue between recipes, the store, the sandbox and registries for ``kiln build``.

Steps of one ``kiln build FILE ATTR...``:

1. ``evaluate``: the recipe file → ``.drv`` paths (``kiln.lang``, evaluation cache
   under ``<home>/eval-cache``; a cache hit imports neither lark nor the evaluator).
2. ``fast_path``: if every requested output is already valid, print and stop — no
   ``.drv`` is written, the sandbox and HTTP stacks are never imported.
3. ``write_drvs``: the ``.drv`` closure is added to the store (text paths, inputs first).
4. ``Builder.realise`` (``kiln.store.build``) with the bubblewrap executor and, when
   registries are configured, a substituter (``buildsubst``).
5. After each build: sign the outputs (``Sig`` like Nix) and write signed SLSA
   provenance beside them (``provenance``). Then a GC root per attribute, so
   ``kiln run ATTR`` finds it.

Substitution (``make_substituter``, the attestations that come along, and what fails the
command after the build): ``buildsubst``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

from kiln.store.errors import KilnError

if TYPE_CHECKING:
    from collections.abc import Callable

    from kiln.lang import Evaluation
    from kiln.sandbox.executor import Executor
    from kiln.store.localstore import LocalStore
    from kiln.store.signing import SecretKey
    from kiln.store.treeplan import PathFilter


def make_executor() -> Executor:
    """The executor builds run on: bubblewrap, ``$KILN_BWRAP`` naming its binary. The one
    place kiln chooses an executor (``kiln build``, ``rebuild``, ``challenge``,
    ``report``), so another one (a REAPI client: docs/sandbox.md) is chosen here.
    Raises ``SandboxUnavailable`` (with the reason) if it cannot sandbox."""
    from kiln.sandbox.bwrap import BwrapExecutor

    return BwrapExecutor(os.environ.get("KILN_BWRAP") or None)


@dataclass(frozen=True, slots=True)
class Target:
    attr: str
    drv_path: str
    outputs: dict[str, str]


def add_source_fn(store: LocalStore, protect: tuple[str, ...] = ()) -> Callable[[Path, str], str]:
    """``add_source`` callback for ``kiln.lang``: local sources go into the store
    (``protect``: more secret files, as ``add_recipe_source`` takes them)."""

    def add(src: Path, name: str) -> str:
        return add_recipe_source(store, src, name, protect)

    return add


def add_recipe_source(store: LocalStore, src: Path, name: str, protect: tuple[str, ...] = ()) -> str:
    """Add a recipe's ``path`` source ``src`` to ``store`` (once ``check_recipe_source``
    lets it); its store path."""
    from kiln.lang.sources import make_filter

    keep = make_filter(src)
    check_recipe_source(store.root, src, protect, keep)
    return store.add_path(src, name, filter=keep).path


def check_recipe_source(
    store_root: Path, src: Path, protect: tuple[str, ...] = (), keep: PathFilter | None = None
) -> None:
    """Refuse (``KilnError``) a ``path`` source in or around a key directory (the
    ``keys/`` of the store at ``store_root``, ``$KILN_HOME/keys``) or the key
    ``$KILN_SIGN_KEY`` names, or any in ``protect`` (``--sign-key``), even where it lies
    inside the recipe tree (a project's ``.kiln``, a CI key in the repository), unless a
    ``.kilnignore`` leaves it out (``keep``: ``src``'s filter, made here if not given): a
    recipe must not be able to turn a signing key into a signed store path. Asked of every source, cached
    evaluations' too (``readd_sources``): the key may have been named after the
    evaluation was cached."""
    from kiln.lang.sources import make_filter
    from kiln.store.treeplan import left_out

    from .common import default_home

    parent, base = os.path.split(os.path.abspath(src))
    real = os.path.join(os.path.realpath(parent), base)
    secret = [os.path.realpath(store_root / "keys")]
    with contextlib.suppress(KilnError):  # no home directory (nor KILN_HOME): no keys there
        secret.append(os.path.realpath(default_home() / "keys"))
    secret += [os.path.realpath(k) for k in (os.environ.get("KILN_SIGN_KEY"), *protect) if k]
    for key in sorted(set(secret)):
        if os.path.commonpath([real, key]) not in (real, key):
            continue
        if real != key and os.path.commonpath([real, key]) == real:  # above it: left out?
            if keep is None:
                keep = make_filter(src)
            if not left_out(src, real, key, keep, "directory" if os.path.isdir(key) else "regular"):
                raise KilnError(
                    f"{src} holds the signing key or key directory {key}; a recipe may not take it"
                )
            continue
        raise KilnError(f"{src} is the signing key or in the key directory {key}; a recipe may not take it")


def readd_sources(
    store_dir: str,
    sources: dict[str, str],
    is_valid: Callable[[str], bool],
    add: Callable[[Path, str], str],
    check: Callable[[Path], None] | None = None,
) -> bool:
    """After a cache hit: ``check`` every cached source's origin (it raises to refuse
    one), then add again every cached source that is no longer valid (GC'd). False if
    one comes back as another path: the source changed in a way its fingerprint missed,
    and the cached evaluation must not be used."""
    from kiln.store.paths import StorePath

    if check is not None:
        for origin in sorted(set(sources.values())):
            check(Path(origin))
    for sp, origin in sorted(sources.items()):
        if not is_valid(sp) and add(Path(origin), StorePath.parse(sp, store_dir).name) != sp:
            return False
    return True


def evaluate(
    store: LocalStore, file: str, attrs: list[str], use_cache: bool = True, protect: tuple[str, ...] = ()
) -> tuple[Evaluation, list[Target]]:
    """Evaluate ``file`` and return ``(evaluation, targets)`` for ``attrs`` (all the
    file's packages when empty); ``protect``: key files no ``path`` source may take."""
    from kiln.lang import evaluate_file

    if not os.path.exists(file):
        from kiln.lang.errors import visible

        raise KilnError(f"recipe file {visible(file)} does not exist")
    ev = evaluate_file(
        file,
        store_dir=store.store_dir,
        add_source=add_source_fn(store, protect),
        cache_dir=store.root / "eval-cache" if use_cache else None,
    )
    if ev.from_cache:
        # rooted first, then checked: a source GC deletes after the check would leave the
        # derivations written next referring to a path that is gone
        store.keep(sorted(ev.sources))
        check = functools.partial(check_recipe_source, store.root, protect=protect)
        if not readd_sources(
            store.store_dir, ev.sources, store.is_valid, add_source_fn(store, protect), check
        ):
            return evaluate(store, file, attrs, use_cache=False, protect=protect)
    names = attrs or list(ev.attributes())
    if not names:
        raise KilnError(f"{file} defines no packages")
    targets = []
    for a in names:
        p, d = ev.select(a)
        targets.append(Target(a, p, {k: o.path for k, o in d.outputs}))
    return ev, targets


def write_drvs(store: LocalStore, ev: Evaluation, roots: list[str]) -> None:
    """Add the ``.drv`` closure of ``roots`` to the store (dependencies first, each once,
    group-committed by ``LocalStore.add_texts``)."""
    closure = ev.closure(*roots)
    # rooted first, then checked: a GC must not delete a valid .drv we skip (and a later
    # one refers to) before the new ones are registered, nor before the build roots them
    store.keep(closure)
    todo = [p for p in closure if not store.is_valid(p)]
    texts = []
    for p in todo:
        d = ev.drvs[p]
        texts.append((f"{d.name}.drv", d.serialize().encode(), [str(x) for x in d.references()]))
    for p, info in zip(todo, store.add_texts(texts), strict=True):
        if info.path != p:
            raise KilnError(
                f"internal error: derivation {ev.drvs[p].name} stored as {info.path}, expected {p}"
            )


def default_key_name() -> str:
    """``kiln-<user>@<host>-1``: the name of a store's generated signing key. The user is
    in it because trust goes by key name (``signing``): every user of one host would
    otherwise sign as the same ``kiln-<host>-1``. Characters a key name may not hold
    (``cmd_key.check_key_name``: anything outside printable ASCII, whitespace, ``:``,
    ``"``, ``\\``) become ``_``: a key of such a name could not be read back."""
    import pwd

    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        user = str(os.geteuid())
    name = f"kiln-{user}@{os.uname().nodename}-1"
    return "".join(c if " " < c <= "~" and c not in ':"\\' else "_" for c in name)


@overload
def load_sign_key(store: LocalStore, key_file: str | None, create: Literal[True]) -> SecretKey: ...
@overload
def load_sign_key(store: LocalStore, key_file: str | None, create: bool) -> SecretKey | None: ...
def load_sign_key(store: LocalStore, key_file: str | None, create: bool) -> SecretKey | None:
    """The key that signs builds: ``--sign-key``, ``$KILN_SIGN_KEY``, or the store's
    ``keys/default.sec`` (generated on first use when ``create``; else None if there is
    none)."""
    from kiln.store import keyfiles, signing

    path = key_file or os.environ.get("KILN_SIGN_KEY")
    if path:
        return keyfiles.load_secret_key(path)
    default = store.root / "keys" / "default.sec"
    pub = default.with_suffix(".pub")
    if not default.exists():
        if not create:
            return None
        from .common import private_keys_dir

        private_keys_dir(default.parent)
        key = signing.SecretKey.generate(default_key_name())
        try:
            keyfiles.write_secret_key(default, key)
        except KilnError:
            if not default.exists():
                raise
            # another first build made it meanwhile: that one is the store's key
        else:
            keyfiles.write_public_key(pub, key.public(), overwrite=True)  # (derived: always right)
            print(f"generated signing key {default} (public key: {key.public().to_text()})", file=sys.stderr)
            return key
    key = keyfiles.load_secret_key(default)
    if not pub.exists():  # a run killed between the two writes, or a race's loser got here first
        keyfiles.write_public_key(pub, key.public(), overwrite=True)
    return key
