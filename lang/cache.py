"""The evaluation cache: one file per entry recipe, validated by content.

Theory of operation
-------------------
An entry is named by ``sha256(format, kiln version, store dir, absolute entry path)``
and holds (``marshal``-encoded, only builtin types): the sha256 of every file the
evaluation read, a fingerprint of every local ``path`` source, the attribute → ``.drv``
path table and every derivation of the closure as plain tuples. A hit requires every
recorded file to hash to the same content and every source fingerprint to match; then
nothing is parsed and lark is never imported. Derivations are rebuilt from tuples only
when asked for (``LazyDrvs``).

Writes go to a temp file in the cache dir, are fsynced and renamed into place, so a
reader sees a whole entry or none; a corrupt or foreign entry is just a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from kiln.store.derivation import Derivation, Output

FORMAT = 1


def _version() -> str:
    """kiln's version plus the size and mtime of every module that decides what a recipe
    evaluates to, so an upgraded or edited evaluator never serves stale derivations
    (about 20 stat calls: cheap next to reading the cache entry)."""
    from kiln import __version__

    here = Path(__file__).parent
    stamp = [__version__]
    for f in sorted(
        [
            *here.glob("*.py"),
            *here.glob("*.lark"),
            here.parent / "store" / "derivation.py",
            here.parent / "store" / "paths.py",
        ]
    ):
        try:
            st = f.stat()
        except OSError:
            continue
        stamp.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(stamp)


def entry_path(cache_dir: Path, entry: str, store_dir: str) -> Path:
    key = hashlib.sha256(f"{FORMAT}\0{_version()}\0{store_dir}\0{entry}".encode()).hexdigest()
    return cache_dir / f"{key[:40]}.eval"


def drv_to_tuple(d: Derivation) -> tuple:
    return (
        d.name,
        tuple((k, o.path, o.hash_algo, o.hash) for k, o in d.outputs),
        d.input_drvs,
        d.input_srcs,
        d.platform,
        d.builder,
        d.args,
        d.env,
        d.store_dir,
    )


def drv_from_tuple(t: tuple) -> Derivation:
    name, outs, idrvs, isrcs, platform, builder, args, env, store_dir = t
    return Derivation(
        name,
        tuple((k, Output(p, a, h)) for k, p, a, h in outs),
        idrvs,
        isrcs,
        platform,
        builder,
        args,
        env,
        store_dir,
    )


class LazyDrvs(Mapping):
    """``drv path → Derivation`` built on first access from cached tuples."""

    def __init__(self, raw: dict) -> None:
        self._raw = raw
        self._done: dict[str, Derivation] = {}

    def __getitem__(self, key: str) -> Derivation:
        d = self._done.get(key)
        if d is None:
            d = self._done[key] = drv_from_tuple(self._raw[key])
        return d

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, key: object) -> bool:
        return key in self._raw


def file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def load(cache_dir: Path, entry: str, store_dir: str) -> dict | None:
    """The cached evaluation of ``entry`` if still valid, else ``None``."""
    p = entry_path(cache_dir, entry, store_dir)
    try:
        data = marshal.loads(p.read_bytes())
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("entry") != entry:
        return None
    for path, digest in data["files"]:
        if file_digest(path) != digest:
            return None
    if data["sources"]:
        from .sources import fingerprint

        for _store_path, origin, fp in data["sources"]:
            try:
                if fingerprint(Path(origin)) != fp:
                    return None
            except OSError:
                return None
    return data


def save(
    cache_dir: Path,
    entry: str,
    store_dir: str,
    files: dict[str, str],
    sources: dict[str, str],
    packages: dict[str, str],
    drvs: Mapping[str, Derivation],
) -> None:
    """Record an evaluation. ``files``: path → sha256 of the bytes read; ``sources``:
    store path → origin."""
    from .sources import fingerprint

    data = {
        "format": FORMAT,
        "entry": entry,
        "files": sorted(files.items()),
        "sources": [(sp, o, fingerprint(Path(o))) for sp, o in sorted(sources.items())],
        "packages": list(packages.items()),
        "drvs": {k: drv_to_tuple(d) for k, d in drvs.items()},
    }
    blob = marshal.dumps(data)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, entry_path(cache_dir, entry, store_dir))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
