"""The evaluation cache: one file per entry recipe, validated by content.

Theory of operation
-------------------
An entry is named by ``sha256(format, kiln version, store dir, absolute entry path,
recipe tree)`` (an evaluation allowed by a wider ``KILN_RECIPE_ROOT`` must not serve a
narrower one)
and holds (``marshal``-encoded, only builtin types): the sha256 of every file the
evaluation read, a fingerprint of every local ``path`` source, the attribute → ``.drv``
path table, the name and output path of each of those packages (``index``), and every
derivation of the closure as plain tuples, marshalled once more on their own. A hit
requires every recorded file to hash to the same content and every source fingerprint
to match; then nothing is parsed and lark is never imported. The closure's tuples are
decoded only when a derivation is asked for, and Derivations rebuilt from them one by
one (``LazyDrvs``): listing the packages (``kiln eval``) touches neither.

Writes go to a temp file in the cache dir, are fsynced and renamed into place, so a
reader sees a whole entry or none. An entry starts with the sha256 of the rest, checked
before decoding: a corrupt or foreign entry is just a miss (and is overwritten). A hit
sets the entry's mtime to now when it is over an hour old (``TOUCH_AFTER_S``; one
``utime`` an hour at most): ``kiln store gc`` deletes the entries whose mtime is
``eval_cache_days`` old (``store/gcside.py``), and atime cannot tell (``noatime``). A
source's fingerprint is the one taken before it was added (``builtins.path``); a source
that changed while being added makes the evaluation uncacheable.

A hit is most of what a cached ``kiln eval`` does, and at 1,000 packages the whole
command must stay under a tenth of an evaluation, so this module imports only ``os``,
``marshal`` and ``collections.abc``: no ``pathlib``, ``typing`` or ``hashlib`` (whose
import initialises OpenSSL, ~3 ms); paths are plain strings here.
"""

from __future__ import annotations

import marshal
import os
import stat
from collections.abc import Iterator, Mapping

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:  # a cache hit must not pay for importing the derivation module
    from kiln.store.derivation import Derivation

FORMAT = 3
#: a hit refreshes an entry's mtime when it is older than this (see the module docstring)
TOUCH_AFTER_S = 3600


# CPython's builtin sha256 (``_sha2`` from 3.12, ``_sha256`` before): the same function
# as ``hashlib.sha256`` without OpenSSL's start-up; ``hashlib`` where neither exists
# (typeshed has no stubs for these private modules)
try:
    from _sha2 import sha256 as _sha256_impl  # type: ignore[import-not-found]
except ImportError:
    try:
        from _sha256 import sha256 as _sha256_impl  # type: ignore[import-not-found]
    except ImportError:
        from hashlib import sha256 as _sha256_impl


def _sha256(data: bytes) -> str:
    """Hex sha256 of ``data`` (see ``_sha256_impl``)."""
    return _sha256_impl(data).hexdigest()


def _version() -> str:
    """kiln's version plus the size, mtime, ctime and inode of every module that decides
    what a recipe evaluates to, so an upgraded or edited evaluator never serves stale
    derivations (about 90 stat calls: cheap next to reading the cache entry). The ctime
    and inode matter: an install that sets every mtime to one value (a Nix store path,
    a reproducible package) and an edit of the same size would otherwise look unchanged,
    and ctime cannot be set back by a user; a reinstall or ``chmod`` only costs a miss."""
    from kiln import __version__

    here = os.path.dirname(os.path.abspath(__file__))
    store = os.path.join(os.path.dirname(here), "store")
    try:
        names = os.listdir(here)
    except OSError:
        names = []
    files = [os.path.join(here, n) for n in names if n.endswith((".py", ".lark"))]
    # every store module: hashing, nix-base32, paths, derivations and source adding all
    # decide the answer (an editable install keeps __version__ while they change)
    try:  # noqa: SIM105 - contextlib is not imported on the cache-hit path
        files += [os.path.join(store, n) for n in os.listdir(store) if n.endswith(".py")]
    except OSError:
        pass
    stamp = [__version__]
    for f in sorted(files):
        try:
            st = os.stat(f)
        except OSError:
            continue
        stamp.append(f"{os.path.basename(f)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}")
    return "|".join(stamp)


def entry_path(cache_dir: str | os.PathLike, entry: str, store_dir: str, root: str = "") -> str:
    key = _sha256(f"{FORMAT}\0{_version()}\0{store_dir}\0{entry}\0{root}".encode("utf-8", "surrogateescape"))
    return os.path.join(cache_dir, f"{key[:40]}.eval")


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
    from kiln.store.derivation import Derivation, Output

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
    """``drv path → Derivation`` built on first access from cached tuples. ``blob`` is
    the marshalled ``{drv path: tuple}`` table, decoded only when a derivation is asked
    for; ``index`` maps the entry's own packages to ``(name, out path)``, enough for
    listing them without decoding anything."""

    def __init__(self, blob: bytes, index: dict[str, tuple[str, str]] | None = None) -> None:
        self._blob = blob
        self._table: dict | None = None
        self._index = index or {}
        self._done: dict[str, Derivation] = {}

    @property
    def _raw(self) -> dict:
        if self._table is None:
            self._table = marshal.loads(self._blob)
        return self._table

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

    def name_of(self, key: str) -> str:
        """The derivation's name, without building the Derivation."""
        hit = self._index.get(key)
        return hit[0] if hit is not None else self._raw[key][0]

    def out_path(self, key: str, output: str = "out") -> str:
        """An output's path, without building the Derivation (KeyError if no such output)."""
        hit = self._index.get(key)
        if hit is not None and output == "out":
            return hit[1]
        for k, p, _a, _h in self._raw[key][1]:
            if k == output:
                return p
        raise KeyError(output)


def file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return _sha256(f.read())
    except OSError:
        return None


def load(cache_dir: str | os.PathLike, entry: str, store_dir: str, root: str = "") -> dict | None:
    """The cached evaluation of ``entry`` if still valid, else ``None``."""
    try:
        # without blocking, and a regular file only: a FIFO there would hang every eval
        entry_file = entry_path(cache_dir, entry, store_dir, root)
        fd = os.open(entry_file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            os.set_blocking(fd, True)
            raw = f.read()
        if len(raw) < 64 or _sha256(raw[64:]).encode() != raw[:64]:
            return None  # torn, corrupt or foreign
        data = marshal.loads(raw[64:])
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("entry") != entry:
            return None
        for path, digest in data["files"]:
            if digest.startswith("="):  # a name reached through symlinks: same target?
                if os.path.realpath(path) != digest[1:]:
                    return None
            # a file read at its real location must still be there, not reached through a
            # symlink now (the file or a parent replaced by one): the same bytes elsewhere
            # resolve their relative imports and sources from elsewhere
            elif os.path.realpath(path) != path or file_digest(path) != digest:
                return None
        if data["sources"]:
            from pathlib import Path

            from .sources import fingerprint

            for _store_path, origin, fp in data["sources"]:
                if fingerprint(Path(origin)) != fp:
                    return None
        _touch(entry_file, st.st_mtime)
        return data
    except Exception:  # noqa: BLE001 - any unreadable entry is a miss, never an error
        return None


def _touch(path: str, mtime: float) -> None:
    """Mark the entry at ``path`` (last modified at ``mtime``) used now, if that is over
    ``TOUCH_AFTER_S`` ago; a cache another user owns stays as it is."""
    import time  # (built in: no import cost)

    if time.time() - mtime > TOUCH_AFTER_S:
        try:  # noqa: SIM105 - contextlib is not imported on the cache-hit path
            os.utime(path, follow_symlinks=False)  # (a symlink there: its own times, never its target's)
        except OSError:
            pass


def save(
    cache_dir: str | os.PathLike,
    entry: str,
    store_dir: str,
    files: dict[str, str],
    fingerprints: Mapping[str, str | None],
    sources: dict[str, str],
    packages: dict[str, str],
    drvs: Mapping[str, Derivation],
    root: str = "",
) -> None:
    """Record an evaluation (of ``entry`` in the recipe tree ``root``). ``files``: path → sha256 of the bytes read (or ``"=" + real
    path`` for an import reached through symlinks: it must still lead there); ``sources``:
    store path → origin; ``fingerprints``: store path → the origin's fingerprint when it
    was added (``ValueError`` if one is missing: that source changed while being added)."""
    import contextlib
    import tempfile

    if any(fingerprints.get(sp) is None for sp in sources):
        raise ValueError("a source changed while being added: not cacheable")
    data = {
        "format": FORMAT,
        "entry": entry,
        "files": sorted(files.items()),
        "sources": [(sp, o, fingerprints[sp]) for sp, o in sorted(sources.items())],
        "packages": list(packages.items()),
        # nested: a hit that only lists the packages never decodes the closure
        "drvs": marshal.dumps({k: drv_to_tuple(d) for k, d in drvs.items()}),
        "index": {
            p: (drvs[p].name, drvs[p].output_path("out"))
            for p in packages.values()
            if "out" in drvs[p].outputs_map
        },
    }
    payload = marshal.dumps(data)
    blob = _sha256(payload).encode() + payload
    os.makedirs(cache_dir, exist_ok=True)
    # the pid in the name lets GC tell a killed writer's leftover (store/gc.py)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".tmp-{os.getpid()}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, entry_path(cache_dir, entry, store_dir, root))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
