"""Attestations of the paths ``kiln build`` substitutes are judged as ``kiln copy --to
store`` judges them (``cli/buildglue``, ``registry/attest_fetch``): one tampered with
on the registry (a trusted key's name on a signature that does not verify, a payload
edited under its signature) used to cost a warning and exit 0; now the build goes on
(the substituted path, vouched for by its own signature, is used and the rest is
built), its outputs are printed and rooted, and the command exits 1 naming the path,
the kind and why. One signed by a key unknown here is still a warning, and
``--attester-key`` admits a CI attester's as ``kiln copy --attester-key`` does.

Real everything: a builder store whose outputs were built in bubblewrap, pushed to a
registry directory served by ``kiln serve``, changed on disk as whoever held the
directory could, and a real ``kiln build`` of the same derivations in another store."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from attestkit import signed_provenance
from buildkit import APPLETS, BUSYBOX, Graph

from kiln.registry import layout
from kiln.registry.attest_transfer import rebuild_listing
from kiln.registry.client import open_client
from kiln.registry.push import push
from kiln.registry.storage import FileStorage
from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store import attestations, intoto
from kiln.store.build import Builder, BuildOptions
from kiln.store.dsse import Ed25519Signer, keyid
from kiln.store.keyfiles import write_public_key
from kiln.store.localstore import LocalStore
from kiln.store.paths import StorePath
from kiln.store.signing import SecretKey, sign_info

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]

LIB = "mkdir $out; echo lib > $out/data"
APP = "mkdir $out; echo $in0 > $out/uses"


def _store_with_busybox(root: Path, tmp: Path) -> tuple[LocalStore, str]:
    store = LocalStore.open(root)
    d = tmp / f"bb-{root.name}"
    (d / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, d / "bin" / "busybox")
    for a in APPLETS:
        os.symlink("busybox", d / "bin" / a)
    return store, store.add_path(d, "busybox-static").path


@dataclass
class Setup:
    key: SecretKey
    attester: SecretKey
    lib: str  # the output paths
    app: str
    app_drv: str
    reg: Path
    tmp: Path

    def new_home(self, name: str) -> Path:
        """A store holding the same derivations, nothing built: where ``kiln build`` runs."""
        store, bb = _store_with_busybox(self.tmp / name, self.tmp)
        with store:
            g = Graph(store, bb)
            lib, _ = g.drv("lib", LIB)
            assert g.drv("app", APP, inputs=[lib])[0] == self.app_drv
        return self.tmp / name

    def hp(self, path: str) -> str:
        return path.rsplit("/", 1)[1][:32]

    def edit(self, path: str, kind: str, change: Callable[[dict], None]) -> None:
        """Change ``path``'s ``kind`` envelope in the registry directory, its listing
        with it (so the file matches its listing: only its signature tells)."""
        f = self.reg / layout.att_key(self.hp(path), kind)
        env = json.loads(f.read_bytes())
        change(env)
        f.write_text(json.dumps(env))
        rebuild_listing(FileStorage(self.reg), self.hp(path))

    def pub(self, sk: SecretKey) -> str:
        f = self.tmp / f"{sk.name}.pub"
        if not f.exists():
            write_public_key(f, sk.public())
        return str(f)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """``lib`` <- ``app`` built in store ``a`` with provenance signed by the build key
    (which signs the paths too) and an SBOM of ``lib`` signed by an attester key; only
    ``lib`` pushed to registry directory ``reg`` (so a build of ``app`` substitutes
    ``lib`` and builds ``app``); store ``b`` holds the same derivations."""
    key, attester = SecretKey.generate("builder-1"), SecretKey.generate("ci-attester-1")
    a_store, bb = _store_with_busybox(tmp_path / "a", tmp_path)
    ga = Graph(a_store, bb)
    lib_drv, lib_d = ga.drv("lib", LIB)
    app_drv, app_d = ga.drv("app", APP, inputs=[lib_drv])

    def provenance(drv_path, drv, outputs, started, finished, store):  # noqa: ANN001, ANN202
        for out in outputs.values():
            env = signed_provenance(store, out, key, finished=finished, started=started)
            attestations.write(store, out, "provenance", env)

    Builder(a_store, BwrapExecutor(), BuildOptions(), after_build=provenance, say=lambda m: None).realise(
        [app_drv]
    )
    lib, app = lib_d.output_path(), app_d.output_path()
    for p in (lib, app):
        a_store.add_signatures(p, [sign_info(a_store.query(p), key)])
    doc = {"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1}
    subject = [intoto.subject(StorePath.parse(lib).base, a_store.query(lib).nar_hash.hex)]
    sbom = attestations.sign(
        intoto.statement(subject, intoto.CYCLONEDX_TYPE, doc), [Ed25519Signer(attester.key)]
    )
    attestations.write(a_store, lib, "sbom", sbom)
    reg = tmp_path / "reg"
    push(a_store, [lib], lambda: open_client(f"file://{reg}"), progress=False)
    listing = json.loads((reg / layout.att_listing_key(lib.rsplit("/", 1)[1][:32])).read_bytes())
    assert sorted(listing["kinds"]) == ["provenance", "sbom"]
    a_store.close()
    yield Setup(key, attester, lib, app, app_drv, reg, tmp_path)


class Served:
    """``kiln serve --dir REG`` on a free port, stopped by pid."""

    def __init__(self, reg: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kiln", "serve", "--dir", str(reg), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert "listening on http://127.0.0.1:" in line, line
        self.url = line.split("listening on ", 1)[1].strip()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _build(s: Setup, home: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kiln",
            "build",
            s.app_drv,
            "--substituter",
            url,
            "--trusted-key",
            s.pub(s.key),
        ]
        + [*extra, "--root", "app"],
        env=dict(os.environ, KILN_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=180,
    )


def _edit_payload(env: dict) -> None:  # the statement changed, its signature kept
    st = json.loads(base64.b64decode(env["payload"]))
    st["predicate"]["buildDefinition"]["externalParameters"]["attribute"] = "edited"
    env["payload"] = base64.b64encode(json.dumps(st).encode()).decode()


def _flip_sig(env: dict) -> None:
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[5] ^= 1
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()


@pytest.mark.parametrize("how", ["payload", "signature"])
def test_a_tampered_attestation_fails_the_build_after_it_and_names_itself(setup: Setup, how: str) -> None:
    """Before: "warning: attestations from URL: tampering found ..." and exit 0. Now:
    ``lib`` is substituted and ``app`` built all the same, ``app``'s output printed and
    rooted, then exit 1 with "tampering found" naming ``lib``'s provenance; the
    tampered provenance is not stored, the good SBOM (with ``--attester-key``) is."""
    s = setup
    s.edit(s.lib, "provenance", _edit_payload if how == "payload" else _flip_sig)
    home = s.new_home("b")
    srv = Served(s.reg)
    try:
        r = _build(s, home, srv.url, "--attester-key", s.pub(s.attester))
    finally:
        srv.stop()
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout.split() == [s.app], r.stdout  # the output is printed
    assert r.stderr.count("building") == 1, r.stderr  # lib substituted, app built
    kid = keyid(s.key.public().key)[:16]
    err = r.stderr.split("error: ", 1)[1]  # the report after the build, last
    assert "tampering found: 1 attestation(s) from" in err, r.stderr
    assert f"{s.lib} provenance: tampered with: its signature in the name of trusted key 'builder-1' " in err
    assert f"(keyid {kid}...) does not verify" in err, err
    assert "the build went on" in err and "Traceback" not in r.stderr, r.stderr
    with LocalStore.open(home) as st:
        assert st.is_valid(s.lib) and st.is_valid(s.app)
        assert attestations.list(st, s.lib) == ["sbom"]  # the attester's, admitted by --attester-key
        assert attestations.list(st, s.app) == ["provenance"]  # this build's own
    assert os.readlink(home / "gcroots" / "app").endswith(s.app.rsplit("/", 1)[1])


def test_an_unknown_signer_is_a_warning_and_an_attester_key_admits_it(setup: Setup) -> None:
    """Without ``--attester-key`` the attester's SBOM is an unknown signer's: skipped
    with a warning, exit 0, no alarm; with it (another store), stored. The builder's
    provenance is stored both times."""
    s = setup
    plain, attested = s.new_home("plain"), s.new_home("attested")
    srv = Served(s.reg)
    try:
        r = _build(s, plain, srv.url)
        r2 = _build(s, attested, srv.url, "--attester-key", s.pub(s.attester))
    finally:
        srv.stop()
    assert r.returncode == 0, r.stderr
    assert "tamper" not in r.stderr and "error" not in r.stderr, r.stderr
    assert f"skipped: {s.lib} sbom: not signed by a trusted key" in r.stderr, r.stderr
    assert r2.returncode == 0 and "skipped" not in r2.stderr, r2.stderr
    for home, kinds in ((plain, ["provenance"]), (attested, ["provenance", "sbom"])):
        with LocalStore.open(home) as st:
            assert attestations.list(st, s.lib) == kinds
