"""``POST /verify`` judges by the policy file as it is at each review: a ``kiln key revoke
--policy FILE`` reaches a running ``kiln serve --policy FILE`` without a restart, a
policy that no longer loads denies (fails closed, never the old policy), and every
answer names the policy's sha256. Real servers, real stores, the real ``kiln`` command."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from regkit import Keys, add_built, kiln, make_store, push_cli
from test_attestations import _review


def _policy(path: Path, *signers: Keys) -> str:
    keys = ", ".join(f'"{k.pk}"' for k in signers)
    path.write_text(f"[keys]\nsigning = [{keys}]\n[require]\nsignatures = 1\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _registry(tmp: Path, signer: Keys, kiln_server, *serve: str) -> tuple[str, object]:  # noqa: ANN001
    """A registry directory holding one path signed by ``signer``, served with ``serve``
    arguments: (the path, the server)."""
    store = make_store(tmp / "store")
    app = add_built(store, tmp, "app", "application")
    reg = tmp / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(signer.pk_file), *serve)
    r = push_cli(store, [app], srv.url, tok, signer.sk_file)
    assert r.returncode == 0, r.stderr
    return app, srv


def _verdict(url: str, path: str) -> dict:
    st, doc = _review(url, path)
    assert st == 200, doc
    return doc["response"]


def test_a_revocation_reaches_a_running_server(tmp_path: Path, kiln_server) -> None:
    ci, dev = Keys(tmp_path, "ci-1"), Keys(tmp_path, "dev-1")
    pol = tmp_path / "policy.toml"
    digest = _policy(pol, ci, dev)
    app, srv = _registry(tmp_path, dev, kiln_server, "--policy", str(pol), "--workers", "2")
    resp = _verdict(srv.url, app)
    assert resp["allowed"] is True, resp
    assert resp["auditAnnotations"] == {"kiln.dev/policy": str(pol), "kiln.dev/policy-sha256": digest}
    assert f"sha256:{digest[:16]}" in resp["status"]["message"]
    # dev's key is stolen: revoked in the file the server was started with
    env = {**os.environ, "KILN_HOME": str(tmp_path / "home")}
    r = kiln("key", "revoke", str(dev.pk_file), "--policy", str(pol), "--reason", "laptop stolen", env=env)
    assert r.returncode == 0, r.stderr
    revoked = hashlib.sha256(pol.read_bytes()).hexdigest()
    assert f"sha256:{revoked[:16]}" in r.stderr and "running `kiln serve --policy`" in r.stderr, r.stderr
    # both workers answer by the new file (each review re-reads it), at once
    for _ in range(4):
        resp = _verdict(srv.url, app)
        assert resp["allowed"] is False, resp
        assert "compromised" in resp["status"]["message"] and "laptop stolen" in resp["status"]["message"]
        assert resp["auditAnnotations"]["kiln.dev/policy-sha256"] == revoked
    # `kiln verify --policy` agrees with the server
    r = kiln("verify", f"{srv.url}#{app}", "--policy", str(pol), env=env)
    assert r.returncode == 1 and "compromised" in r.stdout, r.stdout


def test_a_policy_that_stops_loading_denies_every_review(tmp_path: Path, kiln_server) -> None:
    """Fail closed: a broken or missing policy file is a denial with the reason (status
    500 inside a well-formed answer, so no webhook failure policy can let it through),
    never the policy the server read before; a repaired file applies again."""
    ci = Keys(tmp_path, "ci-1")
    pol = tmp_path / "policy.toml"
    _policy(pol, ci)
    app, srv = _registry(tmp_path, ci, kiln_server, "--policy", str(pol))
    assert _verdict(srv.url, app)["allowed"] is True
    for broken in (
        "[keys\nsigning = [",
        "[require]\nsignatures = 1\n",
        None,
    ):  # bad TOML, unsatisfiable, gone
        if broken is None:
            pol.unlink()
        else:
            pol.write_text(broken)
        resp = _verdict(srv.url, app)
        assert resp["allowed"] is False, (broken, resp)
        assert resp["status"]["code"] == 500 and "the policy does not load" in resp["status"]["message"], resp
        assert str(pol) in resp["status"]["message"]
    digest = _policy(pol, ci)
    resp = _verdict(srv.url, app)
    assert resp["allowed"] is True and resp["auditAnnotations"]["kiln.dev/policy-sha256"] == digest, resp


def test_a_store_server_rereads_its_policy_too(tmp_path: Path, kiln_server) -> None:
    from kiln.store.signing import sign_info

    ci, dev = Keys(tmp_path, "ci-1"), Keys(tmp_path, "dev-1")
    store = make_store(tmp_path / "store")
    app = add_built(store, tmp_path, "app", "application")
    store.add_signatures(app, [sign_info(store.query(app), dev.sk)])
    pol = tmp_path / "policy.toml"
    _policy(pol, dev)
    srv = kiln_server("--store", str(store.root), "--policy", str(pol))
    assert _verdict(srv.url, app)["allowed"] is True
    _policy(pol, ci)  # dev is no longer trusted (an edit by hand, not a revocation)
    resp = _verdict(srv.url, app)
    assert resp["allowed"] is False and "signatures" in resp["status"]["message"], resp
