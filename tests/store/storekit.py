"""Helpers for the local-store tests (imported by name: ``from storekit import ...``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def make_tree(root: Path, files: dict[str, bytes | str]) -> Path:
    """Create ``root`` with ``files``: name -> bytes (regular file), ``"->target"``
    (symlink) or ``"x:"`` + text (executable)."""
    root.mkdir(parents=True)
    for name, content in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str) and content.startswith("->"):
            os.symlink(content[2:], p)
        elif isinstance(content, str) and content.startswith("x:"):
            p.write_text(content[2:])
            p.chmod(0o755)
        else:
            p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def corrupt_file(p: Path, data: bytes = b"tampered\n") -> None:
    """Overwrite the store file ``p`` (its directory and mode kept sealed after)."""
    d = p.parent
    os.chmod(d, 0o755)
    os.chmod(p, 0o644)
    p.write_bytes(data)
    os.chmod(p, 0o444)
    os.utime(p, (1, 1))
    os.chmod(d, 0o555)
    os.utime(d, (1, 1))


def corrupt_object(store, path: str) -> None:  # noqa: ANN001 - a LocalStore
    """Flip a byte in the middle of ``path``'s object."""
    obj = store.object_path(path)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x55
    os.chmod(obj, 0o644)
    obj.write_bytes(bytes(data))


def run_py(code: str, *args: str, **kw) -> subprocess.Popen:
    """Start ``python -c code args...`` (a real separate process)."""
    return subprocess.Popen([sys.executable, "-c", code, *args], **kw)


def tmp_leftovers(store) -> list[str]:  # noqa: ANN001
    """Entries of ``store.tmp`` other than empty directories (an open store keeps its
    empty scratch directory until ``close``)."""
    return [
        e.name
        for e in os.scandir(store.tmp)
        if not (e.is_dir(follow_symlinks=False) and not os.listdir(e.path))
    ]


def deep_tree(root: Path, depth: int) -> Path:
    """``root/d/d/.../d/leaf`` (an executable file), ``depth`` directories deep, made
    relative to a directory fd: recursive helpers (and full paths) choke on it. Remove it
    with ``kiln.store.nar_restore.rmtree_iter``."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        f = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o755, dir_fd=fd)
        os.write(f, b"bottom\n")
        os.close(f)
    finally:
        os.close(fd)
    return root
