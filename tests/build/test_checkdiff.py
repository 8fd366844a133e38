"""``checkdiff``: what a --check mismatch report lists, judged as the NAR judges."""

from __future__ import annotations

import os
from pathlib import Path

from kiln.store import nar
from kiln.store.checkdiff import describe_differences, differing_files
from kiln.store.trees import remove_tree


def test_the_owner_executable_bit_is_what_counts(tmp_path: Path) -> None:
    # 0755 vs 0655: the NARs differ (the owner's x bit); access(X_OK), which used to
    # decide, is true for both when running as root
    a, b = tmp_path / "a", tmp_path / "b"
    for d, mode in ((a, 0o755), (b, 0o655)):
        d.mkdir()
        (d / "tool").write_text("x\n")
        os.chmod(d / "tool", mode)
    assert nar.hash_path(a)[0] != nar.hash_path(b)[0]
    assert differing_files(a, b) == ["  tool: executable vs regular"]


def test_no_listed_file_is_said_not_left_blank(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "same").write_text("same\n")
    text = describe_differences(a, b)
    assert "no file differs" in text


def _deep(root: Path, depth: int, content: str) -> None:
    """``root/d/d/.../f`` ``depth`` directories down (made through directory fds)."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
        f.write(content)
    os.close(fd)


def test_an_output_deeper_than_the_recursion_limit_is_listed(tmp_path: Path) -> None:
    # the walk was recursive: a differing output 1,200 directories deep (which the NAR
    # code handles) raised RecursionError out of ``kiln build --check``
    a, b = tmp_path / "a", tmp_path / "b"
    _deep(a, 1200, "one\n")
    _deep(b, 1200, "two\n")
    try:
        assert differing_files(a, b) == [f"  {'d/' * 1200}f: contents differ (4 vs 4 bytes)"]
    finally:  # (pytest's own clean-up of old temp dirs is recursive)
        remove_tree(a)
        remove_tree(b)


def test_a_passed_deadline_cuts_the_listing_short(tmp_path: Path) -> None:
    import time

    a, b = tmp_path / "a", tmp_path / "b"
    for d, text in ((a, "one\n"), (b, "two\n")):
        d.mkdir()
        (d / "f").write_text(text)
    assert "f: contents differ" in describe_differences(a, b, deadline=time.monotonic() + 60)
    text = describe_differences(a, b, deadline=time.monotonic() - 1)
    assert text == "differing files: not listed (--timeout ran out while comparing the trees)"
