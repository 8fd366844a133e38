"""`kiln build` options end to end: an external signer command (KMS/HSM stand-in) and
--require-clean against a real git repository."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pygit2
import pytest
from clikit import said_until

from kiln.store import attestations, dsse
from kiln.store.keyfiles import write_secret_key
from kiln.store.signing import SecretKey, valid_signers

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]


def kiln(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, KILN_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args], env=env, capture_output=True, text=True, cwd=cwd
    )


def test_external_signer_signs_outputs_and_provenance(store, graph, tmp_path):
    key = SecretKey.generate("hsm-1")
    kf = tmp_path / "outside-the-builder" / "hsm.sec"
    kf.parent.mkdir()
    write_secret_key(kf, key)
    signer = tmp_path / "signer.py"
    signer.write_text(
        textwrap.dedent(f"""\
        import base64, sys
        import nacl.signing
        from kiln.store.keyfiles import load_secret_key
        sk = load_secret_key({str(kf)!r})
        sig = nacl.signing.SigningKey(sk.key[:32]).sign(sys.stdin.buffer.read()).signature
        print(base64.b64encode(sig).decode())
        """)
    )
    a, ad = graph.drv("signed", "echo signed > $out")
    r = kiln(
        store.root,
        "build",
        a,
        "--signer-cmd",
        f"{sys.executable} {signer}",
        "--signer-key",
        key.public().to_text(),
    )
    assert r.returncode == 0, r.stderr
    out = ad.output_path()
    assert valid_signers(store.query(out), [key.public()]) == {"hsm-1"}
    env = attestations.read(store, out, "provenance")
    dsse.verify(env, {"hsm-1": key.public().key}, 1)
    assert not (store.root / "keys" / "default.sec").exists()  # no key was made on the builder


def _recipe_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "x.recipe").write_text('package x {\n  build = "echo > $out"\n}\n')
    r = pygit2.init_repository(str(repo))
    r.index.add_all()
    r.index.write()
    sig = pygit2.Signature("t", "t@example.invalid", 0, 0)
    r.create_commit("HEAD", sig, sig, "init", r.index.write_tree(), [])
    return repo


def test_require_clean_refuses_a_dirty_recipe_repository(store, tmp_path):
    repo = _recipe_repo(tmp_path)
    (repo / "x.recipe").write_text('package x {\n  build = "echo changed > $out"\n}\n')
    r = kiln(store.root, "build", "--require-clean", str(repo / "x.recipe"))
    assert r.returncode == 1 and "--require-clean" in r.stderr and "uncommitted" in r.stderr


def test_require_clean_refuses_outside_git(store, tmp_path):
    (tmp_path / "loose").mkdir()
    f = tmp_path / "loose" / "x.recipe"
    f.write_text('package x {\n  build = "echo > $out"\n}\n')
    r = kiln(store.root, "build", "--require-clean", str(f))
    assert r.returncode == 1 and "not in a git repository" in r.stderr


def test_require_clean_accepts_a_clean_repository(store, tmp_path):
    repo = _recipe_repo(tmp_path)
    r = kiln(store.root, "build", "--require-clean", str(repo / "x.recipe"))
    # the package has no toolchain, so its build fails in the sandbox: but it got that far
    assert "--require-clean" not in r.stderr and "builder for" in r.stderr


def test_provenance_lists_the_inputs_with_digests(store, graph):
    a, ad = graph.drv("p", "echo p > $out")
    r = kiln(store.root, "build", a)
    assert r.returncode == 0, r.stderr
    env = attestations.read(store, ad.output_path(), "provenance")
    st = json.loads(env.payload)
    assert st["predicate"]["runDetails"]["builder"]["id"]
    from kiln.version import full_version

    # (which kiln built it: the release and a digest of its source, cli/version.py)
    assert st["predicate"]["runDetails"]["builder"]["version"] == {"kiln": full_version()}
    assert any(
        d["name"].endswith("busybox-static")
        for d in st["predicate"]["buildDefinition"]["resolvedDependencies"]
    )


def test_a_dependency_s_provenance_names_the_attribute_built_and_its_own_drv(store, graph):
    """A dependency built on the way recorded its derivation's name as the attribute
    (``glibc-runtime``, which the recipe does not define): an auditor re-deriving it from
    ``recipeFile`` and ``attribute`` could not. It names the requested attribute whose
    closure holds it; ``parameters.drv`` says which derivation."""
    dep, dd = graph.drv("dep-part", "echo dep > $out")
    top, td = graph.drv("top", "cat $in0 > $out", [dep])
    r = kiln(store.root, "build", top)
    assert r.returncode == 0, r.stderr

    def ext(d) -> dict:  # noqa: ANN001
        st = json.loads(attestations.read(store, d.output_path(), "provenance").payload)
        return st["predicate"]["buildDefinition"]["externalParameters"]

    assert ext(td)["attribute"] == "top" and ext(td)["parameters"]["drv"] == top
    assert ext(dd)["attribute"] == "top" and ext(dd)["parameters"]["drv"] == dep


def test_check_rounds_makes_every_round(store, graph):
    """``--check --rounds N`` compared once, silently ignoring N."""
    a, _ = graph.drv("same", "echo same > $out")
    assert kiln(store.root, "build", a).returncode == 0
    for args, checks in ((("--rounds", "4"), 3), (("--check", "--rounds", "4"), 3), (("--check",), 1)):
        r = kiln(store.root, "build", a, *args)
        assert r.returncode == 0, r.stderr
        assert sum(line.startswith("checking") for line in r.stderr.splitlines()) == checks, (args, r.stderr)


def test_vary_changes_the_core_count_the_first_build_used(store, graph):
    """A first build made with --cores 1 was 'varied' with KILN_CORES=1 again, and a build
    whose output depends on the core count passed. The count its provenance records is
    avoided now (and so is the count this machine would use)."""
    a, _ = graph.drv("cores", 'echo "cores=$KILN_CORES" > $out')
    r = kiln(store.root, "build", "--cores", "1", a)
    assert r.returncode == 0, r.stderr
    r = kiln(store.root, "build", "--check", "--vary", a)
    assert "KILN_CORES=1;" not in r.stderr, r.stderr
    assert r.returncode == 1 and "may not be deterministic" in r.stderr, r.stderr


def test_vary_only_from_the_command_line(store, graph):
    """``kiln build --check --vary-only NAMES`` varies only those, and says what it left."""
    a, _ = graph.drv("cores-only", 'echo "cores=$KILN_CORES" > $out')
    assert kiln(store.root, "build", "--cores", "2", a).returncode == 0
    r = kiln(store.root, "build", "--check", "--vary-only", "umask,order", a)
    assert r.returncode == 0, r.stderr
    assert "not asked for (--vary-only): dirs, cores, cpus, clock" in r.stderr, r.stderr
    r = kiln(store.root, "build", "--check", "--vary-only", "cores", a)
    assert r.returncode == 1 and "the rebuild varied: cores" in r.stderr, r.stderr


@pytest.mark.skipif(
    shutil.which("disorderfs") is None or not os.path.exists("/dev/fuse"), reason="disorderfs not usable"
)
def test_sigterm_during_a_varied_check_leaves_nothing_behind(store, graph):
    """SIGTERM (a CI cancel, ``timeout``) used to end kiln on the spot: the check's two
    disorderfs mounts and their daemons stayed up and its scratch tree stayed for good.
    Now it unwinds as Ctrl-C does and exits 143."""
    a, _ = graph.drv("slow", "mkdir $out; echo hi > $out/f; sleep 8")
    assert kiln(store.root, "build", a).returncode == 0
    env = dict(os.environ, KILN_HOME=str(store.root))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln", "build", "--check", "--vary", a],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    import time

    root = str(store.root)

    def mounted() -> bool:
        return root in Path("/proc/mounts").read_text()

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not mounted():
        time.sleep(0.1)  # until the check is inside its disorderfs mounts
    time.sleep(1.0)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err, err
    assert not mounted()
    assert not list((store.root / "tmp").glob("vary-*"))


def test_sighup_during_a_build_unwinds_like_ctrl_c(store, graph):
    """The terminal or ssh session going away (SIGHUP) kills the sandbox and removes the
    build's scratch directory, as Ctrl-C does (it was left for GC); exit 129."""
    import time

    a, _ = graph.drv("hup", "sleep 20; echo hi > $out")
    env = dict(os.environ, KILN_HOME=str(store.root))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln", "build", a],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: the runner may have SIGHUP ignored, which kiln respects (nohup)
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    said = said_until(proc.stderr, "building", 60)  # (its handlers are in place once it builds)
    time.sleep(1)  # inside the 20 s sandbox
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    err = said + err
    assert proc.returncode == 129 and "terminated" in err, err
    assert not list((store.root / "tmp").glob("build-*"))


def test_a_check_keeps_the_builds_log(store, graph):
    """A check saved its log over the build's: ``kiln log`` then showed the rebuild's."""
    a, _ = graph.drv("logged", 'echo "umask=$(umask)"; echo x > $out')
    assert kiln(store.root, "build", a).returncode == 0
    assert kiln(store.root, "build", "--check", "--vary", a).returncode == 0
    build_log = kiln(store.root, "log", a)
    assert build_log.returncode == 0 and "umask=0022" in build_log.stdout, build_log.stdout
    check_log = kiln(store.root, "log", "--check", a)
    assert check_log.returncode == 0 and "umask=0077" in check_log.stdout, check_log.stdout


def test_rebuild_of_an_output_whose_sibling_was_collected(store, graph):
    """A GC that collected an unrooted sibling output (``dev``) made every rebuild of
    ``out`` fail, after the whole rebuild. Now ``out`` is compared and ``dev`` skipped."""
    a, d = graph.drv("multi", "mkdir $out $dev; echo a > $out/a; echo b > $dev/b", outputs=("out", "dev"))
    assert kiln(store.root, "build", a).returncode == 0
    out, dev = d.output_path("out"), d.output_path("dev")
    for root in (store.root / "gcroots").iterdir():
        if os.readlink(root).endswith(dev.rsplit("/", 1)[1]):
            root.unlink()
    # (the store's default keeps every output of a live .drv)
    assert kiln(store.root, "store", "gc", "--no-keep-outputs").returncode == 0
    assert not store.is_valid(dev) and store.is_valid(out)
    r = kiln(store.root, "rebuild", out)
    assert r.returncode == 0 and f"{out}: reproduced" in r.stdout, (r.stdout, r.stderr)
    assert f"not comparing {dev}" in r.stderr


def test_keep_going_prints_and_roots_what_was_built(store, graph):
    """``kiln build -k``: the failure is reported as it happens, the other target is
    still built, printed and rooted, and the command fails naming the failed build."""
    boom, _ = graph.drv("boom", "echo failing; exit 3")
    ok, okd = graph.drv("fine", "echo fine > $out")
    r = kiln(store.root, "build", "-k", boom, ok)
    assert r.returncode == 1, r.stderr
    assert r.stdout.split() == [okd.output_path()]
    assert "exit status 3" in r.stderr and f"1 derivation failed (reported above): {boom}" in r.stderr
    assert os.path.realpath(store.root / "gcroots" / "fine") == str(store.real_path(okd.output_path()))
    assert not (store.root / "gcroots" / "boom").exists()
    # without -k the first failure ends the command: nothing is printed
    r = kiln(store.root, "build", boom, ok)
    assert r.returncode == 1 and r.stdout == "" and "exit status 3" in r.stderr


def test_build_json_names_each_target_and_whether_it_was_realised(store, graph):
    """``kiln build --json``: one JSON object on stdout, ``ok`` and ``targets`` (a CI
    script could not tell which of ``-k``'s targets failed: only the built outputs were
    printed, unnamed)."""
    boom, _ = graph.drv("boom2", "exit 3")
    ok, okd = graph.drv("fine2", "echo fine > $out")
    r = kiln(store.root, "build", "-k", "--json", boom, ok)
    assert r.returncode == 1, r.stderr
    top = json.loads(r.stdout)
    assert top["ok"] is False
    doc = top["targets"]
    assert [(d["drvPath"], d["realised"]) for d in doc] == [(boom, False), (ok, True)]
    assert doc[1]["outputs"] == {"out": okd.output_path()} and set(doc[0]) == {
        "attribute",
        "drvPath",
        "outputs",
        "realised",
    }
    r = kiln(store.root, "build", "--json", ok)  # already valid: realised, nothing built
    top = json.loads(r.stdout)
    assert r.returncode == 0 and top["ok"] is True and top["targets"][0]["realised"] is True, r.stderr


def test_a_build_of_a_valid_root_runs_the_hook_its_builder_left(store, graph, tmp_path):
    """``kiln build`` of a root whose outputs are all valid builds nothing, but a signing
    hook its builder left undone (killed after the commit: unsigned, a free marker)
    is run there, not only when something else needs building."""
    key = SecretKey.generate("builder-1")
    kf = tmp_path / "k.sec"
    write_secret_key(kf, key)
    a, ad = graph.drv("left", "echo left > $out")
    out = ad.output_path()
    assert kiln(store.root, "build", a, "--sign-key", str(kf)).returncode == 0
    # as if killed between the commit and the hook: no signature, no provenance, a marker
    with store.conn:
        store.conn.execute("DELETE FROM sigs WHERE path = ?", (out,))
    attestations.remove(store, out)
    marker = store.root / "locks" / f"{out.split('/')[-1][:32]}.hook"
    marker.touch()
    r = kiln(store.root, "build", a, "--sign-key", str(kf))
    assert r.returncode == 0 and r.stdout.strip() == out, r.stderr
    assert "its build stopped before that" in r.stderr
    assert valid_signers(store.query(out), [key.public()]) == {"builder-1"}
    assert attestations.list(store, out) == ["provenance"] and not marker.exists()


def test_a_sign_key_given_for_outputs_valid_already_is_said_not_silently_unused(store, graph, tmp_path):
    """A release build with ``--sign-key`` of outputs built before (by the store's own key)
    built nothing and signed nothing, exit 0 and not a word: the release shipped unsigned
    by its key. The exit status stays 0; a warning names the outputs and the fix."""
    a, ad = graph.drv("before", "echo before > $out")
    out = ad.output_path()
    assert kiln(store.root, "build", a).returncode == 0  # (the store's default key)
    key = SecretKey.generate("release-1")
    kf = tmp_path / "release.sec"
    write_secret_key(kf, key)
    r = kiln(store.root, "build", a, "--sign-key", str(kf))
    assert r.returncode == 0 and r.stdout.strip() == out, r.stderr
    assert f"did not sign them with release-1: {out}" in r.stderr and "kiln store sign" in r.stderr, r.stderr
    assert not valid_signers(store.query(out), [key.public()])
    # signed by that key already: nothing to say
    assert kiln(store.root, "store", "sign", "--key", str(kf), out).returncode == 0
    r = kiln(store.root, "build", a, "--sign-key", str(kf))
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


def test_require_clean_on_outputs_valid_already_says_their_provenance_is_older(store, tmp_path):
    """--require-clean vouches for this commit's provenance; outputs built before are not
    built again, so their provenance may name another commit: said, not silent."""
    repo = _recipe_repo(tmp_path)
    out = kiln(store.root, "path", str(repo / "x.recipe"), "x").stdout.strip()
    (tmp_path / "built-before").write_text("\n")  # (as an earlier build of x made it)
    store.register_built(out, tmp_path / "built-before", [], None)
    r = kiln(store.root, "build", "--require-clean", str(repo / "x.recipe"), "x")
    assert r.returncode == 0 and r.stdout.strip() == out, r.stderr
    assert "--require-clean: 1 output(s) were valid already" in r.stderr, r.stderr


def test_a_relative_physical_drv_path_builds(store, graph):
    a, ad = graph.drv("rel", "echo rel > $out")
    # (from inside the store dir: ``python -m`` would take the root's kiln/ for the package)
    rel = os.path.relpath(store.real_path(a), store.real_store.parent)
    r = kiln(store.root, "build", rel, cwd=store.real_store.parent)
    assert r.returncode == 0 and r.stdout.strip() == ad.output_path(), r.stderr


def test_max_log_size_stops_a_chatty_build(store, graph):
    a, _ = graph.drv("chatty", "yes 0123456789 | head -c 100000; echo > $out")
    r = kiln(store.root, "build", a, "--max-log-size", "4096")
    assert r.returncode == 1 and "log reached its size limit (4096 bytes)" in r.stderr, r.stderr
    assert kiln(store.root, "build", a).returncode == 0  # under the default 64 MiB


def test_a_build_too_big_to_start_is_named(store, tmp_path):
    """A field over Linux's limit for one variable is refused before the sandbox starts
    (``sandbox/execsize.py``), and the error names the derivation that could not start:
    with -j, several builds run at once."""
    f = tmp_path / "big.recipe"
    f.write_text('package big {\n  blob = "' + "a" * 200_000 + '"\n  build = "echo > $out"\n}\n')
    r = kiln(store.root, "build", str(f), "big")
    assert r.returncode == 1, r.stderr
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("error:"))
    assert line.startswith("error: building /kiln/store/"), line
    assert "-big.drv: the build's environment variable 'blob' is too large" in line
