"""Attestations at the registry: push carries them, the server admits only verified ones
and serves them (also as a plain directory through nginx), mirror sync and
``fetch_attestations`` copy them, ``POST /verify`` and ``kiln verify URL#PATH`` judge
registry paths against a policy. Real ``kiln serve`` and nginx on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from attestkit import signed_provenance
from regkit import add_built, make_store, request

from kiln.registry.attest_fetch import fetch_attestations
from kiln.registry.httpclient import HttpClient
from kiln.store import attestations, intoto
from kiln.store.dsse import Ed25519Signer, Envelope
from kiln.store.localstore import LocalStore
from kiln.store.paths import StorePath


def kiln(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, env=env)


def provenance(store, path: str, sk, parameters: dict | None = None) -> Envelope:  # noqa: ANN001
    return signed_provenance(store, path, sk, parameters=parameters)


def vsa(store, path: str, sk) -> bytes:  # noqa: ANN001
    """A passing VSA for ``path`` signed by ``sk``, as a rebuilder would file it."""
    st = intoto.vsa(
        StorePath.parse(path).base,
        store.query(path).nar_hash.hex,
        verifier_version="test",
        time_verified=time.time(),
        passed=True,
        resource_uri=f"kiln:{path}",
    )
    return attestations.sign(st, [Ed25519Signer(sk.key)]).dumps().encode()


class Setup:
    """A store with ``dep`` <- ``app`` (app has a provenance attestation) and a registry
    directory served by ``kiln serve`` that trusts ``keys``."""

    def __init__(self, tmp: Path, keys, kiln_server, *extra: str) -> None:  # noqa: ANN001
        self.tmp, self.keys = tmp, keys
        self.store = make_store(tmp / "store")
        self.dep = add_built(self.store, tmp, "dep", "dependency")
        self.app = add_built(self.store, tmp, "app", "application", (self.dep,))
        self.bare = add_built(self.store, tmp, "bare", "no provenance here")
        attestations.write(self.store, self.app, "provenance", provenance(self.store, self.app, keys.sk))
        self.reg = tmp / "reg"
        assert kiln("registry", "init", "--dir", str(self.reg)).returncode == 0
        r = kiln("registry", "token", "create", "--scope", "write", "--dir", str(self.reg))
        self.token = r.stdout.strip()
        self.server = kiln_server(
            "--dir",
            str(self.reg),
            "--trusted-key",
            str(keys.pk_file),
            "--index-key",
            str(keys.sk_file),
            *extra,
        )
        self.url = self.server.url

    def push(self, *paths: str, expect: int = 0) -> subprocess.CompletedProcess:
        """``kiln push`` of ``paths``; it must exit ``expect`` (1: the registry refused an attestation)."""
        args = ["push", *paths, "--to", self.url, "--token", self.token, "--sign-key", str(self.keys.sk_file)]
        r = kiln(*args, "--store", str(self.store.root))
        assert r.returncode == expect, r.stderr
        return r

    def hp(self, path: str) -> str:
        return path.rsplit("/", 1)[1][:32]

    def attest_dep(self) -> None:
        """Give ``dep`` a provenance too: ``POST /verify`` and ``kiln verify URL#PATH``
        judge the whole closure, so a policy requiring provenance requires it of ``dep``."""
        attestations.write(self.store, self.dep, "provenance", provenance(self.store, self.dep, self.keys.sk))

    def put(self, path: str, kind: str, data: bytes, token: str | None = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        st, _, body = request(f"{self.url}/{self.hp(path)}.att/{kind}.dsse.json", "PUT", data, headers)
        return st, body

    def policy(self, *, provenance: bool = True) -> Path:
        p = self.tmp / "policy.toml"
        req = "provenance = true\n" if provenance else ""
        p.write_text(
            f'[keys]\nsigning = ["{self.keys.pk}"]\nprovenance = ["{self.keys.pk}"]\n'
            f"[require]\nsignatures = 1\n{req}"
        )
        return p


def test_push_carries_provenance_and_registry_serves_it(tmp_path, keys, kiln_server, nginx_server) -> None:
    s = Setup(tmp_path, keys, kiln_server)
    r = s.push(s.app)
    assert "1 attestations" in r.stdout
    local = (s.store.root / "attestations" / s.hp(s.app) / "provenance.dsse.json").read_bytes()
    st, hdr, body = request(f"{s.url}/{s.hp(s.app)}.att/provenance.dsse.json")
    assert st == 200 and body == local and hdr["cache-control"] == "no-cache"
    st, _, body = request(f"{s.url}/{s.hp(s.app)}.att/")
    assert st == 200 and list(json.loads(body)["kinds"]) == ["provenance"]
    assert request(f"{s.url}/{s.hp(s.dep)}.att/")[0] == 404
    # the signed index lists the attestation's digest
    idx = json.loads((s.reg / "index" / "1.index.json").read_bytes())["signed"]["paths"]
    assert set(idx[s.hp(s.app)]["attestations"]) == {"provenance"}
    # the same directory through a static server
    ng = nginx_server(s.reg)
    st, _, body = request(f"{ng.url}/{s.hp(s.app)}.att/provenance.dsse.json")
    assert st == 200 and body == local
    st, _, body = request(f"{ng.url}/{s.hp(s.app)}.att/index.json")
    assert st == 200 and "provenance" in json.loads(body)["kinds"]
    # nothing new: the second push uploads no attestation
    assert "0 attestations" in s.push(s.app).stdout
    # a damaged listing is no listing (each file is checked on its own), never a 500
    listing = s.reg / f"{s.hp(s.app)}.att" / "index.json"
    listing.write_bytes(b'{"kinds": []}')
    assert request(f"{s.url}/{s.hp(s.app)}.att/")[0] == 404


def test_tampered_or_untrusted_attestation_upload_is_refused(tmp_path, keys, other_keys, kiln_server) -> None:
    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.app, s.bare)
    good = provenance(s.store, s.bare, keys.sk)
    # signed by a key the server does not trust
    st, body = s.put(s.bare, "provenance", provenance(s.store, s.bare, other_keys.sk).dumps().encode())
    assert st == 403 and b"trusted" in body
    # payload changed after signing
    d = json.loads(good.dumps())
    payload = json.loads(base64.b64decode(d["payload"]))
    payload["predicate"]["runDetails"]["builder"]["id"] = "https://evil.example/builder"
    d["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    st, body = s.put(s.bare, "provenance", json.dumps(d).encode())
    assert st == 403, body
    # validly signed, but for other content (subject is app's NAR hash)
    st, body = s.put(s.bare, "provenance", provenance(s.store, s.app, keys.sk).dumps().encode())
    assert st == 400 and b"does not name" in body
    # wrong predicate for the kind, malformed JSON, no token, unknown path
    assert s.put(s.bare, "sbom", good.dumps().encode())[0] == 400
    assert s.put(s.bare, "provenance", b"{not json")[0] == 400
    assert request(f"{s.url}/{s.hp(s.bare)}.att/provenance.dsse.json", "PUT", good.dumps().encode())[0] == 401
    assert s.put("/kiln/store/" + "0" * 32 + "-nope", "provenance", good.dumps().encode())[0] == 409
    assert request(f"{s.url}/{s.hp(s.bare)}.att/provenance.dsse.json")[0] == 404  # nothing stored
    assert not list((s.reg / f"{s.hp(s.bare)}.att").glob("*.dsse.json"))
    # the genuine one is admitted, and a re-upload is idempotent
    assert s.put(s.bare, "provenance", good.dumps().encode())[0] == 201
    assert s.put(s.bare, "provenance", good.dumps().encode())[0] == 200


def test_a_refused_attestation_fails_the_push_after_it_publishes(
    tmp_path, keys, other_keys, kiln_server
) -> None:
    """An attestation the registry does not trust (here: provenance signed by a key it
    does not know) is left out and named; the paths, their other attestations and the
    index are still published, and the push then exits 1 (it exited 0, and the path went
    out without its provenance unnoticed); a re-run behaves the same (it used to fail at
    that attestation every time, before publishing the index)."""
    s = Setup(tmp_path, keys, kiln_server)
    attestations.write(s.store, s.bare, "provenance", provenance(s.store, s.bare, other_keys.sk))
    for _ in range(2):
        r = s.push(s.app, s.bare, expect=1)
        assert f"error: the registry refused the attestation {s.bare} provenance" in r.stderr
        assert "error: the registry refused 1 attestation(s)" in r.stderr and "NTP" not in r.stderr
        assert "trusted" in r.stderr and "index" in r.stdout
        assert "admits attestations signed by one of its --trusted-key or --attester-key" in r.stderr
    assert request(f"{s.url}/{s.hp(s.app)}.att/provenance.dsse.json")[0] == 200
    assert request(f"{s.url}/{s.hp(s.bare)}.att/provenance.dsse.json")[0] == 404
    idx = json.loads((s.reg / "index" / "timestamp.json").read_bytes())["signed"]
    assert idx["version"] >= 2  # published by each push


def _second_registry(tmp_path: Path, keys, kiln_server) -> tuple[Path, str, object]:  # noqa: ANN001
    """Another registry directory served by kiln serve (trusting ``keys``, signing its
    index with them): (its directory, a write token, the server)."""
    reg2 = tmp_path / "reg2"
    assert kiln("registry", "init", "--dir", str(reg2)).returncode == 0
    tok2 = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg2)).stdout.strip()
    srv2 = kiln_server(
        "--dir", str(reg2), "--trusted-key", str(keys.pk_file), "--index-key", str(keys.sk_file)
    )
    return reg2, tok2, srv2


def test_an_attestation_too_big_for_the_registry_fails_the_push_last(tmp_path, keys, kiln_server) -> None:
    """The registry answers 413 to an attestation over its limit; the push goes on (it
    failed every run before publishing the index) and exits 1 at the end."""
    from kiln.registry.attest_transfer import MAX_ATTESTATION

    s = Setup(tmp_path, keys, kiln_server)
    big = provenance(s.store, s.bare, keys.sk, parameters={"padding": "x" * MAX_ATTESTATION})
    attestations.write(s.store, s.bare, "provenance", big)
    r = s.push(s.app, s.bare, expect=1)
    assert f"error: the registry refused the attestation {s.bare} provenance" in r.stderr, r.stderr
    assert request(f"{s.url}/{s.hp(s.app)}.att/provenance.dsse.json")[0] == 200


def test_a_copy_whose_attestations_fail_still_publishes(tmp_path, keys, kiln_server, monkeypatch) -> None:
    """Attestations are relayed after the paths; a source that fails them (here: 503 for
    every attestation) must not leave the copied paths unpublished for good."""
    from kiln.registry.client import RegistryError, open_client
    from kiln.registry.copy import between
    from kiln.store.errors import KilnError

    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.app)
    reg2, tok2, srv2 = _second_registry(tmp_path, keys, kiln_server)
    real = HttpClient.attestation_listings

    async def failing(self, hash_parts):  # noqa: ANN001, ANN202
        if self.url == s.url:
            raise RegistryError(f"{self.url}: HTTP 503: busy", 503)
        return await real(self, hash_parts)

    monkeypatch.setattr(HttpClient, "attestation_listings", failing)
    for _ in range(2):  # and a re-run, when nothing is missing, publishes too
        # an error (not a refusal of one file): the run fails, after publishing the paths
        with pytest.raises(KilnError, match="could not be relayed"):
            asyncio.run(between(s.url, lambda _sd: open_client(srv2.url, tok2), [s.app], [keys.pk]))
        idx = json.loads((reg2 / "index" / "1.index.json").read_bytes())["signed"]["paths"]
        assert s.hp(s.app) in idx


def test_copy_between_registries_carries_attestations(tmp_path, keys, other_keys, kiln_server) -> None:
    """``kiln copy --from URL --to URL`` relays the paths' attestations after the paths
    (it dropped them all); one the destination refuses is named and fails the copy (exit
    1, after the paths and the rest); a re-run copies the attestations of asked paths
    that are already there."""
    s = Setup(tmp_path, keys, kiln_server, "--attester-key", str(other_keys.pk_file))
    s.push(s.app)
    # a rebuilder's VSA the source admits (it trusts that attester) and the destination will not
    kind = attestations.vsa_kind(other_keys.pk.key)
    assert s.put(s.app, kind, vsa(s.store, s.app, other_keys.sk))[0] == 201
    reg2, tok2, srv2 = _second_registry(tmp_path, keys, kiln_server)
    copy = ["copy", "--from", s.url, "--to", srv2.url, "--token", tok2, "--trusted-key", str(keys.pk_file)]
    r = kiln(*copy, s.app)
    assert r.returncode == 1 and "copied 2 paths and 1 attestations" in r.stdout, r.stderr
    assert f"error: attestation not copied: {s.app} {kind}" in r.stderr
    assert "error: the registry refused 1 attestation(s)" in r.stderr
    local = (s.store.root / "attestations" / s.hp(s.app) / "provenance.dsse.json").read_bytes()
    assert request(f"{srv2.url}/{s.hp(s.app)}.att/provenance.dsse.json")[2] == local
    assert request(f"{srv2.url}/{s.hp(s.app)}.att/{kind}.dsse.json")[0] == 404
    idx = json.loads((reg2 / "index" / "1.index.json").read_bytes())["signed"]["paths"]
    assert set(idx[s.hp(s.app)]["attestations"]) == {"provenance"}
    # a newer provenance at the source follows on a re-run, though the path is there
    newer = provenance(s.store, s.app, keys.sk).dumps().encode()
    assert s.put(s.app, "provenance", newer)[0] == 201
    r = kiln(*copy, s.app)  # (the VSA is refused again: still exit 1)
    assert r.returncode == 1 and "copied 0 paths and 1 attestations" in r.stdout, r.stderr
    assert request(f"{srv2.url}/{s.hp(s.app)}.att/provenance.dsse.json")[2] == newer


def test_mirror_sync_carries_attestations(tmp_path, keys, kiln_server) -> None:
    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.app)
    mirror = tmp_path / "mirror"
    cmd = ["mirror", "sync", s.url, str(mirror), "--root", str(s.reg / "index" / "root.json")]
    r = kiln(*cmd)
    assert r.returncode == 0, r.stderr
    assert "1 attestations" in r.stdout
    src = (s.reg / f"{s.hp(s.app)}.att" / "provenance.dsse.json").read_bytes()
    assert (mirror / f"{s.hp(s.app)}.att" / "provenance.dsse.json").read_bytes() == src
    assert "provenance" in json.loads((mirror / f"{s.hp(s.app)}.att" / "index.json").read_bytes())["kinds"]
    r = kiln(*cmd[:4])  # second sync: pinned state, nothing to transfer
    assert r.returncode == 0, r.stderr
    assert "0 narinfos and 0 blobs (0 bytes) fetched, 0 attestations" in r.stdout
    # A source whose attestation file no longer matches its signed index fails loudly.
    att = s.reg / f"{s.hp(s.app)}.att" / "provenance.dsse.json"
    att.write_bytes(att.read_bytes().replace(b'"payload":"', b'"payload":"ey', 1))
    r = kiln("mirror", "sync", s.url, str(tmp_path / "m2"), "--root", str(s.reg / "index" / "root.json"))
    assert r.returncode != 0 and "signed index" in r.stderr
    assert not (tmp_path / "m2" / f"{s.hp(s.app)}.att").exists()


def store_with_paths(s: Setup, root: Path) -> LocalStore:
    """A new store at ``root`` holding ``s.dep`` and ``s.app`` (no attestations)."""
    other = make_store(root)
    for p in (s.dep, s.app):
        with open(s.store.object_path(p), "rb") as f:
            other.import_object(s.store.query(p), f)
    return other


def test_fetch_attestations_into_a_store(tmp_path, keys, kiln_server) -> None:
    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.app)
    other = store_with_paths(s, tmp_path / "other")

    async def run() -> int:
        async with HttpClient(s.url) as c:
            return await fetch_attestations(c, other, [s.dep, s.app], trusted=[keys.pk])

    assert asyncio.run(run()) == 1
    assert attestations.read_all(other, s.app) == attestations.read_all(s.store, s.app)
    assert asyncio.run(run()) == 0  # already there


def _review(url: str, artifact: str, uid: str = "u-1") -> tuple[int, dict]:
    body = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": uid, "artifact": artifact},
    }
    st, _, data = request(
        f"{url}/verify", "POST", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    return st, json.loads(data) if st == 200 else {"text": data.decode()}


def test_post_verify_allows_good_and_denies_bad(tmp_path, keys, kiln_server) -> None:
    pol = tmp_path / "pol.toml"  # read when the server starts
    pol.write_text(
        f'[keys]\nsigning = ["{keys.pk}"]\nprovenance = ["{keys.pk}"]\n[require]\nsignatures = 1\nprovenance = true\n'
    )
    s = Setup(tmp_path, keys, kiln_server, "--policy", str(pol))
    s.attest_dep()
    s.push(s.app, s.bare)
    st, doc = _review(s.url, s.app, "uid-good")
    assert st == 200, doc
    resp = doc["response"]
    assert doc["kind"] == "AdmissionReview" and resp["uid"] == "uid-good" and resp["allowed"] is True
    names = {c["field"]: c["reason"] for c in resp["status"]["details"]["causes"]}
    assert names["provenance"] == "pass" and names["signatures"] == "pass" and names["content"] == "pass"
    # by NAR digest too
    st, doc = _review(s.url, "sha256:" + s.store.query(s.app).nar_hash.hex)
    assert st == 200 and doc["response"]["allowed"] is True
    # no provenance: denied, with the reason
    st, doc = _review(s.url, s.bare)
    assert st == 200 and doc["response"]["allowed"] is False
    assert doc["response"]["status"]["code"] == 403 and "provenance" in doc["response"]["status"]["message"]
    # a provenance altered in the registry directory (listing rewritten to match): denied
    from kiln.registry.attest_transfer import rebuild_listing
    from kiln.registry.storage import FileStorage

    att = s.reg / f"{s.hp(s.app)}.att" / "provenance.dsse.json"
    good = att.read_bytes()
    d = json.loads(good)
    payload = json.loads(base64.b64decode(d["payload"]))
    payload["predicate"]["runDetails"]["builder"]["id"] = "https://evil.example/builder"
    d["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    att.write_text(json.dumps(d))
    rebuild_listing(FileStorage(s.reg), s.hp(s.app))
    st, doc = _review(s.url, s.app)
    assert doc["response"]["allowed"] is False
    causes = {c["field"]: c for c in doc["response"]["status"]["details"]["causes"]}
    assert causes["provenance"]["reason"] == "fail", causes
    att.write_bytes(good)
    rebuild_listing(FileStorage(s.reg), s.hp(s.app))
    assert _review(s.url, s.app)[1]["response"]["allowed"] is True
    # a tampered NAR in the registry: denied on content
    info = s.store.query(s.dep)
    nar = s.reg / "nar" / f"{info.file_hash.nix32}.nar.zst"
    data = bytearray(nar.read_bytes())
    data[-8] ^= 0xFF
    os.unlink(nar)  # hard-linked with blobs/: replace both names' target
    nar.write_bytes(bytes(data))
    st, doc = _review(s.url, s.app)
    assert doc["response"]["allowed"] is False
    assert "content" in doc["response"]["status"]["message"], doc
    # unknown path, malformed review
    st, doc = _review(s.url, "/kiln/store/" + "0" * 32 + "-nope")
    assert st == 200 and doc["response"]["allowed"] is False
    assert request(f"{s.url}/verify", "POST", b'{"request": {}}')[0] == 400


def test_post_verify_needs_a_policy_and_works_on_a_store(tmp_path, keys, kiln_server) -> None:
    s = Setup(tmp_path, keys, kiln_server)
    s.attest_dep()
    assert request(f"{s.url}/verify", "POST", b"{}")[0] == 409
    pol = s.policy()
    srv = kiln_server("--store", str(s.store.root), "--sign-key", str(keys.sk_file), "--policy", str(pol))
    # the store's path signatures are added on the fly only when served; sign them in the store
    from kiln.store.signing import sign_info

    for p in (s.dep, s.app, s.bare):
        s.store.add_signatures(p, [sign_info(s.store.query(p), keys.sk)])
    st, doc = _review(srv.url, s.app)
    assert st == 200 and doc["response"]["allowed"] is True, doc
    # a store-backed server serves the store's attestations too
    local = (s.store.root / "attestations" / s.hp(s.app) / "provenance.dsse.json").read_bytes()
    assert request(f"{srv.url}/{s.hp(s.app)}.att/provenance.dsse.json")[2] == local
    assert list(json.loads(request(f"{srv.url}/{s.hp(s.app)}.att/index.json")[2])["kinds"]) == ["provenance"]
    assert request(f"{srv.url}/{s.hp(s.bare)}.att/")[0] == 404
    st, doc = _review(srv.url, s.bare)
    assert doc["response"]["allowed"] is False and "provenance" in doc["response"]["status"]["message"]


def test_kiln_verify_registry_target(tmp_path, keys, kiln_server, nginx_server) -> None:
    s = Setup(tmp_path, keys, kiln_server)
    s.attest_dep()
    s.push(s.app, s.bare)
    pol = s.policy()
    env = {**os.environ, "KILN_HOME": str(tmp_path / "nohome")}  # no local store needed
    r = kiln("verify", f"{s.url}#{s.app}", "--policy", str(pol), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pass provenance" in r.stdout and "result: PASS" in r.stdout
    r = kiln("verify", "--registry", s.url, s.hp(s.app), "--policy", str(pol), "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True
    r = kiln("verify", f"{s.url}#{s.bare}", "--policy", str(pol), env=env)
    assert r.returncode == 1 and "FAIL provenance" in r.stdout
    assert kiln("verify", s.url, "--policy", str(pol), env=env).returncode == 2
    # the same directory through nginx (no batch endpoint: per-path GETs, static listing)
    ng = nginx_server(s.reg)
    r = kiln("verify", f"{ng.url}#{s.app}", "--policy", str(pol), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = kiln("verify", f"{ng.url}#sha256:{s.store.query(s.app).nar_hash.hex}", env=env)
    assert r.returncode == 3 and "cannot look paths up by NAR hash" in r.stdout


def test_push_to_a_directory_url_carries_attestations(tmp_path, keys) -> None:
    from kiln.registry.attest_fetch import fetch_attestations_sync
    from kiln.registry.client import open_client
    from kiln.registry.push import push

    store = make_store(tmp_path / "store")
    app = add_built(store, tmp_path, "app", "application")
    attestations.write(store, app, "provenance", provenance(store, app, keys.sk))
    url = f"file://{tmp_path / 'dirreg'}"
    rep = push(store, [app], lambda: open_client(url, store_dir=store.store_dir), sign_key=keys.sk)
    assert rep.attestations_uploaded == 1
    hp = app.rsplit("/", 1)[1][:32]
    assert (tmp_path / "dirreg" / f"{hp}.att" / "provenance.dsse.json").is_file()
    other = make_store(tmp_path / "other")
    with open(store.object_path(app), "rb") as f:
        other.import_object(store.query(app), f)
    assert fetch_attestations_sync(url, other, [app], trusted=[keys.pk]) == 1
    assert attestations.list(other, app) == ["provenance"]


def test_rebuilder_vsa_admitted_with_attester_key(tmp_path, keys, other_keys, kiln_server) -> None:
    s = Setup(tmp_path, keys, kiln_server, "--attester-key", str(other_keys.pk_file))
    s.push(s.bare)
    kind = attestations.vsa_kind(other_keys.pk.key)
    # a VSA filed under the rebuilder's kind must be signed by that rebuilder
    assert s.put(s.bare, kind, vsa(s.store, s.bare, keys.sk))[0] == 403
    assert s.put(s.bare, kind, vsa(s.store, s.bare, other_keys.sk))[0] == 201
    st, _, body = request(f"{s.url}/{s.hp(s.bare)}.att/")
    assert st == 200 and list(json.loads(body)["kinds"]) == [kind]


def test_verify_refuses_a_narinfo_for_another_path(tmp_path, keys, kiln_server, nginx_server) -> None:
    """A registry answering a question about ``bare`` (no provenance) with ``app``'s
    genuine, signed narinfo must not get ``app``'s verdict reported for ``bare``."""
    import pytest

    from kiln.registry.admission import _admit_top
    from kiln.store.errors import KilnError

    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.app, s.bare)
    pol = s.policy()
    env = {**os.environ, "KILN_HOME": str(tmp_path / "nohome")}
    app_ni = (s.reg / f"{s.hp(s.app)}.narinfo").read_bytes()
    (s.reg / f"{s.hp(s.bare)}.narinfo").write_bytes(app_ni)  # misfiled, or a hostile registry
    ng = nginx_server(s.reg)  # serves the directory as it is (kiln serve caches narinfos)
    for target in (s.bare, s.hp(s.bare)):
        r = kiln("verify", f"{ng.url}#{target}", "--policy", str(pol), env=env)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "result: PASS" not in r.stdout and "describes another path" in r.stdout, r.stdout
    # by NAR digest: an answer whose NarHash is not the digest asked about
    store_dir = str(StorePath.parse(s.app).store_dir)
    want = "sha256:" + s.store.query(s.bare).nar_hash.hex
    with pytest.raises(KilnError, match="registry answered with .*-app"):
        _admit_top(app_ni.decode(), store_dir, want)
    # a full path whose hash part matches but whose name does not
    renamed = s.app.rsplit("-", 1)[0] + "-renamed"
    with pytest.raises(KilnError, match="answered with .*-app"):
        _admit_top(app_ni.decode(), store_dir, renamed)
    assert _admit_top(app_ni.decode(), store_dir, s.app).path == s.app
    assert _admit_top(app_ni.decode(), store_dir, s.hp(s.app)).path == s.app


def test_an_older_provenance_cannot_replace_a_newer_one(tmp_path, keys, kiln_server) -> None:
    """A write-token holder replaying a genuine, older attestation over a newer one of the
    same kind (a rebuilder's old PASSED over its new FAILED, say) is refused, over HTTP
    and when a store fetches: the signed time may only move forward."""
    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.app)  # carries the store's provenance (finishedOn: now)
    newer = attestations.read(s.store, s.app, "provenance")
    st = intoto.parse_statement(newer.payload)
    st.predicate["runDetails"]["metadata"]["finishedOn"] = "2020-01-01T00:00:00Z"
    base = StorePath.parse(s.app).base
    older = attestations.sign(
        intoto.statement(
            [intoto.subject(base, s.store.query(s.app).nar_hash.hex)], st.predicate_type, st.predicate
        ),
        [Ed25519Signer(keys.sk.key)],
    )
    code, body = s.put(s.app, "provenance", older.dumps().encode())
    assert code == 409 and b"older one (2020-01-01T00:00:00Z)" in body, body
    code, _, served = request(f"{s.url}/{s.hp(s.app)}.att/provenance.dsse.json")
    assert code == 200 and served == newer.dumps().encode()
    # a store holding a newer one keeps it when the registry serves an older one
    other = make_store(tmp_path / "other")
    for p in (s.dep, s.app):
        with open(s.store.object_path(p), "rb") as f:
            other.import_object(s.store.query(p), f)
    newest = intoto.parse_statement(newer.payload)
    newest.predicate["runDetails"]["metadata"]["finishedOn"] = "2999-01-01T00:00:00Z"
    mine = attestations.sign(
        intoto.statement(
            [intoto.subject(base, s.store.query(s.app).nar_hash.hex)], st.predicate_type, newest.predicate
        ),
        [Ed25519Signer(keys.sk.key)],
    )
    attestations.write(other, s.app, "provenance", mine)

    async def run() -> int:
        async with HttpClient(s.url) as c:
            return await fetch_attestations(c, other, [s.app], trusted=[keys.pk])

    assert asyncio.run(run()) == 0
    assert attestations.read(other, s.app, "provenance") == mine
