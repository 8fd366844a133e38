"""kiln build substitutes from a real `kiln serve` on 127.0.0.1 instead of building,
only with enough trusted signatures, and treats an unreachable registry as a miss."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from attestkit import signed_provenance
from buildkit import APPLETS, BUSYBOX, Graph
from clikit import line_within

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store.build import Builder, BuildOptions
from kiln.store.localstore import LocalStore
from kiln.store.signing import SecretKey, sign_info

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _store_with_busybox(root: Path, tmp: Path) -> tuple[LocalStore, str]:
    store = LocalStore.open(root)
    d = tmp / f"bb-{root.name}"
    (d / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, d / "bin" / "busybox")
    for a in APPLETS:
        os.symlink("busybox", d / "bin" / a)
    return store, store.add_path(d, "busybox-static").path


def _serve(*args: str) -> tuple[subprocess.Popen, str]:
    """``kiln serve ARGS`` on a free local port, once it listens: (process, URL). Port 0:
    the server binds one itself and says which (a port picked here could be taken by
    another test's process before the server binds it)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln", "serve", *args, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = line_within(proc.stdout, 60)
    assert "listening on http://127.0.0.1:" in line, line
    return proc, line.split("listening on ", 1)[1].strip()


@pytest.fixture
def served(tmp_path):
    """A builder store with a two-derivation chain built and signed, served over HTTP;
    a second, empty store with the same derivations written into it."""
    key = SecretKey.generate("builder-1")
    a_store, bb = _store_with_busybox(tmp_path / "a", tmp_path)
    ga = Graph(a_store, bb)
    lib, _ = ga.drv("lib", "mkdir $out; echo lib > $out/data")
    app, app_drv = ga.drv("app", "mkdir $out; echo $in0 > $out/uses", inputs=[lib])
    from kiln.store import attestations

    def provenance(drv_path, drv, outputs, started, finished, store):
        for out in outputs.values():
            env = signed_provenance(store, out, key, finished=finished, started=started)
            attestations.write(store, out, "provenance", env)

    Builder(a_store, BwrapExecutor(), BuildOptions(), after_build=provenance, say=lambda m: None).realise(
        [app]
    )
    for p in a_store.closure([app_drv.output_path()]):
        a_store.add_signatures(p, [sign_info(a_store.query(p), key)])
    proc, url = _serve("--store", str(tmp_path / "a"))
    b_store, bb2 = _store_with_busybox(tmp_path / "b", tmp_path)
    assert bb2 == bb
    gb = Graph(b_store, bb)
    gb.drv("lib", "mkdir $out; echo lib > $out/data")
    app_b, _ = gb.drv("app", "mkdir $out; echo $in0 > $out/uses", inputs=[next(iter(gb.drvs))])
    assert app_b == app
    yield url, key, app, app_drv, b_store, tmp_path / "b"
    proc.terminate()
    proc.wait(timeout=10)
    a_store.close()


def _build(home: Path, drv: str, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KILN_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "kiln", "build", drv, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_substitutes_signed_closure_instead_of_building(served):
    url, key, app, app_drv, b_store, home = served
    r = _build(home, app, "--substituter", url, "--trusted-key", key.public().to_text())
    assert r.returncode == 0, r.stderr
    assert "building" not in r.stderr
    # the log says where the paths came from (it said nothing when all were substituted)
    assert re.search(r"^substituted 2 path\(s\), [0-9.]+ MiB, from http://", r.stderr, re.M), r.stderr
    out = app_drv.output_path()
    assert r.stdout.strip() == out
    info = b_store.query(out)
    assert info is not None and len(info.references) == 1 and info.sigs
    assert b_store.verify().ok
    # the builder's provenance travelled with the path
    from kiln.store import attestations

    assert attestations.read(b_store, out, "provenance") is not None


def test_no_substitute_builds_locally_whatever_the_environment_says(served):
    url, key, app, app_drv, b_store, home = served
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "build", app, "--no-substitute", "--substituter", url],
        env=dict(
            os.environ, KILN_HOME=str(home), KILN_SUBSTITUTERS=url, KILN_TRUSTED_KEYS=key.public().to_text()
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("building") == 2


def test_sigs_needed_0_substitutes_but_says_nothing_is_checked(served):
    url, _, app, app_drv, b_store, home = served
    r = _build(home, app, "--substituter", url, "--sigs-needed", "0")
    assert r.returncode == 0 and "building" not in r.stderr, r.stderr
    assert "warning: --sigs-needed 0: substitutes are fetched without checking any signature" in r.stderr


def test_untrusted_signature_means_build_locally(served):
    url, _, app, app_drv, b_store, home = served
    other = SecretKey.generate("someone-else").public().to_text()
    r = _build(home, app, "--substituter", url, "--trusted-key", other)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("building") == 2
    # and says why, instead of quietly building what the registry has
    assert "narinfo(s) refused, those paths are built instead" in r.stderr, r.stderr
    assert b_store.query(app_drv.output_path()).sigs != ()  # signed by the local build key instead


def test_unreachable_registry_is_a_miss(served):
    _, key, app, app_drv, b_store, home = served
    dead = f"http://127.0.0.1:{_port()}"
    missing = home.parent / "no-registry-here"  # a mistyped directory: a miss, and left alone
    t0 = time.monotonic()
    r = _build(
        home,
        app,
        "--substituter",
        dead,
        "--substituter",
        f"file://{missing}",
        "--trusted-key",
        key.public().to_text(),
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("building") == 2
    assert time.monotonic() - t0 < 30
    assert not missing.exists()
    assert f"warning: substituter {dead} not used:" in r.stderr, r.stderr


def test_a_private_registry_is_read_with_its_token(served, tmp_path):
    """``KILN_SUBSTITUTER_TOKENS`` (or, here, the file ``KILN_SUBSTITUTER_TOKENS_FILE``
    names) gives each substituter URL its read token; without one a ``--private``
    registry answers 401, a miss, and the build runs locally."""
    url, key, app, app_drv, b_store, home = served
    reg = tmp_path / "private-reg"

    def kiln(*args: str, env_home: Path = tmp_path / "a", **env) -> subprocess.CompletedProcess:
        e = dict(os.environ, KILN_HOME=str(env_home), **env)
        return subprocess.run(
            [sys.executable, "-m", "kiln", *args], env=e, capture_output=True, text=True, timeout=120
        )

    r = kiln("push", app_drv.output_path(), "--to", f"file://{reg}")
    assert r.returncode == 0, r.stderr
    token = kiln("registry", "token", "create", "--scope", "read", "--dir", str(reg)).stdout.strip()
    srv, private = _serve("--dir", str(reg), "--private")
    try:
        trust = ("--substituter", private, "--trusted-key", key.public().to_text())
        tokens = tmp_path / "tokens"
        tokens.write_text(f"# read tokens\n{private}={token}\nhttp://elsewhere=kiln_x_y\n")
        tokens.chmod(0o600)
        r = kiln("build", app, *trust, env_home=home, KILN_SUBSTITUTER_TOKENS_FILE=str(tokens))
        assert r.returncode == 0, r.stderr
        assert "building" not in r.stderr and r.stdout.strip() == app_drv.output_path()
        assert b_store.query(app_drv.output_path()).sigs
    finally:
        srv.terminate()
        srv.wait(timeout=10)


def test_a_substitution_that_fails_midway_builds_instead(served):
    """A registry that answers for the closure but whose object turns out bad (or dies
    mid-download) is a failed substitution: a warning, then a local build. (It was an
    internal NameError: the error handler referred to a name the function bound only
    on other branches.)"""
    _url, key, app, app_drv, b_store, home = served
    reg = home.parent / "reg"
    out = app_drv.output_path()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kiln",
            "push",
            "--store",
            str(home.parent / "a"),
            out,
            "--to",
            f"file://{reg}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    for nar in (reg / "nar").iterdir():  # every object: whichever comes first fails
        data = bytearray(nar.read_bytes())
        data[len(data) // 2] ^= 0xFF
        nar.unlink()
        nar.write_bytes(bytes(data))
    r = _build(home, app, "--substituter", f"file://{reg}", "--trusted-key", key.public().to_text())
    assert r.returncode == 0, r.stderr
    assert "warning: substitution failed, building instead" in r.stderr, r.stderr
    assert r.stdout.strip() == out and b_store.verify().ok
