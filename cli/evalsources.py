"""The ``add_source`` callback of ``kiln eval``/``path``/``show-derivation``/``graph``
(``cmd_eval``): where a recipe's local ``path "..."`` sources go while it is evaluated."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a cached eval)
if TYPE_CHECKING:
    from pathlib import Path

    from kiln.store.localstore import LocalStore


class Sources:
    """The ``add_source`` callback: adds local sources to the local store (opened lazily)
    when the store exists (``has_store``) or ``create`` (``eval --write``, whose
    derivations name them); otherwise computes the path a source would get without
    writing anything (``kiln.lang.sources.hash_only``: the NAR hash of the files the store
    would keep), once the source passed the same key check (``buildglue.check_recipe_source``):
    evaluating never creates a store. Likewise for ``--store-dir`` naming another store dir
    than the existing store's (``foreign``)."""

    def __init__(self, root: str, store_dir: str, create: bool = False, foreign: bool = False) -> None:
        self.root = root
        self.store_dir = store_dir
        self.create = create
        self.foreign = foreign  # the store at root uses another store dir: computed only
        self.store: LocalStore | None = None

    def _open(self) -> LocalStore:
        if self.store is None:
            try:
                from kiln.store.localstore import LocalStore
            except ImportError as e:
                from kiln.store.errors import KilnError

                raise KilnError(
                    f"local path sources need the local store, which is unavailable here ({e})"
                ) from None
            from pathlib import Path

            self.store = LocalStore.open(Path(self.root), self.store_dir)
        return self.store

    def __call__(self, src: Path, name: str) -> str:
        if self.store is None and not self.create and (self.foreign or not writable_store(self.root)):
            from pathlib import Path

            from kiln.buildglue import check_recipe_source
            from kiln.lang.sources import hash_only

            # (the check reads only the store root, for its ``keys/``)
            check_recipe_source(Path(self.root), src)
            return hash_only(self.store_dir)(src, name)
        from kiln.buildglue import add_recipe_source

        return add_recipe_source(self._open(), src, name)

    def ensure(self, sources: dict[str, str]) -> bool:
        """After a cache hit: re-add any cached source that is no longer in the store;
        False if the cached evaluation must not be used (see ``buildglue.readd_sources``)."""
        if not sources:
            return True
        from kiln.buildglue import check_recipe_source, readd_sources

        store = self._open()
        store.keep(sorted(sources))  # rooted, then checked (see buildglue.evaluate)
        return readd_sources(
            self.store_dir,
            sources,
            lambda sp: store.query(sp) is not None,
            self,
            lambda src: check_recipe_source(store.root, src),
        )


def has_store(root: str) -> bool:
    """Whether ``root`` holds a store (its ``config.json``, as ``LocalStore.open`` decides)."""
    return os.path.isfile(os.path.join(root, "config.json"))


def writable_store(root: str) -> bool:
    """Whether ``root`` holds a store a path source can be added to: not one on a
    read-only file system (a source is then hashed only, as without a store: the same
    path, nothing written; adding it failed, even when it was in the store already)."""
    from kiln.store.fsstate import on_read_only_fs

    return has_store(root) and not on_read_only_fs(root)
