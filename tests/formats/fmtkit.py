"""Helpers for the format tests (imported by the test modules; the directory is put on
``sys.path`` by conftest.py): running real Nix, building NARs by hand, comparing trees."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

HAVE_NIX = shutil.which("nix-store") is not None
#: Options for every nix call: the machine's nix.conf may point at a remote cache or
#: enable a sandbox our throwaway builders don't need.
NIX_OPTS = ["--option", "substituters", "", "--option", "sandbox", "false"]
NEW_CLI = ["--extra-experimental-features", "nix-command"]


def run(*cmd: str | os.PathLike, stdin: bytes | None = None) -> bytes:
    """Run a command, return stdout; fail the test with stderr on a non-zero exit."""
    p = subprocess.run([os.fspath(c) for c in cmd], input=stdin, capture_output=True, check=False)
    if p.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {p.returncode}: {p.stderr.decode(errors='replace')}")
    return p.stdout


def nix(*args: str | os.PathLike, stdin: bytes | None = None) -> str:
    """``nix <args>`` with the new CLI enabled; stdout as text."""
    return run("nix", *NEW_CLI, *NIX_OPTS, *args, stdin=stdin).decode()


# ---------------------------------------------------------------------------- NAR builder


def s(data: bytes | str) -> bytes:
    """One NAR string."""
    if isinstance(data, str):
        data = data.encode()
    return struct.pack("<Q", len(data)) + data + b"\0" * (-len(data) % 8)


def nar_file(contents: bytes, executable: bool = False) -> bytes:
    return (
        s("(")
        + s("type")
        + s("regular")
        + (s("executable") + s("") if executable else b"")
        + s("contents")
        + s(contents)
        + s(")")
    )


def nar_link(target: bytes | str) -> bytes:
    return s("(") + s("type") + s("symlink") + s("target") + s(target) + s(")")


def nar_dir(*entries: tuple[bytes | str, bytes]) -> bytes:
    body = b"".join(s("entry") + s("(") + s("name") + s(n) + s("node") + node + s(")") for n, node in entries)
    return s("(") + s("type") + s("directory") + body + s(")")


def nar(node: bytes) -> bytes:
    return s("nix-archive-1") + node


def assert_nothing_left(dest: Path) -> None:
    """``dest`` does not exist and no temporary sibling was left behind."""
    assert not os.path.lexists(dest)
    leftovers = [p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}")]
    assert leftovers == []


def rmtree(top: str | os.PathLike) -> None:
    """Iterative ``rm -rf`` (shutil's and pytest's recurse and choke on the deep tree);
    the same fd-relative walk as restore's cleanup."""
    from kiln.store.nar_restore import rmtree_iter

    rmtree_iter(os.fsencode(top))


def tree_signature(root: Path) -> list[tuple]:
    """What a NAR preserves of a tree: relative path, type, exec bit, contents/target."""
    out = []
    todo = [b""]  # iterative: the corpus has trees deeper than the recursion limit
    rootb = os.fsencode(root)
    while todo:
        rel = todo.pop()
        p = os.path.join(rootb, rel) if rel else rootb
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            out.append((rel, "l", os.readlink(p)))
        elif stat.S_ISDIR(st.st_mode):
            out.append((rel, "d"))
            todo += [os.path.join(rel, n) if rel else n for n in os.listdir(p)]
        else:
            with open(p, "rb") as f:
                out.append((rel, "x" if st.st_mode & 0o100 else "f", f.read()))
    return sorted(out)
