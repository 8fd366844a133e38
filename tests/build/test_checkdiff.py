"""``checkdiff``: what a --check mismatch report lists, judged as the NAR judges."""

from __future__ import annotations

import os
from pathlib import Path

from kiln.store import nar
from kiln.store.checkdiff import describe_differences, differing_files


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
