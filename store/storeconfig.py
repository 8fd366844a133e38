"""A local store's ``config.json`` (``{"store_dir": "/kiln/store", "version": 1}``):
made atomically when the store is (``init_config``), read and checked by every open
(``config_store_dir``; ``kiln eval`` reads it without opening the store).

Optional keys, absent from a new store's config and added by hand: ``reserved``, the
bytes of the store's reserved space (``reserve``; default 8 MiB, 0: none), read by
``config_reserved``; ``keep_outputs``, whether GC keeps the outputs of live derivations
(``gcedges``; default true), read by ``config_keep_outputs``; ``keep_failed_days`` and
``eval_cache_days``, how many days GC keeps a failed build's ``tmp/kiln-failed-*`` dir
and an evaluation-cache entry nobody used (``gcside``; defaults 7 and 30, 0: none),
read at collection time by ``config_gc_days``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import FormatError, StoreError
from .objects import fsync_dir
from .paths import DEFAULT_STORE_DIR, check_store_dir
from .perms import FILE_MODE, make_dir
from .reserve import DEFAULT_RESERVED

CONFIG_VERSION = 1


def config_store_dir(cfg: Path, data: object) -> str:
    """The store dir of config ``data`` read from ``cfg``, checked as ``open`` checks it
    (``StoreError``); ``kiln eval`` uses it to evaluate without opening the store."""
    if not isinstance(data, dict):
        raise StoreError(
            f"cannot read store config {cfg}: expected a JSON object like "
            f'{{"store_dir": "{DEFAULT_STORE_DIR}", "version": {CONFIG_VERSION}}}, '
            f"found a JSON {type(data).__name__}"
        )
    version = data.get("version", CONFIG_VERSION)
    if isinstance(version, int) and not isinstance(version, bool) and version > CONFIG_VERSION:
        # a later kiln's layout (object naming, say): acting on it as this one knows it
        # (verify, repair, GC) could damage it
        raise StoreError(
            f"store config {cfg} has version {version}; this kiln understands up to {CONFIG_VERSION}: "
            "upgrade kiln to use this store"
        )
    found = data.get("store_dir")
    if not isinstance(found, str):
        raise StoreError(f"store config {cfg} has no 'store_dir' string (found {found!r})")
    try:
        # a hand-edited config is checked like a new one: ``/kiln/..`` would put the
        # trees on the store root itself, and GC would delete the store
        return check_store_dir(found, local=True)
    except FormatError as e:
        raise StoreError(f"store config {cfg}: {e}") from None


def config_reserved(cfg: Path, data: dict) -> int:
    """The bytes of reserved space the config ``data`` (read from ``cfg``, checked by
    ``config_store_dir``) asks for: its ``reserved`` (a whole number, 0 for none), else
    ``reserve.DEFAULT_RESERVED``; ``StoreError`` for anything else."""
    found = data.get("reserved", DEFAULT_RESERVED)
    if isinstance(found, bool) or not isinstance(found, int) or found < 0:
        raise StoreError(
            f"store config {cfg}: 'reserved' must be a whole number of bytes kept in reserve for "
            f"'kiln store gc' on a full disk (default {DEFAULT_RESERVED}, 0 for none), found {found!r}"
        )
    return found


def config_keep_outputs(cfg: Path, data: dict) -> bool:
    """Whether GC keeps the outputs of live derivations (``gcedges``): the config
    ``data``'s ``keep_outputs`` (read from ``cfg``), default true; ``StoreError`` for
    anything but a boolean."""
    found = data.get("keep_outputs", True)
    if not isinstance(found, bool):
        raise StoreError(
            f"store config {cfg}: 'keep_outputs' must be true (GC keeps what building a rooted result "
            f"again takes: the toolchain, fetched sources) or false, found {found!r}"
        )
    return found


#: ``config_gc_days``' keys and their defaults (days)
GC_DAYS_DEFAULTS = {"keep_failed_days": 7, "eval_cache_days": 30, "keep_quarantine_days": 30}

_GC_DAYS_MEANING = {
    "keep_failed_days": "a failed build's kiln-failed-* dir is kept",
    "eval_cache_days": "an evaluation-cache entry nobody uses is kept",
    "keep_quarantine_days": "a quarantine record that can no longer matter is kept",
}


def config_gc_days(root: Path, key: str) -> int:
    """The whole number of days the config of the store at ``root`` sets for ``key``
    (``GC_DAYS_DEFAULTS``: ``keep_failed_days``, ``eval_cache_days``,
    ``keep_quarantine_days``), else its default;
    ``StoreError`` for anything but a whole number >= 0 (or a config that cannot be read).
    Read when GC needs it, not by ``LocalStore.open``: no other command uses it."""
    cfg = root / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as e:
        raise StoreError(f"cannot read store config {cfg}: {e}") from None
    default = GC_DAYS_DEFAULTS[key]
    found = data.get(key, default) if isinstance(data, dict) else default
    if isinstance(found, bool) or not isinstance(found, int) or found < 0:
        raise StoreError(
            f"store config {cfg}: {key!r} must be a whole number of days {_GC_DAYS_MEANING[key]} "
            f"by 'kiln store gc' (default {default}, 0: none), found {found!r}"
        )
    return found


def init_config(root: Path, store_dir: str) -> dict:
    """Create ``root`` and its ``config.json`` atomically (another process may race us:
    ``link`` fails if the config appeared, and then that one wins)."""
    make_dir(root)
    data = {"store_dir": store_dir, "version": CONFIG_VERSION}
    tmp = root / f".config.json.{os.getpid()}.{os.urandom(4).hex()}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE), "w") as f:
        json.dump(data, f)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, root / "config.json")
    except FileExistsError:
        data = json.loads((root / "config.json").read_text())
    finally:
        os.unlink(tmp)
    fsync_dir(root)
    return data
