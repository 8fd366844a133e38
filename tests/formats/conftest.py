"""Fixtures for the format tests: a corpus of filesystem trees covering every NAR case,
and the skip rule for ``nix`` tests. Helpers (NAR builder, running Nix) are in fmtkit.py.

Tests marked ``nix`` are skipped when ``nix-store`` is not installed. Nix runs
single-user as root without a daemon; every call passes the options it needs
(``nix-command``, no substituters, no sandbox) so the machine's nix.conf does not matter.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for ``import fmtkit`` in any import mode

from fmtkit import HAVE_NIX, rmtree  # noqa: E402


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("nix") and not HAVE_NIX:
        pytest.skip("nix-store is not installed")


# ---------------------------------------------------------------------------- corpus


def _write(p: Path, data: bytes, mode: int = 0o644) -> None:
    p.write_bytes(data)
    p.chmod(mode)


def _mixed(root: Path) -> None:
    root.mkdir()
    _write(root / "plain", b"hello world\n")
    _write(root / "script", b"#!/bin/sh\necho hi\n", 0o755)
    _write(root / "ownerx-only", b"x", 0o700)  # executable iff owner-x
    _write(root / "groupx-only", b"x", 0o654)  # not executable for NAR
    _write(root / "empty", b"")
    _write(root / "seven", b"1234567")  # padding 1
    _write(root / "eight", b"12345678")  # no padding
    (root / "emptydir").mkdir()
    (root / "sub" / "deeper").mkdir(parents=True)
    _write(root / "sub" / "deeper" / "f", b"deep\n")
    os.symlink("../plain", root / "sub" / "rel-link")
    os.symlink("/nonexistent/absolute/target", root / "dangling-abs")
    os.symlink("emptydir", root / "dir-link")
    os.link(root / "plain", root / "hardlink")  # stored as a copy
    # names whose order differs as bytes vs as Python str / case-insensitive
    for name in ["B", "a", "_", "Z", "aa", "a-b", "a.b", "a0"]:
        _write(root / name, name.encode())
    # non-ASCII: valid UTF-8, and raw bytes that are not UTF-8
    _write(root / "café", "é".encode())
    _write(root / "日本語", b"nihongo")
    rootb = os.fsencode(root)
    # b"\xff" decodes to "\udcff", which sorts *before* "\ue000" as str but after as bytes.
    for raw in (b"\xff", "\ue000".encode(), b"caf\xe9-latin1"):
        with open(os.path.join(rootb, raw), "wb") as f:
            f.write(raw)


def _deep(root: Path, depth: int) -> None:
    # Deeper than Python's default recursion limit: the walkers must be iterative.
    p = os.fsencode(root)
    os.mkdir(p)
    for _ in range(depth):
        p = os.path.join(p, b"d")
        os.mkdir(p)
    with open(os.path.join(p, b"leaf"), "wb") as f:
        f.write(b"bottom")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """name -> path of each corpus tree (names are valid store path names)."""
    base = tmp_path_factory.mktemp("corpus")
    trees: dict[str, Path] = {}

    def add(name: str) -> Path:
        trees[name] = base / name
        return trees[name]

    _write(add("regular-file"), b"just a file\n")
    _write(add("exec-file"), b"#!/bin/sh\n", 0o755)
    _write(add("empty-file"), b"")
    os.symlink("/nix/store/does-not-exist", add("root-symlink"))
    add("empty-dir").mkdir()
    ctl = add("control-chars")  # JSON escapes in .ls listings: \u0008 and \u000c, as Nix writes
    ctl.mkdir()
    os.symlink("a\bb\fc\\b\n\t\x01", ctl / "link")
    _write(ctl / "name\bwith\fcontrols", b"x")
    _mixed(add("mixed"))
    _deep(add("deep"), 1100)
    big = add("large")
    big.mkdir()
    rng = random.Random(7)
    _write(big / "random.bin", rng.randbytes(3 * (1 << 20) + 5))  # > chunk size, odd length
    _write(big / "text", b"line of text\n" * 100_000, 0o755)
    many = add("many-files")
    for i in range(300):
        d = many / f"d{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        _write(d / f"f{i:03d}", rng.randbytes(rng.randint(0, 3000)), 0o755 if i % 11 == 0 else 0o644)
    yield trees
    rmtree(trees["deep"])  # before pytest's (recursive) temp-dir cleanup sees it
