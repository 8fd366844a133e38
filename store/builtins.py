"""Builders that kiln runs itself, outside the sandbox (``builder = "builtin:<name>"``).

Only fixed-output derivations may use the network, and every builtin's result is
checked against the derivation's fixed hash before it can be registered:

=================  ==========================================  =====================
builder            does                                        output hash checked
=================  ==========================================  =====================
builtin:fetchurl   ``fetch.fetch_url`` (hashed mirrors first)  flat sha256 of file
builtin:fetchgit   ``fetch.fetch_git`` (tree at ``rev``)        NAR sha256
builtin:unpack-debs ``debunpack.unpack_debs`` of input .debs    (inputs are fixed)
=================  ==========================================  =====================

``unpack-debs`` is not a fixed-output derivation: its inputs are, and unpacking is a
pure function of them, so its output is input-addressed like any build. Running outside
the sandbox, it reads only what ``debinputs.deb_inputs`` allows: each ``debs`` entry
exactly a valid store path among the derivation's inputs (a fixed-output input's output
or an input source), each checked against its pin (the ``debian:`` pool file name it was
fetched by) when unpacked. The notes about members it skipped (devices, fifos, unknown
types) are printed through ``say`` while it builds.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .derivation import Derivation
from .errors import HashMismatch, StoreError
from .hashes import Hash

if TYPE_CHECKING:
    from .stagedbuild import Pending


def _expected(drv: Derivation) -> tuple[Hash, bool]:
    o = drv.outputs_map["out"]
    if not o.is_fixed:
        raise StoreError(
            f"builtin {drv.builder} needs a fixed-output derivation ({drv.name} has no output hash)"
        )
    recursive = o.hash_algo.startswith("r:")
    return Hash(o.hash_algo.removeprefix("r:"), bytes.fromhex(o.hash)), recursive


def _check_recursive(out: Path, expected: Hash, what: str) -> None:
    from . import nar

    got, _ = nar.hash_path(out)
    if got != expected:
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        else:
            out.unlink(missing_ok=True)
        raise HashMismatch(what, expected.to_hex(), got.to_hex())


def check_fixed_output(drv: Derivation, out: Path, what: str) -> None:
    """Raise ``HashMismatch`` unless ``out`` is what ``drv``'s fixed output hash says:
    the NAR hash of the tree (``r:`` hashes), else the hash of a regular file. For any
    builder: a fixed-output path is named by that hash, so whatever produced it must
    prove it (a sandboxed builder as much as a fetcher)."""
    expected, recursive = _expected(drv)
    if recursive:
        _check_recursive(out, expected, what)
        return
    if out.is_symlink() or not out.is_file():
        raise HashMismatch(what, f"a regular file with hash {expected.to_hex()}", "not a regular file")
    try:
        h = hashlib.new(expected.algo)
    except ValueError:
        raise StoreError(f"{what}: unsupported hash algorithm {expected.algo!r}") from None
    with open(out, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    got = Hash(expected.algo, h.digest())
    if got != expected:
        raise HashMismatch(what, expected.to_hex(), got.to_hex())


def run_builtin(
    store: Any,  # a LocalStore, or the builder's serializing proxy of one
    drv: Derivation,
    out: Path,
    *,
    mirrors: list[str],
    progress: bool,
    get_drv: Callable[[str], Derivation] | None = None,
    pending: Pending | None = None,
    say: Callable[[str], None] | None = None,
) -> None:
    """Produce ``out`` for ``drv`` (a ``builtin:*`` derivation).

    ``unpack-debs`` needs ``get_drv`` (the build loop's: it trusts a ``.drv`` only for
    the outputs it really defines, ``buildplan.load_graph``) to see what its input
    derivations are, and ``pending`` (this build's outputs awaiting their commit) to count
    those as valid; it reports skipped members through ``say``."""
    env = drv.env_map
    name = drv.builder.removeprefix("builtin:")
    if name == "fetchurl":
        from .fetch import fetch_url

        expected, recursive = _expected(drv)
        urls = env.get("urls", "").split() or [env["url"]]
        if recursive:
            from .fetch import fetch_tree_from_mirror

            # a mirror may hold the NAR itself (its flat sha256 is the recursive hash)
            if not fetch_tree_from_mirror(expected, out, mirrors=mirrors, progress=progress):
                # checked per source: one with other content is passed over for the next
                fetch_url(urls, expected, out, mirrors=mirrors, progress=progress, recursive=True)
            _check_recursive(out, expected, f"{drv.name} from {urls[0]}")
        else:
            # a lock entry's exact size, when the derivation carries it: a source sending
            # more is dropped at once instead of at the global cap
            size = int(env["size"]) if env.get("size", "").isdigit() else None
            fetch_url(urls, expected, out, mirrors=mirrors, progress=progress, size=size)
    elif name == "fetchgit":
        from .fetch import fetch_git

        expected, _ = _expected(drv)
        fetch_git(env["url"], env["rev"], out, expected=expected, mirrors=mirrors)
        _check_recursive(out, expected, f"{drv.name} ({env['url']} at {env['rev']})")
    elif name == "unpack-debs":
        from .debinputs import deb_inputs
        from .debunpack import unpack_debs_verbose

        if get_drv is None:
            raise StoreError(
                f"builtin:unpack-debs {drv.name}: expected get_drv (the build's derivations, to check "
                "that its .debs are its inputs), found none"
            )
        debs = deb_inputs(store, drv, get_drv, pending)
        notes = unpack_debs_verbose([d.real for d in debs], out, [d.pin for d in debs])
        for note in notes:
            if say is not None and not note.startswith("added link "):  # (the links are expected)
                say(f"{drv.name}: {note}")
    else:
        raise StoreError(f"unknown builtin builder {drv.builder!r} in {drv.name}")
