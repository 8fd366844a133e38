"""What a small .deb can make the unpacker create (audit finding 2) and what it does with
errors of the destination (finding 3): directories made as parents count against the
member limit, nesting is bounded, a failed unpack leaves nothing behind however deep it
got (no RecursionError), and a full disk is reported as the system's error, not as a
corrupt package."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kiln.store import debunpack
from kiln.store.debunpack import unpack_debs
from kiln.store.errors import FormatError
from kiln.store.trees import remove_tree

from .debs import Entry, make_deb


def refused(debs: list[Path], out: Path, match: str) -> None:
    try:
        with pytest.raises(FormatError, match=match):
            unpack_debs(debs, out)
        assert not out.exists() and not out.is_symlink()
    finally:
        remove_tree(out)  # (a deep tree, if the test fails: pytest's own cleanup recurses)


def test_directories_made_as_parents_count_as_members(tmp_path, monkeypatch):
    # the audit's 11 KB .deb: 100 members whose paths implied 200,101 directories
    monkeypatch.setattr(debunpack, "MAX_UNPACKED_MEMBERS", 100)
    deep = "/".join(["d"] * 20)
    deb = make_deb(tmp_path / "m.deb", [Entry(f"./{i}/{deep}/", "d") for i in range(10)])
    refused(
        [deb], tmp_path / "out", r"^m.deb: at '\./4/d/.*', the unpacked tree exceeds its limit of 100 members"
    )
    # within the limit, the same members unpack
    monkeypatch.setattr(debunpack, "MAX_UNPACKED_MEMBERS", 10 * 21)
    unpack_debs([deb], tmp_path / "fits")
    assert (tmp_path / "fits" / "9" / deep).is_dir()


def test_nesting_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(debunpack, "MAX_UNPACKED_DEPTH", 5)
    ok = make_deb(tmp_path / "ok.deb", [Entry("./a/b/c/d/e/", "d"), Entry("./a/b/c/d/e/file", data=b"x")])
    unpack_debs([ok], tmp_path / "ok")
    assert (tmp_path / "ok" / "a/b/c/d/e/file").read_bytes() == b"x"
    for entries in (
        [Entry("./a/b/c/d/e/f/", "d")],  # a directory member six deep
        [Entry("./a/b/c/d/e/f/g", data=b"x")],  # a file whose parents would be six deep
        # through a symlink: the path is short, where it leads is not
        [Entry("./a/b/c/d/", "d"), Entry("./l", "l", link="a/b/c/d"), Entry("./l/e/f/", "d")],
    ):
        deb = make_deb(tmp_path / "deep.deb", entries)
        refused([deb], tmp_path / "out", r"^deep.deb: path '.*': directories nested more than 5 levels deep")


def test_the_audit_deep_path_is_refused_at_the_default_limit(tmp_path):
    deep = "/".join(["a"] * 1200)
    deb = make_deb(tmp_path / "deep.deb", [Entry(f"./{deep}/", "d"), Entry("../evil", data=b"x")])
    refused(
        [deb], tmp_path / "out", r"^deep.deb: path 'a/a/.*': directories nested more than 256 levels deep"
    )


def test_a_tree_deeper_than_the_recursion_limit_is_removed_after_an_error(tmp_path, monkeypatch):
    # shutil.rmtree recursed once per level: RecursionError (ignore_errors does not cover
    # it), the half-written tree was left behind and the real error lost
    monkeypatch.setattr(debunpack, "MAX_UNPACKED_DEPTH", 2000, raising=False)
    deep = "/".join(["a"] * 1200)
    deb = make_deb(tmp_path / "deep.deb", [Entry(f"./{deep}/", "d"), Entry("../evil", data=b"x")])
    refused([deb], tmp_path / "out", r"^deep.deb: refusing member path with '\.\.': '\.\./evil'")


_EFBIG = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    from kiln.store.debunpack import unpack_debs
    deb, out = map(Path, sys.argv[1:])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))  # a full disk
    try:
        unpack_debs([deb], out)
        print(json.dumps({"error": None}))
    except Exception as e:
        print(json.dumps({"error": type(e).__name__, "errno": getattr(e, "errno", None),
                          "message": str(e), "left": out.exists()}))
    """
)


def test_a_write_limit_is_the_systems_error_not_the_packages(tmp_path):
    # it was "FormatError: big.deb: corrupt data archive: [Errno 27] File too large"
    deb = make_deb(tmp_path / "big.deb", [Entry("./usr/lib/big", data=bytes(4 << 20))])
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", _EFBIG, str(deb), str(out)], capture_output=True, text=True, check=True
    )
    got = json.loads(proc.stdout)
    assert got["error"] == "OSError" and got["errno"] == errno.EFBIG, got
    assert "corrupt" not in got["message"] and not got["left"], got


def test_path_resolution_work_is_bounded(tmp_path, monkeypatch):
    # symlinks whose targets wander (a/../a/../...) make a short member path cost many
    # lookups, and replacing a symlink empties the cache of resolved directories, so each
    # member paid again: a 2 KB .deb took 90 s for 200 members, ~60 hours at the member limit
    monkeypatch.setattr(debunpack, "MAX_RESOLVE_STEPS", 20_000, raising=False)
    entries = [Entry("./a/", "d"), Entry("./d/", "d")]
    entries += [
        Entry(f"./l{i}", "l", link="a/../" * 100 + (f"l{i + 1}" if i < 9 else "d")) for i in range(10)
    ]
    for j in range(20):  # each ~2,000 steps
        entries += [Entry(f"./l0/f{j}"), Entry("./x", "l", link=f"y{j}")]
    deb = make_deb(tmp_path / "hops.deb", entries)
    refused(
        [deb],
        tmp_path / "out",
        r"^hops.deb: at '\./l0/f\d+', resolving member paths took more than 20000 steps in all",
    )
    monkeypatch.setattr(debunpack, "MAX_RESOLVE_STEPS", 100_000)
    unpack_debs([deb], tmp_path / "fits")
    assert (tmp_path / "fits" / "d" / "f19").is_file()
