"""Explaining why two builds of one derivation differ.

``describe_differences(a, b)`` walks both trees in sorted order and lists, per file,
what differs: only in one side, type, executable bit, symlink target, or content (with
the sizes). Listing stops after ``limit`` files. If ``diffoscope`` is installed it is
run on the two trees and its (truncated) output appended: it explains *how* contents
differ (timestamps in archives, embedded paths, ...), which a file list cannot.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path


def _entries(root: Path) -> dict[str, tuple[str, object]]:
    out: dict[str, tuple[str, object]] = {}

    def visit(p: Path, rel: str) -> None:
        if p.is_symlink():
            out[rel] = ("symlink", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("directory", None)
            for name in sorted(os.listdir(p)):
                visit(p / name, f"{rel}/{name}" if rel else name)
        else:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            # the owner's x bit, as the NAR has it (access(X_OK) is true for root if any x bit is)
            kind = "executable" if os.lstat(p).st_mode & stat.S_IXUSR else "regular"
            out[rel] = (kind, (p.stat().st_size, h.hexdigest()))

    visit(root, "")
    return out


def differing_files(a: Path, b: Path) -> list[str]:
    """Human-readable lines, one per differing file (relative paths, '.' for the root)."""
    ea, eb = _entries(a), _entries(b)
    lines = []
    for rel in sorted(set(ea) | set(eb)):
        name = rel or "."
        if rel not in eb:
            lines.append(f"  {name}: only in the registered output")
        elif rel not in ea:
            lines.append(f"  {name}: only in the rebuild")
        elif ea[rel] != eb[rel]:
            (ka, va), (kb, vb) = ea[rel], eb[rel]
            if ka != kb:
                lines.append(f"  {name}: {ka} vs {kb}")
            elif ka == "symlink":
                lines.append(f"  {name}: symlink target {va!r} vs {vb!r}")
            else:
                lines.append(f"  {name}: contents differ ({va[0]} vs {vb[0]} bytes)")
    return lines


def describe_differences(a: Path, b: Path, limit: int = 50) -> str:
    lines = differing_files(a, b) or [
        "  (no file differs in type, executable bit, size, contents or link target: the NAR "
        "covers nothing else, so compare the NARs themselves, e.g. with kiln store dump)"
    ]
    text = "differing files:\n" + "\n".join(lines[:limit])
    if len(lines) > limit:
        text += f"\n  ... and {len(lines) - limit} more"
    if shutil.which("diffoscope"):
        try:
            r = subprocess.run(
                [
                    "diffoscope",
                    "--no-progress",
                    "--exclude-directory-metadata=recursive",
                    "--text",
                    "-",
                    str(a),
                    str(b),
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
            text += "\ndiffoscope:\n" + "\n".join(r.stdout.splitlines()[:200])
        except (OSError, subprocess.TimeoutExpired) as e:
            text += f"\n(diffoscope failed: {e})"
    return text
