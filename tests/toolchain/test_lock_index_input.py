"""Hostile or damaged apt indexes for ``kiln lock debian`` (findings of a fuzz audit): each
is an error naming the index file (and the package and field, where there is one), never
an internal error and never an index read in part or read two ways.

- versions: what ``dpkg --validate-version`` accepts, in ``Version``, ``Provides`` and
  dependency constraints (python-debian raised ``ValueError`` comparing some others);
- compressed indexes cut short or followed by garbage (a cut multi-frame ``.zst`` was
  read silently in part, a cut ``.bz2`` was a ``ValueError``);
- field names are case-insensitive and a field given twice is refused (the candidate
  scan took the first ``Version``, python-debian and so the lock the last)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from kiln.store.apt import AptError, AptIndex, read_index, valid_version
from kiln.store.aptresolve import resolve
from kiln.store.errors import FormatError

INDEX = "h_dists_s_main_binary-amd64_Packages"
SHA = "ab" * 32


def stanza(name: str, version: str = "1", *extra: str, **fields: str) -> str:
    lines = [f"Package: {name}", f"Version: {version}", "Architecture: amd64", *extra]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in fields.items()]
    lines += [f"Filename: pool/main/{name}_{version.split(':')[-1]}_amd64.deb", "Size: 1", f"SHA256: {SHA}"]
    return "\n".join(lines)


def lists(tmp_path: Path, *stanzas: str, suffix: str = "", compress=lambda b: b) -> Path:
    d = tmp_path / "lists"
    d.mkdir()
    (d / (INDEX + suffix)).write_bytes(compress("\n\n".join(stanzas).encode() + b"\n"))
    return d


# --- versions --------------------------------------------------------------------------------

#: cases around each of dpkg's rules (epoch, upstream start and characters, revision)
VERSIONS = [
    "1", "1.0", "1.0-1", "1:1.0", "0:0", "00:1", "1.0~rc1", "1.0-1.2+b1", "1.0-+", "1-a-b",
    "1--1", "1:2.0:3", "1:2.0:3-1", "1:1:-2", "2147483647:1", "5.2.15-2+b13",
    "9Z:075", "3.0.0:2", "1:2.0-1:3", "1.0-", "1-", "1.0--", "1:1-", "a1", "1:a1", ":", "1:",
    ":1", "-1", "1:-1", "1 0", "1_0", "1::", "", "2147483648:1", "99999999999:1", "|-1",
]  # fmt: skip


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg")
def test_the_version_pattern_agrees_with_dpkg():
    """``9Z:075`` and ``3.0.0:2`` (a colon without a numeric epoch) passed the old pattern
    and python-debian then raised ValueError: "internal error"."""
    for v in VERSIONS:
        dpkg = subprocess.run(["dpkg", "--validate-version", "--", v], capture_output=True).returncode == 0
        assert valid_version(v) == dpkg, (v, dpkg)
    from debian.debian_support import version_compare

    for v in filter(valid_version, VERSIONS):
        version_compare(v, "1")  # python-debian compares every version we accept


def test_a_version_dpkg_refuses_names_the_file_and_package(tmp_path):
    d = lists(tmp_path, stanza("a"), stanza("a", "9Z:075"), stanza("b"))
    index = AptIndex.load(d)  # (said when a is used: b is still locked)
    assert [e.name for e in resolve(index, ["b"])] == ["b"]
    with pytest.raises(FormatError, match=rf"^{d / INDEX}: package a: bad or missing Version '9Z:075'"):
        resolve(index, ["a"])


def test_a_bad_provided_version_names_the_file_package_and_relation(tmp_path):
    # "v (= |-1)" passed the Provides pattern; "Depends: v (>= 1)" then compared with it
    d = lists(tmp_path, stanza("a", Depends="v (>= 1)"), stanza("b", Provides="w, v (= |-1)"))
    with pytest.raises(
        FormatError,
        match=rf"{d / INDEX}: package b 1: Provides 'v \(= \|-1\)': expected a Debian version after '=', "
        r"found '\|-1'",
    ):
        resolve(AptIndex.load(d), ["a"])
    # the command says so as an error, not an internal error
    proc = subprocess.run(
        [sys.executable, "-m", "kiln", "lock", "debian", "a", "--lists", str(d), "--trust-lists"]
        + ["-o", str(tmp_path / "l")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "internal error" not in proc.stderr, proc.stderr
    assert "Provides 'v (= |-1)'" in proc.stderr and not (tmp_path / "l").exists()


def test_a_bad_version_in_a_dependency_names_the_package_and_relation(tmp_path):
    # python-debian takes "1.0-1:3" in a relation and raises ValueError comparing it
    d = lists(tmp_path, stanza("a", Pre_Depends="v (>= 1.0-1:3) | w"), stanza("v"))
    with pytest.raises(
        FormatError,
        match=rf"^{d / INDEX}: package a 1: Pre-Depends 'v \(>= 1.0-1:3\) \| w': in \(>= 1.0-1:3\): "
        r"expected a Debian version, found '1.0-1:3'",
    ):
        resolve(AptIndex.load(d), ["a"])


# --- compressed indexes ----------------------------------------------------------------------

PACKAGES = [stanza(f"p{i}", "1.0-1") for i in range(2000)]


def zst_frames(data: bytes) -> bytes:
    """As ``zstd -T`` writes big files: several frames."""
    step = len(data) // 4 + 1
    return b"".join(
        zstandard.ZstdCompressor().compress(data[i : i + step]) for i in range(0, len(data), step)
    )


CODECS = {
    ".gz": lambda b: gzip.compress(b, mtime=0),
    ".xz": lzma.compress,
    ".bz2": bz2.compress,
    ".zst": zst_frames,
}


@pytest.mark.parametrize("suffix", sorted(CODECS))
def test_a_cut_compressed_index_is_an_error_naming_the_file(tmp_path, suffix):
    """A cut ``.bz2`` was "internal error: ValueError"; a cut multi-frame ``.zst`` was read
    silently up to the cut, so the packages after it vanished from the lock's view."""
    d = lists(
        tmp_path,
        *PACKAGES,
        suffix=suffix,
        compress=lambda b: CODECS[suffix](b)[: len(CODECS[suffix](b)) * 3 // 4],
    )
    with pytest.raises(AptError, match=f"^cannot read apt index {d / (INDEX + suffix)}: "):
        AptIndex.load(d)


@pytest.mark.parametrize("suffix", sorted(CODECS))
def test_garbage_after_a_compressed_index_is_an_error_naming_the_file(tmp_path, suffix):
    d = lists(tmp_path, *PACKAGES, suffix=suffix, compress=lambda b: CODECS[suffix](b) + b"garbage!")
    with pytest.raises(AptError, match=f"^cannot read apt index {d / (INDEX + suffix)}: "):
        read_index(d / (INDEX + suffix))


@pytest.mark.parametrize("suffix", sorted(CODECS))
def test_a_whole_compressed_index_is_read_whole(tmp_path, suffix):
    d = lists(tmp_path, *PACKAGES, suffix=suffix, compress=CODECS[suffix])
    index = AptIndex.load(d)
    assert "p0" in index and "p1999" in index


@pytest.mark.skipif(shutil.which("lz4") is None, reason="needs lz4")
def test_a_cut_lz4_index_is_an_error_naming_the_file(tmp_path):
    # (apt's apt-helper decodes lz4 and already refused a cut stream: a guard)
    d = lists(tmp_path, *PACKAGES)
    path = d / (INDEX + ".lz4")
    subprocess.run(["lz4", "-z", "-q", "-f", str(d / INDEX), str(path)], check=True)
    (d / INDEX).unlink()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AptError, match=f"^cannot decompress {path}: "):
        AptIndex.load(d)


# --- field names -----------------------------------------------------------------------------


@pytest.mark.parametrize("second", ["Version: 1", "version: 1", "VERSION:1"])
def test_a_field_given_twice_is_refused(tmp_path, second):
    """The candidate was chosen by the first ``Version`` (5, meeting ``a (>= 5)``) and the
    lock written with python-debian's last one (1)."""
    d = lists(tmp_path, stanza("a", "5", second), stanza("b", Depends="a (>= 5)"), stanza("c"))
    index = AptIndex.load(d)  # (said when a is used: one odd stanza does not refuse every lock)
    assert [e.name for e in resolve(index, ["c"])] == ["c"]
    with pytest.raises(FormatError, match=rf"{d / INDEX}: package a: field '\w+' is given twice"):
        resolve(index, ["b"])


def test_field_names_are_read_case_insensitively(tmp_path):
    lower = stanza("a", "2", Depends="b").replace("Package:", "package:").replace("Version:", "VERSION:")
    d = lists(tmp_path, lower.replace("Architecture:", "architecture:"), stanza("b", Provides="v (= 3)"))
    index = AptIndex.load(d)
    assert index.version("a") == "2" and index.providers["v"] == [("b", "3")]
    assert [(e.name, e.version) for e in resolve(index, ["a"])] == [("a", "2"), ("b", "1")]


def test_a_field_continued_over_lines_is_read_whole(tmp_path):
    # Provides folded over two lines: the old scan read only the first line
    d = lists(tmp_path, stanza("a", "1", "Provides: v1,", " v2 (= 2)"), stanza("b", Depends="v2 (>= 2)"))
    assert [e.name for e in resolve(AptIndex.load(d), ["b"])] == ["a", "b"]
