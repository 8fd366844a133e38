"""Hostile and broken NARs: every one is rejected with a FormatError that says what was
expected and where, by ``entries``, ``ls`` and ``restore`` alike, and ``restore`` leaves
nothing behind."""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import pytest
from fmtkit import assert_nothing_left, nar, nar_dir, nar_file, nar_link, s

from kiln.store import nar as narmod
from kiln.store.errors import FormatError

GOOD = nar(
    nar_dir(
        ("a", nar_file(b"hello")),
        ("b", nar_dir(("x", nar_file(b"#!", executable=True)), ("y", nar_link("../a")))),
        ("c", nar_dir()),
    )
)


def _reg(contents: bytes) -> bytes:
    return s("(") + s("type") + s("regular") + s("contents") + s(contents) + s(")")


def _entry(name: bytes | str, node: bytes) -> bytes:
    return s("entry") + s("(") + s("name") + s(name) + s("node") + node + s(")")


def _raw_dir(*entries: bytes) -> bytes:
    return s("(") + s("type") + s("directory") + b"".join(entries) + s(")")


def _bad_pad_string(data: bytes) -> bytes:
    """A NAR string whose padding is not all zeros."""
    pad = -len(data) % 8
    assert pad
    return struct.pack("<Q", len(data)) + data + b"\x01" * pad


CASES: dict[str, tuple[bytes, str]] = {
    "empty input": (b"", r"truncated at offset 0"),
    "bad magic": (s("nix-archive-2") + nar_file(b"")[0:0], r"expected magic 'nix-archive-1' at offset 0"),
    "not a nar": (b"PK\x03\x04" + b"\0" * 60, r"not a NAR|bytes long"),
    "truncated header": (nar(nar_file(b"hi"))[:30], r"truncated"),
    "truncated contents": (nar(nar_file(b"hello world"))[:-20], r"truncated"),
    "missing close": (nar(nar_file(b"x"))[: -len(s(")"))], r"truncated"),
    "trailing garbage": (nar(nar_file(b"x")) + b"\0" * 8, r"trailing data after the root node at offset 120"),
    "unknown node type": (
        nar(s("(") + s("type") + s("fifo") + s(")")),
        r"unknown node type b'fifo' at offset 56",
    ),
    "unknown tag instead of contents": (
        nar(s("(") + s("type") + s("regular") + s("mode") + s("0755") + s(")")),
        r"expected 'contents' at offset 72, found b'mode'",
    ),
    "executable with value": (
        nar(s("(") + s("type") + s("regular") + s("executable") + s("yes") + s("contents") + s("") + s(")")),
        r"expected '' after 'executable' at offset 96",
    ),
    "missing type": (nar(s("(") + s("regular") + s(")")), r"expected 'type' in node '/' at offset 40"),
    "bad open": (nar(s("[") + s("type") + s("regular")), r"expected '\(' opening node '/' at offset 24"),
    "bad pad in tag": (
        s("nix-archive-1") + _bad_pad_string(b"(") + s("type"),
        r"non-zero padding after .* at offset 33",
    ),
    "bad pad in contents": (
        nar(s("(") + s("type") + s("regular") + s("contents") + _bad_pad_string(b"abc") + s(")")),
        r"non-zero padding after contents of '' at offset 99",
    ),
    "absurd token length": (
        s("nix-archive-1") + struct.pack("<Q", 1 << 40),
        r"at offset 24 is 1099511627776 bytes long \(at most 64 accepted\)",
    ),
    "absurd contents length": (
        nar(s("(") + s("type") + s("regular") + s("contents")) + struct.pack("<Q", 1 << 62),
        r"absurd length",
    ),
    "unsorted entries": (
        nar(_raw_dir(_entry("b", _reg(b"")), _entry("a", _reg(b"")))),
        r"'a'.* out of order",
    ),
    "bytes order not str order": (
        nar(_raw_dir(_entry(b"a", _reg(b"")), _entry(b"B", _reg(b"")))),
        r"out of order \(after b'a'\)",
    ),
    "duplicate entries": (
        nar(_raw_dir(_entry("a", _reg(b"")), _entry("a", _reg(b"")))),
        r"'a'.* is duplicated",
    ),
    "name dot": (nar(_raw_dir(_entry(".", _reg(b"")))), r"entry name b'\.' in '/' at offset \d+ is '\.'"),
    "name dotdot": (nar(_raw_dir(_entry("..", _reg(b"")))), r"is '\.\.'"),
    "name empty": (nar(_raw_dir(_entry("", _reg(b"")))), r"is empty"),
    "name slash": (nar(_raw_dir(_entry("a/b", _reg(b"")))), r"contains '/'"),
    "name traversal": (nar(_raw_dir(_entry("../../etc", _reg(b"")))), r"contains '/'"),
    "name NUL": (nar(_raw_dir(_entry(b"a\0b", _reg(b"")))), r"contains NUL"),
    "empty symlink target": (nar(nar_link(b"")), r"empty target"),
    "symlink target NUL": (nar(nar_link(b"a\0b")), r"NUL"),
    "junk instead of entry": (
        nar(s("(") + s("type") + s("directory") + s("file")),
        r"expected 'entry' or '\)'",
    ),
    "entry without name": (
        nar(s("(") + s("type") + s("directory") + s("entry") + s("(") + s("node")),
        r"expected 'name' in directory entry",
    ),
    "entry not closed": (
        nar(
            s("(")
            + s("type")
            + s("directory")
            + s("entry")
            + s("(")
            + s("name")
            + s("a")
            + s("node")
            + _reg(b"")
            + s("(")
        ),
        r"expected '\)' closing directory entry",
    ),
    "two roots": (nar(nar_file(b"")) + nar_file(b""), r"trailing data"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_rejected_everywhere(case: str, tmp_path: Path) -> None:
    data, pattern = CASES[case]
    with pytest.raises(FormatError, match=pattern):
        list(narmod.entries(io.BytesIO(data)))
    with pytest.raises(FormatError, match=pattern):
        narmod.ls([data])
    dest = tmp_path / "out"
    with pytest.raises(FormatError, match=pattern):
        narmod.restore([data], dest)
    assert_nothing_left(dest)


def test_good_reference_archive_is_accepted(tmp_path: Path) -> None:
    narmod.restore([GOOD], tmp_path / "ok")
    assert narmod.dump_bytes(tmp_path / "ok") == GOOD


def test_every_truncation_is_rejected(tmp_path: Path) -> None:
    for n in range(len(GOOD)):
        with pytest.raises(FormatError, match="truncated"):
            list(narmod.entries([GOOD[:n]]))
        if n % 7 == 0:  # restore shares the parser; a sample keeps the test fast
            dest = tmp_path / f"t{n}"
            with pytest.raises(FormatError, match="truncated"):
                narmod.restore([GOOD[:n]], dest)
            assert_nothing_left(dest)


def test_corruption_never_crashes(tmp_path: Path) -> None:
    """Flipping any byte gives either a FormatError or a (different) valid archive -
    never another exception type, and never a partial restore."""
    rng = random.Random(1)
    accepted = 0
    for i in range(len(GOOD)):
        bad = bytearray(GOOD)
        bad[i] ^= 1 << rng.randrange(8)
        try:
            list(narmod.entries([bytes(bad)]))
        except FormatError:
            if i % 7 == 0:
                dest = tmp_path / f"c{i}"
                with pytest.raises(FormatError):
                    narmod.restore([bytes(bad)], dest)
                assert_nothing_left(dest)
        else:
            accepted += 1  # e.g. a flipped bit inside file contents
            dest = tmp_path / f"c{i}"
            narmod.restore([bytes(bad)], dest)
            assert narmod.dump_bytes(dest) == bytes(bad)
    assert 0 < accepted < len(GOOD) // 4


@pytest.mark.parametrize(
    ("archive", "says"),
    [
        (
            nar(_raw_dir(_entry("n" * 256, _reg(b"")))),
            r"entry 'n{80}'\.\.\. \(before offset \d+\) has a name of 256 bytes",
        ),
        (nar(nar_link(b"t" * 4096)), r"symlink '' \(before offset \d+\) has a target of 4096 bytes"),
    ],
    ids=["name 256 bytes", "symlink target 4096 bytes"],
)
def test_what_linux_cannot_make_is_listed_but_not_restored(archive: bytes, says: str, tmp_path: Path) -> None:
    """A name over 255 bytes (APFS takes 765) or a symlink target over 4095 is a NAR all
    the same: it is listed and hashed; a restore refuses it, naming the entry and where
    it ends, and leaves nothing (it failed when the file was made, naming kiln's hidden
    temp directory)."""
    assert list(narmod.entries([archive]))
    with pytest.raises(FormatError, match=says):
        narmod.restore([archive], tmp_path / "dest")
    assert list(tmp_path.iterdir()) == []


def test_error_after_valid_prefix_cleans_up_partial_tree(tmp_path: Path) -> None:
    # Several files are written before the bad entry is seen; none may survive.
    bad = nar(_raw_dir(*(_entry(f"f{i}", _reg(b"x" * 100)) for i in range(5)), _entry("f0", _reg(b""))))
    with pytest.raises(FormatError, match="out of order"):
        narmod.restore([bad], tmp_path / "dest")
    assert_nothing_left(tmp_path / "dest")
    assert list(tmp_path.iterdir()) == []


def test_entries_yields_valid_prefix_then_raises() -> None:
    bad = nar(_raw_dir(_entry("a", _reg(b"1")), _entry("b", _reg(b"2")), _entry("a", _reg(b""))))
    seen = []
    with pytest.raises(FormatError):
        for e in narmod.entries([bad]):
            seen.append(e.path)
    assert seen == ["", "a", "b"]


def _deep_nar(depth: int) -> bytes:
    head = b"".join(
        s("(") + s("type") + s("directory") + s("entry") + s("(") + s("name") + s("d") + s("node")
        for _ in range(depth)
    )
    return nar(head + nar_file(b"") + b"".join(s(")") + s(")") for _ in range(depth)))


def test_hostile_depth_does_not_overflow() -> None:
    # The parser keeps an explicit stack: far deeper than Python's recursion limit.
    data = _deep_nar(5000)
    assert sum(1 for _ in narmod.entries([data])) == 5001
    with pytest.raises(FormatError, match="trailing data"):
        list(narmod.entries([data + b"x"]))


def test_deep_restore_failure_leaves_nothing(tmp_path: Path) -> None:
    # 1,200 directories are created before the trailing byte is seen; the iterative
    # cleanup removes them all.
    dest = tmp_path / "deep"
    with pytest.raises(FormatError, match="trailing data"):
        narmod.restore([_deep_nar(1200) + b"x"], dest)
    assert_nothing_left(dest)
