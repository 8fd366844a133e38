"""The ``.deb``s a ``builtin:unpack-debs`` derivation may unpack, and what each is pinned to be.

Theory of operation
-------------------
``builtin:unpack-debs`` runs in kiln's own process, outside the sandbox, so nothing but
this check confines what it reads. Its ``debs`` variable (space-separated) is text in a
derivation, and anyone can write a ``.drv`` by hand (``kiln build /kiln/store/….drv``);
before, ``/kiln/store/<hash>-x/../../../../etc/some.deb`` made kiln unpack a host file
into a signed store path. Each entry must therefore be:

- exactly a store path ``<store dir>/<hash>-<name>`` (no subpath, no ``..``);
- one of the derivation's inputs: an output of one of its *fixed-output* input
  derivations (what ``debian_rootfs`` makes: the lock's fetches, each pinned by sha256),
  or one of its input sources (a path added to the store, pinned by its NAR hash);
- valid in the store, or placed by this build and awaiting its commit
  (``stagedbuild.Pending``, as for the sandbox's inputs);
- a regular file.

A refusal is a ``StoreError`` naming the derivation, the entry and what was expected.

Each ``.deb`` fetched from ``debian:<pool path>`` URLs is pinned by that pool file's name
(``debpin.DebPin.of_pool_name``) and by the fetch's ``version``, the lock entry's full
version, which must be the file name's with or without an epoch (Debian's pool names
drop it; fetches evaluated before kiln wrote ``version`` are pinned by the name alone,
the epoch unchecked); ``debunpack`` checks the package's control file against it. An input source, or a fetch from other URLs, has no lock entry: only its
control file's presence is checked.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .debpin import DebPin, adds_epoch
from .derivation import Derivation
from .errors import FormatError, StoreError
from .paths import StorePath

if TYPE_CHECKING:
    from .stagedbuild import Pending


@dataclass(frozen=True, slots=True)
class DebInput:
    """One ``.deb`` to unpack: its store path, where it is on disk, and its pin (None
    when no lock entry names it)."""

    path: str
    real: Path
    pin: DebPin | None


def _fetch_pin(fetch: Derivation, what: str) -> DebPin | None:
    """The pin of a fetch derivation's output: the pool file name of its ``debian:``
    URLs (all of them must name the same package), None if it has none."""
    env = fetch.env_map
    urls = env.get("urls", "").split() or ([env["url"]] if env.get("url") else [])
    pins = []
    for url in urls:
        if url.startswith("debian:"):
            try:
                pins.append(DebPin.of_pool_name(url.removeprefix("debian:")))
            except FormatError as e:
                raise StoreError(f"{what}: its fetch URL {url!r}: {e}") from None
    if len({(p.package, p.version, p.arch) for p in pins}) > 1:
        raise StoreError(f"{what}: its fetch URLs name different packages: {', '.join(urls)}")
    if not pins:
        return None
    pin, full = pins[0], env.get("version")
    if full is None or full == pin.version:  # (a fetch made before kiln wrote the version)
        return pin
    if not adds_epoch(pin.version, full):
        raise StoreError(
            f"{what}: its version {full!r} is not the version of its pool file name "
            f"({pin.version!r}, with an epoch or without)"
        )
    # the lock's full version: the control file's epoch is checked too
    return DebPin(pin.package, full, pin.arch, f"{pin.source} and version {full!r}")


def deb_inputs(
    store: Any,  # a LocalStore, or the builder's serializing proxy of one
    drv: Derivation,
    get_drv: Callable[[str], Derivation],
    pending: Pending | None = None,
) -> list[DebInput]:
    """The entries of ``drv``'s ``debs`` variable, in order, each checked as the module
    docstring says (``StoreError`` otherwise)."""
    where = f"builtin:unpack-debs {drv.name}"
    entries = drv.env_map.get("debs", "").split()
    if not entries:
        raise StoreError(f"{where}: expected store paths of .deb files in 'debs', found none")
    # what the derivation may read: fixed outputs of its input derivations, with their
    # fetches (for the pin), and its input sources
    fetched: dict[str, Derivation] = {}
    for p, outs in drv.input_drvs:
        d = get_drv(p)
        if d.is_fixed_output and "out" in outs:
            fetched[d.outputs_map["out"].path] = d
    sources = set(drv.input_srcs)
    result = []
    for entry in entries:
        what = f"{where}: 'debs' entry {entry!r}"
        try:
            exact = str(StorePath.parse(entry, store.store_dir)) == entry
        except FormatError:
            exact = False
        if not exact:
            raise StoreError(
                f"{what}: expected a store path {store.store_dir}/<hash>-<name>, "
                "with nothing after the name and no '..'"
            )
        if entry not in fetched and entry not in sources:
            raise StoreError(
                f"{what}: expected an input of the derivation (an output of one of its "
                "fixed-output input derivations, or an input source); it is neither"
            )
        # pending first: the committer inserts a row before it forgets the pending entry
        if not ((pending is not None and pending.get(entry) is not None) or store.is_valid(entry)):
            raise StoreError(f"{what}: expected a valid store path; it is not valid in the store")
        real = store.real_path(entry)
        try:
            mode = os.lstat(real).st_mode
        except FileNotFoundError:
            mode = 0
        if not stat.S_ISREG(mode):
            raise StoreError(
                f"{what}: expected a .deb file, found {'nothing' if not mode else 'no regular file'}"
            )
        pin = _fetch_pin(fetched[entry], what) if entry in fetched else None
        result.append(DebInput(entry, real, pin))
    return result
