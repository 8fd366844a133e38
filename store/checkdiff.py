"""Explaining why two builds of one derivation differ.

``describe_differences(a, b)`` walks both trees in sorted order and lists, per file,
what differs: only in one side, type, executable bit, symlink target, or content (with
the sizes). Listing stops after ``limit`` files. If ``diffoscope`` is installed it is
run on the two trees and its (truncated) output appended: it explains *how* contents
differ (timestamps in archives, embedded paths, ...), which a file list cannot. A
``deadline`` (a build's ``--timeout``) bounds both: it is asked per file and per MiB.

The names are the build's: each is shown on one line (``shownname``: a newline in it as
``\\n``), and diffoscope's output, which prints them raw, is indented, so no line of
it can pass for one of kiln's own (``error: ...``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .shownname import shown_name

#: what the NAR holds of an entry: a symlink's target, a file's (size, sha256 hex), None (a directory)
_Held = str | tuple[int, str] | None


def _entries(root: Path, stop: Callable[[], bool]) -> dict[str, tuple[str, _Held]] | None:
    """Every entry below ``root`` (relative path -> kind and what the NAR holds of it),
    or None once ``stop()`` says so (asked per file and per MiB read). Iterative: an
    output may be deeper than Python's recursion limit."""
    out: dict[str, tuple[str, _Held]] = {}
    todo: list[tuple[Path, str]] = [(root, "")]
    while todo:
        p, rel = todo.pop()
        if stop():
            return None
        if p.is_symlink():
            out[rel] = ("symlink", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("directory", None)
            todo.extend(
                (p / name, f"{rel}/{name}" if rel else name) for name in sorted(os.listdir(p), reverse=True)
            )
        else:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
                    if stop():
                        return None
            # the owner's x bit, as the NAR has it (access(X_OK) is true for root if any x bit is)
            kind = "executable" if os.lstat(p).st_mode & stat.S_IXUSR else "regular"
            out[rel] = (kind, (p.stat().st_size, h.hexdigest()))
    return out


def differing_files(
    a: Path,
    b: Path,
    stop: Callable[[], bool] = lambda: False,
    names: tuple[str, str] = ("the registered output", "the rebuild"),
) -> list[str] | None:
    """Human-readable lines, one per differing file (relative paths, '.' for the root);
    None if ``stop()`` said to stop before both trees were read. ``names``: how a file
    only in ``a`` or only in ``b`` names where it is."""
    ea = _entries(a, stop)
    eb = None if ea is None else _entries(b, stop)
    if ea is None or eb is None:
        return None
    lines = []
    for rel in sorted(set(ea) | set(eb)):
        name = shown_name(rel) if rel else "."
        if rel not in eb:
            lines.append(f"  {name}: only in {names[0]}")
        elif rel not in ea:
            lines.append(f"  {name}: only in {names[1]}")
        elif ea[rel] != eb[rel]:
            (ka, va), (kb, vb) = ea[rel], eb[rel]
            if ka != kb:
                lines.append(f"  {name}: {ka} vs {kb}")
            elif ka == "symlink":
                lines.append(f"  {name}: symlink target {va!r} vs {vb!r}")
            else:  # files of one kind: (size, sha256) each
                assert isinstance(va, tuple) and isinstance(vb, tuple)
                lines.append(f"  {name}: contents differ ({va[0]} vs {vb[0]} bytes)")
    return lines


def describe_differences(a: Path, b: Path, limit: int = 50, deadline: float | None = None) -> str:
    """What differs between trees ``a`` and ``b`` (see the module docstring). ``deadline``
    (``time.monotonic()``; a build's ``--timeout``) bounds the work: past it the listing
    says it was cut short, and diffoscope gets only the time left."""

    def stop() -> bool:
        return deadline is not None and time.monotonic() > deadline

    lines = differing_files(a, b, stop)
    if lines is None:
        return "differing files: not listed (--timeout ran out while comparing the trees)"
    lines = lines or [
        "  (no file differs in type, executable bit, size, contents or link target: the NAR "
        "covers nothing else, so compare the NARs themselves, e.g. with kiln store dump)"
    ]
    text = "differing files:\n" + "\n".join(lines[:limit])
    if len(lines) > limit:
        text += f"\n  ... and {len(lines) - limit} more"
    left = 300.0 if deadline is None else min(300.0, deadline - time.monotonic())
    if left <= 0:
        return text + "\n(diffoscope not run: --timeout ran out)"
    if shutil.which("diffoscope"):
        try:
            r = subprocess.run(
                [
                    "diffoscope",
                    "--no-progress",
                    # (``yes``, not ``recursive``: the metadata of an archive's members, a
                    # tar's mtimes and modes, is what differs most often)
                    "--exclude-directory-metadata=yes",
                    "--text",
                    "-",
                    str(a),
                    str(b),
                ],
                capture_output=True,
                text=True,
                errors="surrogateescape",  # (a name that is not UTF-8 is printed raw; shown_output escapes it)
                timeout=left,
            )
            text += "\ndiffoscope:\n" + "\n".join("  " + line for line in r.stdout.splitlines()[:200])
        except (OSError, subprocess.TimeoutExpired) as e:
            text += f"\n(diffoscope failed: {e})"
    return text
