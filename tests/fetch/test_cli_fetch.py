"""``kiln prefetch`` and ``kiln mirror-sources`` end to end, against the local server."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile

import pytest

from kiln.main import main
from kiln.store import nar

DATA = b"source tarball bytes\n" * 1000


def tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data, mode in [
            ("pkg-1.0/README", b"hi\n", 0o644),
            ("pkg-1.0/configure", b"#!/bin/sh\n", 0o755),
        ]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_prefetch_prints_sha256(server, capsys, tmp_path):
    digest = server.add("a.tar.gz", DATA)
    assert main(["prefetch", server.url("file/a.tar.gz"), "--mirror", str(tmp_path / "m")]) == 0
    assert capsys.readouterr().out.strip() == digest
    assert (tmp_path / "m" / "sha256" / digest).read_bytes() == DATA
    assert main(["prefetch", "--format", "sri", server.url("file/a.tar.gz")]) == 0
    assert capsys.readouterr().out.strip().startswith("sha256-")


def test_prefetch_unpack_is_the_nar_hash_of_the_top_directory(server, capsys, tmp_path):
    server.add("p.tar.gz", tarball())
    assert main(["prefetch", "--unpack", server.url("file/p.tar.gz")]) == 0
    got = capsys.readouterr().out.strip()
    ref = tmp_path / "ref"
    ref.mkdir()
    with tarfile.open(fileobj=io.BytesIO(tarball())) as t:
        t.extractall(ref, filter="data")
    assert got == nar.hash_path(ref / "pkg-1.0")[0].hex


@pytest.mark.nix
def test_prefetch_unpack_agrees_with_nix(server, capsys):
    if not shutil.which("nix-prefetch-url"):
        pytest.skip("nix-prefetch-url not installed")
    server.add("p.tar.gz", tarball())
    url = server.url("file/p.tar.gz")
    assert main(["prefetch", "--unpack", "--format", "nix32", url]) == 0
    ours = capsys.readouterr().out.strip()
    theirs = subprocess.run(["nix-prefetch-url", "--unpack", url], capture_output=True, text=True, check=True)
    assert ours == theirs.stdout.strip()


def test_prefetch_failure_is_a_clean_error(server, capsys):
    assert main(["prefetch", server.url("file/missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot fetch") and "HTTP 404" in err and "Traceback" not in err


def test_mirror_sources(server, capsys, tmp_path):
    pytest.importorskip("kiln.lang")
    a = server.add("a.tar.gz", DATA)
    b = server.add("b.tar.gz", DATA + b"more")
    repo, rev, tree_hash = git_repo(tmp_path)
    recipe = tmp_path / "srcs.recipe"
    recipe.write_text(
        f'let a = fetchurl {{ url = "{server.url("file/a.tar.gz")}", sha256 = "{a}" }}\n'
        f'let b = fetchurl {{ urls = ["{server.url("file/gone")}", "{server.url("redirect/b.tar.gz")}"], sha256 = "{b}" }}\n'
        f'let g = fetchgit {{ url = "file://{repo}", rev = "{rev}", sha256 = "{tree_hash}" }}\n'
        f'let bad = fetchgit {{ url = "file:///nonexistent", rev = "{"0" * 40}", sha256 = "{"1" * 64}" }}\n'
    )
    mirror = tmp_path / "mirror"
    assert main(["mirror-sources", str(mirror), str(recipe)]) == 1  # 'bad' cannot be fetched
    out = capsys.readouterr()
    assert sorted(p.name for p in (mirror / "sha256").iterdir()) == sorted([a, b, tree_hash])
    for h in (a, b, tree_hash):
        assert hashlib.sha256((mirror / "sha256" / h).read_bytes()).hexdigest() == h
    assert "error: nonexistent: cannot fetch" in out.err and "3 fetched" in out.err
    # a second run finds everything present and makes no request
    before = len(server.log)
    main(["mirror-sources", str(mirror), str(recipe)])
    assert len(server.log) == before
    assert "3 already present" in capsys.readouterr().err


def test_mirror_sources_of_a_recipe_with_a_broken_binding_is_an_error(tmp_path, capsys):
    """A binding that fails to evaluate could hold sources the mirror would then lack:
    mirror-sources reports it (located) instead of mirroring the rest and exiting 0."""
    pytest.importorskip("kiln.lang")
    recipe = tmp_path / "r.recipe"
    recipe.write_text('package good { build = "ok" }\npackage broken { build = nosuch }\n')
    assert main(["mirror-sources", str(tmp_path / "mirror"), str(recipe)]) == 1
    assert "r.recipe:2:26: unknown name 'nosuch'" in capsys.readouterr().err


def git_repo(tmp_path):
    """A one-commit repository; returns (path, commit id, NAR hash hex of its tree)."""
    import pygit2

    from kiln.store.fetch import fetch_git

    path = tmp_path / "gitrepo"
    r = pygit2.init_repository(str(path))
    tb = r.TreeBuilder()
    tb.insert("file", r.create_blob(b"content\n"), pygit2.GIT_FILEMODE_BLOB)
    sig = pygit2.Signature("t", "t@kiln.invalid", 1700000000, 0)
    rev = str(r.create_commit("HEAD", sig, sig, "m", tb.write(), []))
    fetch_git(str(path), rev, tmp_path / "gitref")
    return path, rev, nar.hash_path(tmp_path / "gitref")[0].hex


def test_prefetch_git_mirror_puts_the_tree_where_fetchgit_looks(capsys, tmp_path):
    """``--git REV --mirror DIR`` printed the hash and wrote nothing to DIR."""
    from kiln.store.fetch import fetch_git
    from kiln.store.hashes import Hash

    path, rev, tree_hex = git_repo(tmp_path)
    mirror = tmp_path / "mirror"
    assert main(["prefetch", "--git", rev, "--mirror", str(mirror), f"file://{path}"]) == 0
    assert capsys.readouterr().out.strip() == tree_hex
    assert (mirror / "sha256" / tree_hex).is_file()
    shutil.rmtree(path)  # only the mirror can serve it now
    fetch_git(
        f"file://{path}",
        rev,
        tmp_path / "again",
        expected=Hash("sha256", bytes.fromhex(tree_hex)),
        mirrors=[str(mirror)],
    )
    assert (tmp_path / "again" / "file").read_bytes() == b"content\n"


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
def test_ctrl_c_does_not_wait_for_downloads_in_flight(server, tmp_path):
    """``kiln build -j 2`` with two fetches stalled on a server: ^C ends the command at
    once (status 130, one line). The fetches run in kiln's own worker threads and cannot
    be cancelled; the command used to wait for them to finish or time out."""
    import os
    import signal
    import sys
    import time

    want = hashlib.sha256(b"never sent").hexdigest()
    (tmp_path / "r.recipe").write_text(
        f'let a = fetchurl {{ url = "{server.url("stallmirror/a")}", sha256 = "{want}" }}\n'
        f'let b = fetchurl {{ url = "{server.url("stallmirror/b")}", sha256 = "{want}x" }}\n'.replace(
            f"{want}x", hashlib.sha256(b"never sent either").hexdigest()
        )
    )
    env = {**os.environ, "KILN_HOME": str(tmp_path / "home"), "KILN_SOURCE_MIRRORS": ""}
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kiln",
            "build",
            "-j",
            "2",
            "--no-substitute",
            str(tmp_path / "r.recipe"),
            "a",
            "b",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while sum(path.startswith("/stallmirror/") for _, path, _ in list(server.log)) < 2:
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.05)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        _out, err = p.communicate(timeout=25)
        took = time.monotonic() - t0
    finally:
        p.kill()
    assert p.returncode == 130 and err.rstrip().endswith("kiln: interrupted"), err
    assert "Traceback" not in err
    assert took < 10, took  # (the stalled server holds a request for 30 s)


def test_sigterm_during_a_prefetch_leaves_nothing_behind(server, tmp_path):
    """Every command unwinds on SIGTERM (a CI cancel, ``timeout``) as on ^C: a prefetch
    left its ``kiln-owned-prefetch-*`` directory with a ``.part`` file in it."""
    import os
    import signal
    import sys
    import time

    server.add("slow", b"x" * 100_000)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "KILN_HOME": str(tmp_path / "home")}
    p = subprocess.Popen(
        [sys.executable, "-m", "kiln", "prefetch", server.url("trickle/slow")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not any(d.name.startswith("kiln-owned-prefetch-") and any(d.iterdir()) for d in tmp.iterdir()):
        assert time.monotonic() < deadline and p.poll() is None, "the download never started"
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 143 and "kiln: terminated" in err, err
    assert list(tmp.iterdir()) == []
