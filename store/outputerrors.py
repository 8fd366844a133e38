"""The messages of a build whose output kiln refuses or cannot process.

Every message names the output by its store path and its files by their path inside
the output (``shownname``: one line each, whatever the build named them), never by the
host's scratch path (meaningless to the recipe's author, and kilobytes long for the
deep trees that cause ``ENAMETOOLONG``). ``stray_refusal`` lists the stray references
``refscan`` found with the whole base name where it is known (from the store, or the
bytes after the hash when they form a valid name), and explains a ``.drv``: the usual
cause is a recipe writing ``pkg.drvPath`` into the output. ``canonicalise_named``
canonicalises an output with its ``OSError`` so named.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from .derivation import Derivation
from .errors import StoreError
from .refscan import ScanResult
from .shownname import shown_name

#: strays listed in a message; names cut after this many characters
_LISTED = 10
_NAME_SHOWN = 80
#: an output-relative path longer than this is shown as its start and end
_REL_SHOWN = 160


def shortened(rel: bytes) -> str:
    """An output-relative path for a message: escaped, and when long its first and last
    60 bytes with its length (a tree kiln could not process is often kilobytes deep)."""
    if len(rel) <= _REL_SHOWN:
        return shown_name(rel)
    return f"{shown_name(rel[:60])}...{shown_name(rel[-60:])} ({len(rel)} bytes)"


def output_os_error(out_path: str, tree: Path, step: str, e: OSError) -> str:
    """The error for an ``OSError`` raised while kiln processed (``step``) the output at
    scratch path ``tree``, whose store path is ``out_path``."""
    top = os.fsencode(tree)
    name = os.fsencode(e.filename) if e.filename is not None else top
    if name == top:
        where = "the output itself"
    elif name.startswith(top + b"/"):
        where = shortened(name[len(top) + 1 :])
    else:
        where = shown_name(os.path.basename(name))  # (the copy made beside it)
    # (never str(e): it holds the host path, kilobytes of it)
    text = f"cannot {step} output {out_path}: {e.strerror or type(e).__name__}: {where}"
    if e.errno == errno.ENAMETOOLONG:
        extra = len(top) - len(out_path)
        text += (
            f"\n(that path was {len(name) - extra} bytes long in the build, but kiln processes outputs "
            f"in a directory on this host whose path is {extra} bytes longer than {out_path}'s, "
            f"and the system's limit is {os.pathconf(b'/', 'PC_PATH_MAX')} bytes: make the tree "
            "less deep, or the store's home directory's path shorter)"
        )
    return text


def canonicalise_named(tree: Path, path: str) -> None:
    """``outputcanon.canonicalise_output`` of the output ``tree`` (store path ``path``),
    an ``OSError`` (a path too long on this host, say) made a ``StoreError`` naming the
    output and the file in it, as a refusal is: the build loop reports either as that
    build's failure, not as a crash of kiln."""
    from .outputcanon import canonicalise_output

    try:
        canonicalise_output(tree, shown=path)
    except OSError as e:
        raise StoreError(output_os_error(path, tree, "canonicalise", e)) from None


def stray_refusal(
    drv: Derivation,
    out_path: str,
    res: ScanResult,
    lookup: Callable[[str], str | None],
    get_drv: Callable[[str], Derivation],
) -> str:
    """The error for an output that refers to store paths outside its inputs (``res.stray``).
    ``lookup(hash part)``: the valid store path with that hash part, or None."""
    names = dict(res.names)
    sd = drv.store_dir
    full: dict[str, str | None] = {}
    for _, h in res.stray[:_LISTED]:
        if h not in full:
            try:
                full[h] = lookup(h)
            except Exception:  # (a message: the refusal stands without the name)
                full[h] = None
            if full[h] is None and h in names:
                full[h] = f"{sd}/{h}-{names[h]}"

    def shown_path(h: str) -> str:
        p = full.get(h)
        if p is None:
            return f"{sd}/{h}-..."
        name = p[len(sd) + 34 :]
        return p if len(name) <= _NAME_SHOWN else f"{sd}/{h}-{name[:_NAME_SHOWN]}..."

    lines = [
        f"  {shown_name(f) if f else '(the output itself)'}: {shown_path(h)}" for f, h in res.stray[:_LISTED]
    ]
    if len(res.stray) > _LISTED:
        lines.append(f"  ... and {len(res.stray) - _LISTED} more")
    text = (
        f"output {out_path} refers to store paths that are not among the derivation's inputs:\n"
        + "\n".join(lines)
    )
    inputs = dict(drv.input_drvs)
    for h, p in full.items():
        if p is None or not p.endswith(".drv"):
            continue
        if p in inputs:
            try:
                whose = "the derivation of input " + ", ".join(get_drv(p).output_path(o) for o in inputs[p])
            except Exception:  # (a message: said without the outputs)
                whose = "the derivation of one of its inputs"
            fix = "name its output instead, ${pkg}"
        else:
            whose, fix = "a derivation (.drv)", "name the output, ${pkg}, which makes pkg an input"
        text += (
            f"\nnote: {shown_path(h)} is {whose}: builds see their inputs' outputs, never .drv "
            f"files, so an output may not name one (a recipe's pkg.drvPath is a plain string: {fix}; "
            "to only mention the derivation, leave the store directory out)"
        )
    return text
