"""Signing and provenance for what ``kiln build`` builds (the ``after_build`` hook).

For each output of a successful build: a Nix-style signature over the path's
fingerprint is added to the store, and an in-toto Statement (SLSA Provenance v1) is
signed as a DSSE envelope by the same signer and stored beside the path
(``kiln.store.attestations``). The signer is an in-process ed25519 key or an external
command (KMS/HSM), so no secret key need be on the build machine. Timestamps go only
into the attestation, never into the output or its path. The recipe repository's
commit is recorded with pygit2; a dirty tree is recorded as dirty (``--require-clean``
refuses to build one, checked earlier).

What the provenance records must be recordable before anything is built: an in-toto
statement is UTF-8 JSON, and a recipe path that is not UTF-8 (``bad\xff.recipe``) has
no faithful text form (an escape would be kiln's private convention, and could name
another file that really is called ``bad\xff.recipe``). So making the hook refuses
such a path (``check_recordable``), before the build; before, the outputs were built
and signed, then writing their provenance failed, and the command ended with an
internal error. The attribute text is UTF-8 already (the recipe language refuses
anything else).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kiln.store.errors import KilnError

from .version import full_version

if TYPE_CHECKING:
    from collections.abc import Callable

    from kiln.store.depscache import DependencyCache
    from kiln.store.derivation import Derivation
    from kiln.store.dsse import Signer
    from kiln.store.localstore import LocalStore
    from kiln.store.signing import SecretKey


@dataclass
class ProvenanceHook:
    store: LocalStore
    key: SecretKey | tuple[str, Signer]  # an in-process key, or (its name, an external signer)
    recipe_file: str
    attrs_by_drv: dict[str, str]
    git_commit: str | None
    git_dirty: bool
    cores: int
    isolation: dict[str, object]  # the executor's description of its sandbox (Executor.isolation())
    invocation_id: str = ""
    get_drv: Callable[[str], Derivation] | None = None  # the builder's parsed graph, optional

    def __post_init__(self) -> None:
        check_recordable(self.recipe_file)
        self.invocation_id = self.invocation_id or str(uuid.uuid4())
        self._cache: DependencyCache | None = None  # (``_cache_of``)
        self._dep_attrs: dict[str, str] | None = None  # (``_attribute_of``)
        self.key_name: str
        self.signer: Signer
        if isinstance(self.key, tuple):
            self.key_name, self.signer = self.key
        else:
            from kiln.store.dsse import Ed25519Signer

            self.key_name, self.signer = self.key.name, Ed25519Signer(self.key.key)

    def __call__(
        self,
        drv_path: str,
        drv: Derivation,
        outputs: dict[str, str],
        started: float,
        finished: float,
        store: LocalStore | None = None,
    ) -> None:
        """``store``: the store object to use on the calling thread (the builder's
        bookkeeping thread has its own); default ``self.store``."""
        from kiln.store import attestations
        from kiln.store.sandboxrun import rootfs_of

        store = store or self.store
        get = self.get_drv or _drv_getter(store)
        deps = attestations.build_dependencies(store, drv_path, get, self._cache_of(store, get))
        if drv.builder.startswith("builtin:"):
            # fetchers and the .deb unpacker run in kiln itself, checked against fixed hashes
            sandbox = {"executor": "builtin", "builder": drv.builder, "network": drv.is_fixed_output}
            toolchain = None
        else:
            sandbox = {**self.isolation, "network": False, "cores": self.cores}
            toolchain = rootfs_of(drv, get)
        for name, out in outputs.items():
            info = store.query(out)  # (one query for both: only the signatures change between)
            attestations.sign_path(store, out, self.key_name, self.signer, info=info)
            attestations.record_provenance(
                store,
                out,
                [self.signer],
                info=info,
                recipe_file=self.recipe_file,
                attribute=self._attribute_of(drv_path, get),
                parameters={"output": name, "drv": drv_path},
                git_commit=self.git_commit,
                git_dirty=self.git_dirty,
                sandbox_settings=sandbox,
                toolchain_path=toolchain,
                resolved_dependencies=deps,
                builder_version=full_version(),
                invocation_id=self.invocation_id,
                started_on=started,
                finished_on=finished,
            )

    def _attribute_of(self, drv_path: str, get: Callable[[str], Derivation]) -> str:
        """The attribute whose evaluation gave ``drv_path``: the requested one itself, or
        for a dependency built on the way, the first requested attribute (in the order
        given) whose derivation closure holds it; ``parameters.drv`` says which. Before, a
        dependency recorded its derivation's name (``glibc-runtime``), which evaluates to
        nothing: an auditor re-deriving the path from ``recipeFile`` and ``attribute``
        could not."""
        if drv_path in self.attrs_by_drv:
            return self.attrs_by_drv[drv_path]
        if self._dep_attrs is None:
            self._dep_attrs = {}
            for target, attr in self.attrs_by_drv.items():
                todo = [target]
                while todo:
                    d = todo.pop()
                    for dep, _outs in get(d).input_drvs:
                        if dep not in self._dep_attrs and dep not in self.attrs_by_drv:
                            self._dep_attrs[dep] = attr
                            todo.append(dep)
        # (not below any target: a .drv built directly, as given)
        return self._dep_attrs.get(drv_path, "")

    def _cache_of(self, store: LocalStore, get: Callable[[str], Derivation]) -> DependencyCache:
        """The ``depscache.DependencyCache`` this hook keeps across builds for ``store`` (a
        new one for another store object: the builder's bookkeeping store is reopened
        per ``realise``). ``Builder.realise`` temp-roots the graph and its outputs, which
        keeps its answers true (see ``depscache``)."""
        from kiln.store.depscache import DependencyCache

        if self._cache is None or self._cache.store is not store:
            self._cache = DependencyCache(store, get)
        return self._cache


class NotRecordable(KilnError):
    """A recipe path the provenance cannot record (``check_recordable``)."""


def check_recordable(recipe_file: str) -> None:
    """Raise ``NotRecordable`` if ``recipe_file`` (a path as Python holds it: a byte
    that is not UTF-8 is a lone surrogate) has no UTF-8 form, naming it escaped."""
    try:
        recipe_file.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = recipe_file.encode("utf-8", "surrogateescape")  # the name's own bytes
        except UnicodeEncodeError:  # (a surrogate that stands for no byte)
            raw = recipe_file.encode("utf-8", "backslashreplace")
        shown = raw.decode("utf-8", "backslashreplace")
        raise NotRecordable(
            f"the recipe path '{shown}' is not valid UTF-8, and its provenance (UTF-8 JSON) could not "
            "record it: rename the file, or the directory on its path, to a UTF-8 name"
        ) from None


def _drv_getter(store: LocalStore) -> Callable[[str], Derivation]:
    """``get_drv`` for ``store``: a ``.drv`` path's parsed derivation, each read once."""
    from kiln.store.drvparse import decode, parse
    from kiln.store.paths import StorePath

    cache: dict[str, Derivation] = {}

    def get(p: str) -> Derivation:
        d = cache.get(p)
        if d is None:
            d = parse(
                decode(store.real_path(p).read_bytes(), p), StorePath.parse(p).name[:-4], store.store_dir
            )
            cache[p] = d
        return d

    return get
