"""Glue between recipes, the store, the sandbox and registries for ``kiln build``.

Steps of one ``kiln build FILE ATTR...``:

1. ``evaluate``: the recipe file → ``.drv`` paths (``kiln.lang``, evaluation cache
   under ``<home>/eval-cache``; a cache hit imports neither lark nor the evaluator).
2. ``fast_path``: if every requested output is already valid, print and stop — no
   ``.drv`` is written, the sandbox and HTTP stacks are never imported.
3. ``write_drvs``: the ``.drv`` closure is added to the store (text paths, inputs first).
4. ``Builder.realise`` (``kiln.store.build``) with the bubblewrap executor and, when
   registries are configured, a substituter.
5. After each build: sign the outputs (``Sig`` like Nix) and write signed SLSA
   provenance beside them (``provenance``). Then a GC root per attribute, so
   ``kiln run ATTR`` finds it.

Attestations of substituted paths (``_fetch_attestations``) follow ``kiln copy --to
store``: they are stored when a ``--trusted-key`` or ``--attester-key`` signed them;
one of an unknown signer, or older than the local one, is a warning; one refused as
tampered with or not what the registry listed for that path (``attest_fetch.Refused``:
``tampered``, ``bad``) does not stop the build — the substituted paths are vouched for
by their own signatures — but is named again after it (``AttestationsRefused``, raised
by ``cmd_build`` once the outputs are rooted): the command exits 1.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.store.errors import KilnError, redact_urls

if TYPE_CHECKING:
    from collections.abc import Callable

    from kiln.lang import Evaluation
    from kiln.store.localstore import LocalStore
    from kiln.store.signing import SecretKey
    from kiln.store.treeplan import PathFilter


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
    check_recipe_source(store, src, protect, keep)
    return store.add_path(src, name, filter=keep).path


def check_recipe_source(
    store: LocalStore, src: Path, protect: tuple[str, ...] = (), keep: PathFilter | None = None
) -> None:
    """Refuse (``KilnError``) a ``path`` source in or around a key directory (the store's
    ``keys/``, ``$KILN_HOME/keys``) or the key ``$KILN_SIGN_KEY`` names, or any in
    ``protect`` (``--sign-key``), even where it lies inside the recipe tree (a project's
    ``.kiln``, a CI key in the repository), unless a ``.kilnignore`` leaves it out
    (``keep``: ``src``'s filter, made here if not given): a recipe must not be able to
    turn a signing key into a signed store path. Asked of every source, cached
    evaluations' too (``readd_sources``): the key may have been named after the
    evaluation was cached."""
    from kiln.lang.sources import make_filter
    from kiln.store.treeplan import left_out

    from .common import default_home

    parent, base = os.path.split(os.path.abspath(src))
    real = os.path.join(os.path.realpath(parent), base)
    secret = [os.path.realpath(store.root / "keys")]
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
        check = functools.partial(check_recipe_source, store, protect=protect)
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
    (``:``, whitespace) become ``_``."""
    import pwd

    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        user = str(os.geteuid())
    name = f"kiln-{user}@{os.uname().nodename}-1"
    return "".join("_" if c == ":" or c.isspace() else c for c in name)


def load_sign_key(store: LocalStore, key_file: str | None, create: bool) -> SecretKey | None:
    """The key that signs builds: ``--sign-key``, ``$KILN_SIGN_KEY``, or the store's
    ``keys/default.sec`` (generated on first use when ``create``)."""
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


class AttestationsRefused(KilnError):
    """Attestations of substituted paths were refused (module docstring); ``targets``:
    what the build produced and rooted, set by ``cmd_build`` before it raises this."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.targets: list[Target] = []


def make_substituter(
    urls: list[str], trusted_keys: list[str], sigs_needed: int | None, attester_keys: list[str] | None = None
) -> Callable[[LocalStore, list[str]], set[str]] | None:
    """A substitution callback for ``Builder`` (None when no registry is configured).

    Registries come from ``--substituter`` plus ``KILN_SUBSTITUTERS``; trusted keys from
    ``--trusted-key`` (key text or a .pub file) plus ``KILN_TRUSTED_KEYS``; the threshold
    from ``--sigs-needed`` or ``KILN_SIGS_NEEDED`` (default 1). A ``--private``
    registry's read token comes from ``KILN_SUBSTITUTER_TOKENS`` (``URL=TOKEN`` pairs,
    whitespace-separated; each token goes to its own URL only). Each missing path is
    fetched with its whole closure; a path whose closure cannot be completed from the
    registries, or that fails verification, stays missing (and is built), with a
    warning. An unreachable registry is a miss, never a failure. Attestations come along
    (``_fetch_attestations``), judged by the trusted keys and ``attester_keys``
    (``--attester-key``: key text or a .pub file, for attestations only). Call its
    ``close()`` when done (it holds HTTP sessions and an event loop), then its
    ``refusal()``: the ``AttestationsRefused`` to raise once the outputs are rooted, or
    None."""
    env_urls = os.environ.get("KILN_SUBSTITUTERS", "")
    if not urls and not env_urls.strip():
        return None
    from kiln.registry.substitute import Substituter, parse_registries

    from .common import load_trusted_key
    from .common import trusted_keys as load_trusted_keys

    regs = [(u, i) for i, u in enumerate(urls)] + parse_registries(env_urls, default_priority=len(urls) + 40)
    keys = load_trusted_keys(trusted_keys)
    attesters = [load_trusted_key(k) for k in attester_keys or []]
    refused: list[str] = []  # attestation refusals that fail the command after the build
    if sigs_needed is not None:
        needed = sigs_needed
    else:  # the rule of every number read from the environment (unset or empty: 1)
        from kiln.store.envnumber import whole_number

        needed = whole_number("KILN_SIGS_NEEDED", 1, KilnError, "a whole number >= 0")
    if needed == 0:
        from .common import warn_no_signatures

        warn_no_signatures("substitutes are fetched")
    tokens = {}
    for item in os.environ.get("KILN_SUBSTITUTER_TOKENS", "").split():
        url, eq, token = item.rpartition("=")
        if not eq or not url or not token:
            raise KilnError("KILN_SUBSTITUTER_TOKENS: expected URL=TOKEN pairs separated by spaces")
        tokens[url] = token
    sub = Substituter(regs, keys, needed, tokens=tokens)
    said: set[str] = set()

    def say_what_was_not_used() -> None:
        """Registries that could not be used and narinfos refused, once each: a build
        that quietly builds what a registry has (a typo in its URL, a wrong key) is
        what users of other caches complain about."""
        for url, why in sorted(sub.down.items()):
            if url not in said:
                said.add(url)
                print(f"warning: substituter {redact_urls(url)} not used: {why}", file=sys.stderr)
        refused = sorted(p for p in sub.rejected if p not in said)
        if refused:
            said.update(refused)
            print(
                f"warning: {len(refused)} narinfo(s) refused, those paths are built instead; "
                f"e.g. {refused[0]}: {redact_urls(sub.rejected[refused[0]])}",
                file=sys.stderr,
            )

    def substitute(store: LocalStore, missing: list[str]) -> set[str]:
        try:
            return fetch_from_registries(store, missing)
        finally:
            say_what_was_not_used()

    def fetch_from_registries(store: LocalStore, missing: list[str]) -> set[str]:
        infos = sub.query_many(missing)
        wanted = dict(infos)
        frontier = list(infos.values())
        while frontier:
            refs = {r for i in frontier for r in i.references if r not in wanted}
            # rooted first, then checked: a GC must not collect a reference we count on
            # between the check and the import that needs it
            store.keep(sorted(refs))
            refs = {r for r in refs if not store.is_valid(r)}
            more = sub.query_many(sorted(refs)) if refs else {}
            wanted.update(more)
            frontier = list(more.values())
        # keep only paths whose whole closure is available (fixpoint: drop, re-check)
        complete = set(wanted)
        changed = True
        while changed:
            changed = False
            for p in list(complete):
                if not all(r == p or r in complete or store.is_valid(r) for r in wanted[p].references):
                    complete.discard(p)
                    changed = True
        if complete != set(wanted):
            print(
                f"warning: {len(wanted) - len(complete)} path(s) lack part of their closure on the registries",
                file=sys.stderr,
            )
        try:
            got = sub.fetch_many(store, [wanted[p] for p in sorted(complete)])
        except KilnError as e:
            print(f"warning: substitution failed, building instead: {e}", file=sys.stderr)
            return set()
        fetched = sorted(g.path for g in got)
        if fetched:
            _fetch_attestations(sub, regs, store, fetched, attesters, refused)
        return set(fetched)

    def refusal() -> AttestationsRefused | None:
        if not refused:
            return None
        return AttestationsRefused(
            "\n".join(refused) + "\nthe build went on: the substituted paths (each checked by its own "
            "signatures) and what was built are in the store; the attestations refused above were not stored"
        )

    substitute.close = sub.close  # type: ignore[attr-defined]  # the caller closes it when done
    substitute.refusal = refusal  # type: ignore[attr-defined]
    return substitute


def _fetch_attestations(
    sub, regs: list[tuple[str, int]], store, paths: list[str], attesters: list, refused: list[str]
) -> None:
    """Bring the registries' attestations (provenance, SBOM, VSAs) of substituted paths
    along, each checked against the path's NAR hash and judged by the substitution's
    trusted keys and ``attesters``. Attestations are evidence, not content: a registry
    without them, one it could not send, or one signed by a key unknown here costs a
    warning. One refused as tampered with or not as listed is added to ``refused``
    (the command fails after the build, module docstring) and said now in one line."""
    from kiln.registry.attest_fetch import Refused, fetch_attestations

    for url, _ in sorted(regs, key=lambda r: r[1]):
        try:
            sub.run(fetch_attestations(sub.client(url), store, paths, attesters=attesters))
        except Refused as e:
            if not (e.tampered or e.bad):  # (only files not received: as any transfer error)
                print(f"warning: attestations from {redact_urls(url)}: {e}", file=sys.stderr)
                continue
            refused.append(str(e))
            what = "tampering found" if e.tampered else "attestations refused"
            print(
                f"warning: {what} in the attestations from {redact_urls(url)}; the build goes on and "
                "the command fails at its end, naming them",
                file=sys.stderr,
            )
        except KilnError as e:
            print(f"warning: attestations from {redact_urls(url)}: {e}", file=sys.stderr)
