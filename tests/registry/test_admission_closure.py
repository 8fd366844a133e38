"""``POST /verify`` and ``kiln verify URL#PATH`` judge the whole closure, not only the
path asked about: T signed by the trusted ``ci`` key that references ``libfoo``, signed
only by ``dev`` (a key the policy does not trust), is denied naming ``libfoo``, as
``kiln verify --closure T`` fails locally. Real servers (``--dir`` and ``--store``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from regkit import Keys, add_built, kiln, make_store
from test_attestations import _review

from kiln.store.signing import sign_info

sys.path.insert(0, str(Path(__file__).parents[1] / "store"))  # for storekit's corrupting helpers
from storekit import corrupt_file, corrupt_object  # noqa: E402


def _closure(tmp: Path, ci: Keys, dev: Keys, *, lib_by_ci: bool = False):  # noqa: ANN202
    """A store with T -> libfoo; T signed by ``ci``, libfoo by ``dev`` (and ``ci`` too
    with ``lib_by_ci``). Returns (store, T, libfoo)."""
    store = make_store(tmp / "store")
    lib = add_built(store, tmp, "libfoo", "a library")
    top = add_built(store, tmp, "T", "the program", (lib,))
    store.add_signatures(
        lib, [sign_info(store.query(lib), k.sk) for k in ([dev, ci] if lib_by_ci else [dev])]
    )
    store.add_signatures(top, [sign_info(store.query(top), ci.sk)])
    return store, top, lib


def _policy(tmp: Path, ci: Keys) -> Path:
    pol = tmp / "policy.toml"
    pol.write_text(f'[keys]\nsigning = ["{ci.pk}"]\n[require]\nsignatures = 1\n')
    return pol


def _served(tmp: Path, store, ci: Keys, dev: Keys, kiln_server, *extra: str) -> str:  # noqa: ANN001
    """Push the store's closure (with its own signatures) to a registry that admits
    narinfos signed by either key; return the server's URL."""
    reg = tmp / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    srv = kiln_server(
        "--dir", str(reg), "--trusted-key", str(ci.pk_file), "--trusted-key", str(dev.pk_file), *extra
    )
    paths = store.all_paths()
    r = kiln("push", *paths, "--store", str(store.root), "--to", srv.url, "--token", tok)
    assert r.returncode == 0, r.stderr
    return srv.url


def _denial(resp: dict, lib: str) -> None:
    assert resp["allowed"] is False, resp
    msg = resp["status"]["message"]
    assert lib in msg and "dependencies: 1 of 1 in the closure fail" in msg and "signatures" in msg, msg
    causes = {c["field"]: c for c in resp["status"]["details"]["causes"]}
    # the target's own checks pass; the dependencies check names the failing one
    assert causes["signatures"]["reason"] == "pass", causes
    assert causes["dependencies"]["reason"] == "fail" and lib in causes["dependencies"]["message"], causes
    assert list(causes)[-1] == "dependencies"  # after the target's report


def test_a_dependency_the_policy_does_not_trust_denies_the_target(tmp_path: Path, kiln_server) -> None:
    ci, dev = Keys(tmp_path, "ci-1"), Keys(tmp_path, "dev-1")
    store, top, lib = _closure(tmp_path, ci, dev)
    pol = _policy(tmp_path, ci)
    url = _served(tmp_path, store, ci, dev, kiln_server, "--policy", str(pol))
    st, doc = _review(url, top)
    assert st == 200, doc
    _denial(doc["response"], lib)
    # the client side says the same, naming libfoo
    env = {**os.environ, "KILN_HOME": str(tmp_path / "nohome")}
    r = kiln("verify", f"{url}#{top}", "--policy", str(pol), env=env)
    assert r.returncode == 1 and "FAIL dependencies" in r.stdout and lib in r.stdout, r.stdout
    r = kiln("verify", f"{url}#{top}", "--policy", str(pol), "--json", env=env)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.returncode == 1 and checks["dependencies"]["ok"] is False
    # as locally: kiln verify --closure fails libfoo
    r = kiln("verify", top, "--closure", "--policy", str(pol), "--store", str(store.root))
    assert r.returncode == 1 and f"verifying {lib}" in r.stdout, r.stdout
    # a --store server judges its closure the same way
    srv = kiln_server("--store", str(store.root), "--policy", str(pol))
    st, doc = _review(srv.url, top)
    assert st == 200, doc
    _denial(doc["response"], lib)
    # the dependency on its own is denied too (its own signatures check)
    st, doc = _review(url, lib)
    assert doc["response"]["allowed"] is False and "signatures" in doc["response"]["status"]["message"]


def test_a_closure_the_policy_trusts_is_allowed(tmp_path: Path, kiln_server) -> None:
    ci, dev = Keys(tmp_path, "ci-1"), Keys(tmp_path, "dev-1")
    store, top, lib = _closure(tmp_path, ci, dev, lib_by_ci=True)
    pol = _policy(tmp_path, ci)
    url = _served(tmp_path, store, ci, dev, kiln_server, "--policy", str(pol))
    st, doc = _review(url, top)
    resp = doc["response"]
    assert st == 200 and resp["allowed"] is True, resp
    causes = {c["field"]: c for c in resp["status"]["details"]["causes"]}
    deps = causes["dependencies"]
    assert deps["reason"] == "pass" and "all 1 in the closure pass" in deps["message"], deps
    # a path without dependencies: the check is skipped
    st, doc = _review(url, lib)
    causes = {c["field"]: c for c in doc["response"]["status"]["details"]["causes"]}
    assert doc["response"]["allowed"] is True and causes["dependencies"]["reason"] == "skip", doc


def test_a_closure_with_a_hole_is_denied(tmp_path: Path, kiln_server) -> None:
    """A dependency quarantined by ``kiln store verify --repair`` is no longer in the
    store's closure walk; a ``--store`` server must not take the smaller closure for a
    sound one."""
    ci, dev = Keys(tmp_path, "ci-1"), Keys(tmp_path, "dev-1")
    store, top, lib = _closure(tmp_path, ci, dev, lib_by_ci=True)
    corrupt_object(store, lib)
    corrupt_file(store.real_path(lib) / "data")
    assert store.verify(repair=True).quarantined == (lib,)
    srv = kiln_server("--store", str(store.root), "--policy", str(_policy(tmp_path, ci)))
    st, doc = _review(srv.url, top)
    resp = doc["response"]
    assert st == 200 and resp["allowed"] is False, resp
    causes = {c["field"]: c for c in resp["status"]["details"]["causes"]}
    assert causes["dependencies"]["reason"] == "fail", causes
    assert f"{lib}: not valid here" in causes["dependencies"]["message"], causes
