"""Failures after a build's sandbox, on the build loop's bookkeeping thread, fail that
derivation alone (``store/buildcommit.py``): an output whose archive cannot be written
(here: ``ulimit -f``, a real limit on the kiln process), or that the commit refuses (an
object's name taken by a directory), and, under ``-k``, a signing hook that fails, a
hook left behind by an earlier run included. Under ``-k`` each is listed by
``BuildFailures``, what needs it is not attempted, and the rest is built, registered,
printed and rooted; without it the command fails naming the derivation and what failed.
They escaped as one bare error ("File too large") that dropped the whole batch and what
``-k`` had built. Real sandboxed builds (busybox); ``kiln store verify`` is clean after.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store.build import Builder, BuildError, BuildFailures, BuildOptions
from kiln.store.keyfiles import write_secret_key
from kiln.store.localstore import LocalStore
from kiln.store.objects import object_rel_path
from kiln.store.signing import SecretKey, valid_signers
from kiln.store.stagedbuild import Placed, place

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]

#: the kiln process's file size limit (``ulimit -f``) in the archive tests: the sandbox
#: gets none (``sandbox/procstate.py``), so a build writes more, which kiln cannot archive
FSIZE = 4 << 20
BIG = f"head -c {6 << 20} /dev/urandom > $out"  # (random: its archive is no smaller)


def kiln(home: Path, *args: str, fsize: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))

    return subprocess.run(
        [sys.executable, "-m", "kiln", *args],
        env=dict(os.environ, KILN_HOME=str(home)),
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=300,
    )


def _verify_clean(store: LocalStore) -> None:
    r = kiln(store.root, "store", "verify")
    assert r.returncode == 0 and "0 problem(s)" in r.stdout, r.stdout + r.stderr
    assert not list((store.root / "locks").glob("*.hook"))  # no hook left pending


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_an_output_that_cannot_be_archived_fails_its_derivation_alone(store, graph, jobs):
    big, bigd = graph.drv("big", BIG)
    dep, depd = graph.drv("on-big", "cat $in0 > $out", inputs=[big])
    ok, okd = graph.drv("fine", "echo fine > $out")
    r = kiln(store.root, "build", "-k", "-j", jobs, dep, ok, fsize=FSIZE)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    said = f"error: {big}: cannot archive output {bigd.output_path()}: File too large writing its"
    assert said in r.stderr and "ulimit -f" in r.stderr, r.stderr
    assert f"1 derivation failed (reported above): {big}; 1 not attempted" in r.stderr, r.stderr
    assert r.stdout.split() == [okd.output_path()]  # what was built is printed and rooted
    assert os.path.realpath(store.root / "gcroots" / "fine") == str(store.real_path(okd.output_path()))
    assert not store.is_valid(bigd.output_path()) and not store.is_valid(depd.output_path())
    _verify_clean(store)


def test_without_keep_going_the_archive_failure_names_the_derivation(store, graph):
    big, bigd = graph.drv("big", BIG)
    dep, depd = graph.drv("on-big", "cat $in0 > $out", inputs=[big])
    r = kiln(store.root, "build", dep, fsize=FSIZE)
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert f"error: {big}: cannot archive output {bigd.output_path()}: File too large" in r.stderr, r.stderr
    assert not store.is_valid(bigd.output_path()) and not store.is_valid(depd.output_path())
    _verify_clean(store)
    r = kiln(store.root, "build", dep)  # without the limit: built
    assert r.returncode == 0 and r.stdout.split() == [depd.output_path()], r.stderr


def _object_name_taken(store: LocalStore, tmp_path: Path, content: str) -> Path:
    """Make the object of a file holding ``content`` impossible to put in place: a
    directory (not empty) at its name in ``objects/`` (its hash found by adding the same
    file to another store: an object depends only on the NAR)."""
    other = LocalStore.open(tmp_path / "other")
    f = tmp_path / "same-content"
    f.write_text(content)
    file_hash = other.query(other.add_path(f, "same").path).file_hash
    other.close()
    taken = store.objects / object_rel_path(file_hash)
    taken.mkdir(parents=True)
    (taken / "odd").write_text("not an object\n")
    return taken


def test_an_output_the_commit_refuses_fails_its_derivation_alone(store, graph, tmp_path):
    taken = _object_name_taken(store, tmp_path, "refused\n")
    x, xd = graph.drv("refused", "echo refused > $out")
    dep, depd = graph.drv("on-refused", "cat $in0 > $out", inputs=[x])
    ok, okd = graph.drv("fine", "echo fine > $out")
    said: list[str] = []
    b = Builder(store, BwrapExecutor(), BuildOptions(keep_going=True), say=said.append)
    with pytest.raises(BuildFailures) as e:
        b.realise([dep, ok])
    assert list(e.value.failed) == [x] and e.value.skipped == [dep], str(e.value)
    assert [r.drv_path for r in e.value.results] == [ok] and store.is_valid(okd.output_path())
    assert any(m.startswith(f"error: {x}: cannot register {xd.output_path()}") for m in said), said
    assert not store.is_valid(xd.output_path()) and not store.is_valid(depd.output_path())
    with pytest.raises(BuildError) as e:  # without -k: the run fails, naming it
        Builder(store, BwrapExecutor(), BuildOptions(), say=lambda m: None).realise([dep])
    assert e.value.drv_path == x and f"{x}: cannot register {xd.output_path()}" in str(e.value)
    _verify_clean(store)
    shutil.rmtree(taken)
    r = kiln(store.root, "build", dep)  # the odd directory gone: built
    assert r.returncode == 0 and r.stdout.split() == [depd.output_path()], r.stderr


def test_a_batch_whose_commit_fails_is_committed_one_derivation_at_a_time(store, graph, tmp_path):
    """The bookkeeping thread commits every output placed since its last commit in one
    transaction; one refused output failed them all (and raised a bare ``OSError``).
    Here three derivations' outputs are placed as the build loop places them, the first
    refused at commit, the second built on it: only the third is registered."""
    _object_name_taken(store, tmp_path, "refused\n")
    a, ad = graph.drv("refused", "echo refused > $out")
    b, bd = graph.drv("on-it", "echo $in0 > $out", inputs=[a])
    c, cd = graph.drv("independent", "echo c > $out")
    said: list[str] = []
    builder = Builder(store, BwrapExecutor(), BuildOptions(keep_going=True), say=said.append)
    for name, drv_path, drv, refs, text in (
        ("a", a, ad, [], "refused\n"),
        ("b", b, bd, [ad.output_path()], f"{ad.output_path()}\n"),
        ("c", c, cd, [], "c\n"),
    ):
        out = tmp_path / f"built-{name}"
        out.write_text(text)
        p = place(store, drv.output_path(), out, refs, drv_path, tmp_path / f"{name}.object")
        assert isinstance(p, Placed)
        builder._pending.add([p], contextlib.ExitStack())
    with pytest.raises(BuildError) as e:
        builder._commit_pending()
    assert e.value.drv_path == a and "cannot register" in str(e.value)
    assert list(builder._late_failures()) == [a] and said == [f"error: {e.value}"]
    assert store.is_valid(cd.output_path())
    assert not store.is_valid(ad.output_path()) and not store.is_valid(bd.output_path())
    assert not builder._pending
    builder._close_bookkeeping_store()


def _refusing_signer(tmp_path: Path) -> tuple[list[str], SecretKey]:
    """``--signer-cmd`` options of a signer that refuses whatever names ``-stubborn``."""
    key = SecretKey.generate("hsm-1")
    kf = tmp_path / "hsm.sec"
    write_secret_key(kf, key)
    signer = tmp_path / "signer.py"
    signer.write_text(
        textwrap.dedent(f"""\
        import base64, sys
        import nacl.signing
        from kiln.store.keyfiles import load_secret_key
        data = sys.stdin.buffer.read()
        if b"-stubborn" in data:
            sys.exit("the signing service refused")
        sk = load_secret_key({str(kf)!r})
        print(base64.b64encode(nacl.signing.SigningKey(sk.key[:32]).sign(data).signature).decode())
        """)
    )
    return ["--signer-cmd", f"{sys.executable} {signer}", "--signer-key", key.public().to_text()], key


def test_keep_going_lists_a_failing_hook_and_prints_what_was_built(store, graph, tmp_path):
    sign, key = _refusing_signer(tmp_path)
    st, std = graph.drv("stubborn", "echo s > $out")
    ok, okd = graph.drv("fine", "echo fine > $out")
    r = kiln(store.root, "build", "-k", st, ok, *sign)
    assert r.returncode == 1, r.stderr
    assert r.stdout.split() == [okd.output_path()], r.stderr
    assert f"error: cannot sign {st}'s outputs" in r.stderr and "the signing service refused" in r.stderr
    assert f"1 derivation failed (reported above): {st}" in r.stderr, r.stderr
    assert valid_signers(store.query(okd.output_path()), [key.public()]) == {"hsm-1"}
    assert store.is_valid(std.output_path())  # built and valid, unsigned: its hook is left behind
    assert list((store.root / "locks").glob("*.hook"))


def test_keep_going_lists_a_left_behind_hook_that_fails_again(store, graph, tmp_path):
    """A hook an earlier run left (it failed there) is run again by the next build that
    reaches its path; failing again under ``-k`` it is one more failure: the outputs
    built meanwhile are printed and rooted (it raised before that, and they were not)."""
    sign, key = _refusing_signer(tmp_path)
    st, std = graph.drv("stubborn", "echo s > $out")
    r = kiln(store.root, "build", st, *sign)
    assert r.returncode == 1 and "the signing service refused" in r.stderr, r.stderr
    ok, okd = graph.drv("fine", "echo fine > $out")
    r = kiln(store.root, "build", "-k", st, ok, *sign)
    assert r.returncode == 1, r.stderr
    assert "its build stopped before that" in r.stderr, r.stderr
    assert f"error: cannot sign {st}'s outputs, left unsigned by an earlier build" in r.stderr, r.stderr
    assert f"1 derivation failed (reported above): {st}" in r.stderr, r.stderr
    assert r.stdout.split() == [okd.output_path()], r.stderr
    assert os.path.realpath(store.root / "gcroots" / "fine") == str(store.real_path(okd.output_path()))
    assert valid_signers(store.query(okd.output_path()), [key.public()]) == {"hsm-1"}
    marker = store.root / "locks" / f"{std.output_path().split('/')[-1][:32]}.hook"
    assert marker.is_file()  # still left, for the next run


def test_a_directory_at_a_hook_markers_name_is_not_a_marker(store, graph):
    """Something odd in ``locks/``: a directory where a hook marker would be. A build
    cannot make its marker there (a warning), and a later build of the valid path took
    it for a marker left behind and failed ("Is a directory")."""
    c, cd = graph.drv("odd", "echo odd > $out")
    (store.root / "locks").mkdir(exist_ok=True)
    (store.root / "locks" / f"{cd.output_path().split('/')[-1][:32]}.hook").mkdir()
    r = kiln(store.root, "build", c)
    assert r.returncode == 0 and "cannot mark the signing hook" in r.stderr, r.stderr
    r = kiln(store.root, "build", c)
    assert r.returncode == 0 and r.stdout.split() == [cd.output_path()], r.stderr
    assert "its build stopped before that" not in r.stderr
