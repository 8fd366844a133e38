"""Lock resolution: synthetic indexes for the rules, the machine's apt lists for reality."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.store import apt
from kiln.store.apt import AptError, AptIndex, LockEntry, parse_lock, render_lock
from kiln.store.aptresolve import resolve
from kiln.store.errors import FormatError

REPO = Path(__file__).resolve().parents[2]


def stanza(name: str, version: str = "1.0", arch: str = "amd64", **fields: str) -> str:
    lines = [f"Package: {name}", f"Version: {version}", f"Architecture: {arch}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in fields.items()]
    digest = f"{abs(hash((name, version))):064x}"[-64:]
    lines += [
        f"Filename: pool/main/{name[0]}/{name}/{name}_{version}_{arch}.deb",
        "Size: 100",
        f"SHA256: {digest}",
    ]
    return "\n".join(lines)


INDEX = [
    stanza("app", Depends="liba (>= 2), awk | mawk, mta", Pre_Depends="libc"),
    stanza("liba", "1.0"),
    stanza("liba", "2.5"),  # the higher version is the candidate
    stanza("liba", "3.0", arch="arm64"),  # other architectures are ignored
    stanza("libc", arch="amd64", Depends="libc-data"),
    stanza("libc-data", arch="all"),
    stanza("gawk", Provides="awk"),
    stanza("mawk", Provides="awk"),
    stanza("exim", Provides="mta", Depends="heavy"),
    stanza("postfix", Provides="mta"),
    stanza("heavy"),
    stanza("broken", Depends="liba (>= 9)"),
    stanza("needs-excluded", Depends="guile"),
    stanza("guile"),
]


def names(entries) -> list[str]:
    return [e.name for e in entries]


def test_resolution_rules():
    idx = AptIndex(INDEX)
    got = resolve(idx, ["app"])
    # awk -> first provider by name (gawk); mta -> exim (first by name) pulls heavy
    assert names(got) == ["app", "exim", "gawk", "heavy", "liba", "libc", "libc-data"]
    assert {e.name: e.version for e in got}["liba"] == "2.5"
    assert {e.name: e.arch for e in got}["libc-data"] == "all"


def test_already_chosen_alternative_satisfies():
    got = resolve(AptIndex(INDEX), ["mawk", "postfix", "app"])
    assert "gawk" not in names(got) and "exim" not in names(got)


def test_exclude():
    got = resolve(AptIndex(INDEX), ["app"], exclude=["exim", "gawk"])
    assert "postfix" in names(got) and "mawk" in names(got)
    warnings: list[str] = []
    got = resolve(AptIndex(INDEX), ["needs-excluded"], exclude=["guile"], warn=warnings.append)
    assert names(got) == ["needs-excluded"] and "guile" in warnings[0]


def test_unsatisfiable_and_unknown():
    with pytest.raises(AptError, match=r"cannot satisfy dependency 'liba \(>= 9\)'"):
        resolve(AptIndex(INDEX), ["broken"])
    with pytest.raises(AptError, match="no package by that name"):
        resolve(AptIndex(INDEX), ["nonesuch"])
    with pytest.raises(AptError, match="both requested and excluded"):
        resolve(AptIndex(INDEX), ["app"], exclude=["app"])


def test_render_parse_roundtrip():
    entries = (
        LockEntry("a", "1:2.0-1+b1", "amd64", "ab" * 32, "pool/main/a/a/a_2.0-1+b1_amd64.deb", 12),
        LockEntry('we"ird$', "1", "all", "cd" * 32, 'pool/x/we"ird$_1_all.deb', 3),
    )
    text = render_lock(entries, "a header\nsecond line")
    assert parse_lock(text) == entries
    assert text.startswith("# a header\n# second line\nlet debian_lock = [\n")


def test_rendered_lock_parses_as_a_recipe():
    parser = pytest.importorskip("kiln.lang.parser")
    text = render_lock([LockEntry("a", "1", "amd64", "ab" * 32, "pool/a_1_amd64.deb", 1)])
    module = parser.parse_module(text, "lock.recipe")
    assert [let.name for let in module.lets] == ["debian_lock"]


def test_archive_bases_from_both_formats(tmp_path):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "a.sources").write_text(
        "Types: deb deb-src\nURIs: http://archive.invalid/debian/\nSuites: x\nComponents: main\n\n"
        "Types: deb-src\nURIs: http://src-only.invalid/debian\nSuites: x\n\n"
        "Enabled: no\nTypes: deb\nURIs: http://disabled.invalid/\nSuites: x\n"
    )
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://one-line.invalid/debian x main\n"
        "deb-src http://one-line-src.invalid/debian x main\n"
        # skipped: the fetcher speaks neither (a source bound to fail)
        "deb ftp://ftp.invalid/debian x main\ndeb mirror+http://mirrors.invalid/list x main\n"
    )
    assert apt.archive_bases("deb", d, tmp_path / "sources.list") == [
        "http://one-line.invalid/debian",
        "http://archive.invalid/debian",
    ]
    assert apt.archive_bases("deb-src", d, tmp_path / "sources.list") == [
        "http://one-line-src.invalid/debian",
        "http://archive.invalid/debian",
        "http://src-only.invalid/debian",
    ]


def test_compressed_index_files(tmp_path):
    (tmp_path / "x_dists_y_main_binary-amd64_Packages.gz").write_bytes(
        gzip.compress("\n\n".join(INDEX).encode())
    )
    (tmp_path / "x_dists_y_InRelease").write_text("not an index")
    idx = AptIndex.load(tmp_path)
    assert names(resolve(idx, ["libc"])) == ["libc", "libc-data"]
    with pytest.raises(AptError, match="apt-get update"):
        AptIndex.load(tmp_path / "empty")


def test_exclude_applies_to_a_virtual_root():
    assert names(resolve(AptIndex(INDEX), ["awk"], exclude=["gawk"])) == ["mawk"]
    with pytest.raises(AptError, match="only excluded packages provide it"):
        resolve(AptIndex(INDEX), ["awk"], exclude=["gawk", "mawk"])


def test_versioned_dependencies_against_provides_and_chosen_versions():
    idx = AptIndex(
        [
            # an unversioned Provides does not satisfy a versioned dependency (policy 7.5)
            stanza("perl", Provides="libtest-simple-perl"),
            stanza("libtest-simple-perl", "1.30"),
            stanza("t", Depends="perl, libtest-simple-perl (>= 1.3)"),
            # a versioned Provides does
            stanza("libfoo2", Provides="libfoo-abi (= 2.1)"),
            stanza("u", Depends="libfoo-abi (>= 2)"),
            # a chosen package whose version is too low does not count as satisfying
            stanza("old", "1.0"),
            stanza("v", Depends="old, w"),
            stanza("w", Depends="old (>= 2) | alt"),
            stanza("alt"),
            stanza("x", Depends="old, y"),
            stanza("y", Depends="old (>= 2)"),
            # the obsolete < and > relations mean <= and >=
            stanza("z", Depends="old (> 1.0)"),
        ]
    )
    assert names(resolve(idx, ["t"])) == ["libtest-simple-perl", "perl", "t"]
    assert names(resolve(idx, ["u"])) == ["libfoo2", "u"]
    assert names(resolve(idx, ["v"])) == ["alt", "old", "v", "w"]
    with pytest.raises(AptError, match=r"'old \(>= 2\)' \(old 1.0 already chosen\)"):
        resolve(idx, ["x"])
    assert names(resolve(idx, ["z"])) == ["old", "z"]


def test_malformed_index_entries_are_format_errors(tmp_path):
    with pytest.raises(FormatError, match="package p: bad or missing Version"):
        resolve(AptIndex(["Package: p\nArchitecture: amd64"]), ["p"])  # (said when p is used)
    idx = AptIndex([stanza("p").replace("Size: 100", "Size: 10k")])
    with pytest.raises(FormatError, match="Size must be a number of bytes, found '10k'"):
        resolve(idx, ["p"])
    (tmp_path / "h_dists_s_main_binary-amd64_Packages").write_text(
        "Package: q\nVersion: !\nArchitecture: all\n\n" + stanza("r") + "\n"
    )
    idx = AptIndex.load(tmp_path)
    assert [e.name for e in resolve(idx, ["r"])] == ["r"]
    with pytest.raises(FormatError, match="h_dists_s_main_binary-amd64_Packages: package q"):
        resolve(idx, ["q"])


def test_not_automatic_suites_are_taken_only_for_what_nothing_else_has(tmp_path):
    # backports: NotAutomatic; apt's candidate is the main suite's lower version
    (tmp_path / "h_dists_main_main_binary-amd64_Packages").write_text(
        stanza("gcc", "4:12.2.0-3") + "\n\n" + stanza("only-main") + "\n"
    )
    (tmp_path / "h_dists_main_InRelease").write_text("Suite: stable\n")
    (tmp_path / "h_dists_bpo_main_binary-amd64_Packages").write_text(
        stanza("gcc", "4:13.1.0-1~bpo12+1") + "\n\n" + stanza("only-bpo", "2.0") + "\n"
    )
    (tmp_path / "h_dists_bpo_InRelease").write_text(
        "Suite: stable-backports\nNotAutomatic: yes\nButAutomaticUpgrades: yes\n"
    )
    idx = AptIndex.load(tmp_path)
    assert idx.version("gcc") == "4:12.2.0-3"
    assert idx.version("only-bpo") == "2.0"
    assert apt.release_priority(tmp_path / "h_dists_bpo_main_binary-amd64_Packages") == 100
    assert apt.release_priority(tmp_path / "h_dists_main_main_binary-amd64_Packages") == 500


# --- the machine's own apt lists -------------------------------------------------------

machine = pytest.mark.skipif(
    not apt.index_files(), reason="no apt lists on this machine (run apt-get update)"
)


@pytest.fixture(scope="module")
def machine_index():
    return AptIndex.load()


@machine
def test_machine_closure_of_gcc(machine_index):
    got = resolve(machine_index, ["gcc", "make"])
    n = names(got)
    assert n == sorted(n)
    for want in ("gcc", "libc6", "binutils", "make"):  # libc6-dev is only Recommended
        assert want in n
    assert any(re.fullmatch(r"gcc-\d+", x) for x in n)
    for e in got:
        assert re.fullmatch(r"[0-9a-f]{64}", e.sha256) and e.filename.startswith("pool/") and e.size > 0


@machine
def test_cli_writes_lock(tmp_path):
    out = tmp_path / "sub" / "lock.recipe"
    proc = subprocess.run(
        [sys.executable, "-m", "kiln", "lock", "debian", "bash", "--exclude", "base-files", "-o", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "KILN_HOME": str(tmp_path / "home")},  # (the Release dates seen go there)
    )
    assert proc.returncode == 0, proc.stderr
    entries = parse_lock(out.read_text())
    assert "bash" in names(entries) and "base-files" not in names(entries)
    assert "--exclude base-files" in out.read_text()
    # the machine's lists were verified against their signed Release files, and the
    # Releases' dates recorded for the rollback check
    assert "# Indexes verified against their suites' signed Release files:" in out.read_text()
    assert "_dists_" in (tmp_path / "home" / "apt-releases.json").read_text()


@machine
def test_checked_in_toolchain_lock_is_well_formed():
    entries = parse_lock((REPO / "recipes" / "toolchain.lock.recipe").read_text())
    n = names(entries)
    assert n == sorted(n) and len(n) == len(set(n))
    for want in (
        "gcc",
        "g++",
        "binutils",
        "libc6-dev",
        "make",
        "bash",
        "coreutils",
        "sed",
        "grep",
        "gawk",
        "perl",
        "xz-utils",
    ):
        assert want in n
    for banned in ("build-essential", "dpkg-dev", "make-guile", "guile-3.0-libs"):
        assert banned not in n


def test_lock_changes_summary():
    from kiln.cmd_lock import lock_changes

    a = LockEntry("a", "1", "amd64", "aa" * 32, "pool/a1", 1)
    a2 = LockEntry("a", "2", "amd64", "bb" * 32, "pool/a2", 1)
    b = LockEntry("b", "1", "all", "cc" * 32, "pool/b", 1)
    c = LockEntry("c", "1", "all", "dd" * 32, "pool/c", 1)
    assert lock_changes([a, b], [a2, c]) == ["~ a 1 -> 2", "- b 1", "+ c 1"]
    assert lock_changes([a], [a]) == ["(no package changed)"]


@pytest.mark.parametrize("suffix", [".gz", ".xz", ".bz2", ".zst"])
def test_a_corrupt_compressed_index_names_the_file(tmp_path, suffix: str):
    """It was an "internal error" (BadGzipFile, LZMAError, ...) naming no file."""
    bad = tmp_path / f"x_dists_y_main_binary-amd64_Packages{suffix}"
    bad.write_bytes(b"garbage\n")
    with pytest.raises(AptError, match=f"cannot read apt index {bad}"):
        AptIndex.load(tmp_path)


def test_cli_regenerate_line_keeps_arch_and_lists_and_refuses_a_directory(tmp_path):
    """The lock's "regenerate with" line dropped --arch and --lists: following it made an
    amd64 lock from the machine's lists."""
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "x_dists_y_main_binary-arm64_Packages").write_text(
        "\n\n".join(
            s.replace("Architecture: amd64", "Architecture: arm64").replace("_amd64.deb", "_arm64.deb")
            for s in INDEX
        )
    )
    out = tmp_path / "arm.lock"
    cmd = [sys.executable, "-m", "kiln", "lock", "debian", "libc", "--arch", "arm64", "--lists", str(lists)]
    cmd.append("--trust-lists")  # (unsigned: verification is tests/toolchain/test_lock_verify.py's)
    proc = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"kiln lock debian libc --arch arm64 --lists {lists} --trust-lists -o {out}" in out.read_text()
    proc = subprocess.run([*cmd, "-o", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "is a directory (expected the lock file to write)" in proc.stderr, (
        proc.stderr
    )


def test_a_virtual_dependency_whose_providers_are_all_excluded_is_dropped(tmp_path):
    """The documented rule (alternatives all excluded: dropped) did not see through a
    virtual name: 'cannot satisfy dependency awk', not saying why."""
    idx = AptIndex(
        [stanza("x", Depends="awk"), stanza("gawk", Provides="awk"), stanza("mawk", Provides="awk")]
    )
    warnings: list[str] = []
    got = resolve(idx, ["x"], exclude=["gawk", "mawk"], warn=warnings.append)
    assert names(got) == ["x"] and "'awk' dropped (excluded)" in warnings[0]


def test_an_architecture_with_no_packages_says_so(tmp_path):
    (tmp_path / "x_dists_y_main_binary-amd64_Packages").write_text("\n\n".join(INDEX))
    with pytest.raises(AptError, match="no packages for architecture 'arm46'"):
        AptIndex.load(tmp_path, "arm46")
