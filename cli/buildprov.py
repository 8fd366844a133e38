"""Signing and provenance for what ``kiln build`` builds (the ``after_build`` hook).

For each output of a successful build: a Nix-style signature over the path's
fingerprint is added to the store, and an in-toto Statement (SLSA Provenance v1) is
signed as a DSSE envelope with the same key and stored beside the path
(``kiln.store.attestations``). Timestamps go only into the attestation, never into the
output or its path. The recipe repository's commit is recorded with pygit2; a dirty
tree is recorded as dirty (``--require-clean`` refuses to build one, checked earlier).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from kiln import __version__


@dataclass
class ProvenanceHook:
    store: object
    key: object  # kiln.store.signing.SecretKey
    recipe_file: str
    attrs_by_drv: dict[str, str]
    git_commit: str | None
    git_dirty: bool
    cores: int
    isolation: dict  # the executor's description of its sandbox (Executor.isolation())
    invocation_id: str = ""

    def __post_init__(self) -> None:
        self.invocation_id = self.invocation_id or str(uuid.uuid4())

    def __call__(self, drv_path, drv, outputs: dict[str, str], started: float, finished: float) -> None:
        from kiln.store import attestations, intoto, signing
        from kiln.store.dsse import Ed25519Signer
        from kiln.store.sandboxrun import input_paths, rootfs_of

        store = self.store
        get = _drv_getter(store)
        deps = []
        for p in store.closure(input_paths(drv, get)):
            info = store.query(p)
            dep = {"uri": f"kiln:{p}", "name": p.rsplit("/", 1)[1], "digest": {"sha256": info.nar_hash.hex}}
            if info.deriver and store.is_valid(info.deriver):
                env = get(info.deriver).env_map
                if env.get("url"):
                    dep["annotations"] = {"url": env["url"]}
            deps.append(dep)
        toolchain = rootfs_of(drv, get) if not drv.builder.startswith("builtin:") else None
        if drv.builder.startswith("builtin:"):
            # fetchers and the .deb unpacker run in kiln itself, checked against fixed hashes
            sandbox = {"executor": "builtin", "builder": drv.builder, "network": drv.is_fixed_output}
        else:
            sandbox = {**self.isolation, "network": False, "cores": self.cores}
        for name, out in outputs.items():
            info = store.query(out)
            store.add_signatures(out, [signing.sign_info(info, self.key)])
            stmt = intoto.provenance(
                out.rsplit("/", 1)[1],
                info.nar_hash.hex,
                recipe_file=self.recipe_file,
                attribute=self.attrs_by_drv.get(drv_path, drv.name),
                parameters={"output": name, "drv": drv_path},
                git_commit=self.git_commit,
                git_dirty=self.git_dirty,
                sandbox_settings=sandbox,
                toolchain_path=toolchain,
                resolved_dependencies=deps,
                builder_version=__version__,
                invocation_id=self.invocation_id,
                started_on=started,
                finished_on=finished,
            )
            env = attestations.sign(stmt, [Ed25519Signer(self.key.key)])
            attestations.write(store, out, "provenance", env)


def _drv_getter(store):
    from kiln.store.derivation import parse
    from kiln.store.paths import StorePath

    cache: dict = {}

    def get(p: str):
        d = cache.get(p)
        if d is None:
            d = parse(store.real_path(p).read_text(), StorePath.parse(p).name[:-4], store.store_dir)
            cache[p] = d
        return d

    return get
