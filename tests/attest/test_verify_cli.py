"""``kiln sbom`` / ``kiln verify`` run as real subprocesses against a real store."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from clikit import kiln

from kiln.store import attestations
from kiln.store.keyfiles import write_secret_key
from kiln.store.signing import SecretKey, sign_info


def test_verify_default_and_json(built) -> None:
    root = str(built.store.root)
    r = kiln("verify", built.hello, "--store", root)
    assert r.returncode == 0, r.stderr
    assert "pass content:" in r.stdout and "result: PASS" in r.stdout
    r = kiln("verify", built.store.real_path(built.hello).name, "--store", root, "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout)["ok"] is True
    digest = built.store.query(built.hello).nar_hash
    for form in (digest.to_hex(), digest.to_nix32(), digest.sri):
        r = kiln("verify", form, "--store", root)
        assert r.returncode == 0 and f"verifying {built.hello}" in r.stdout, r.stderr
    assert kiln("verify", "sha256:" + "0" * 64, "--store", root).returncode == 3  # (could not check)
    r = kiln("verify", built.hello, "--store", root, "--closure")
    assert r.returncode == 0 and "result: PASS (2 paths)" in r.stdout
    assert r.stdout.index(built.hello) < r.stdout.index(built.zlib)


def test_verify_closure_finds_tampered_dependency(built) -> None:
    real = built.store.real_path(built.zlib)
    os.chmod(real, 0o755)
    os.chmod(real / "libz.so", 0o644)
    (real / "libz.so").write_bytes(b"\x7fELF backdoored zlib")
    root = str(built.store.root)
    assert kiln("verify", built.hello, "--store", root).returncode == 0
    r = kiln("verify", built.hello, "--store", root, "--closure", "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    bad = [p for p in doc["paths"] if not p["ok"]]
    assert [p["path"] for p in bad] == [built.zlib]
    assert [c["name"] for c in bad[0]["checks"] if not c["ok"]] == ["tree"]


def test_verify_policy_failure_and_usage(built, tmp_path: Path) -> None:
    root = str(built.store.root)
    key = SecretKey.generate("builder")
    pol = tmp_path / "policy.toml"
    pol.write_text(f'[keys]\nprovenance = ["{key.public()}"]\n[require]\nprovenance = true\n')
    r = kiln("verify", built.hello, "--store", root, "--policy", str(pol))
    assert r.returncode == 1
    assert "FAIL provenance: required, but no provenance attestation" in r.stdout
    assert "result: FAIL (1 check failed)" in r.stdout
    pol.write_text("[require]\nsignatures = 'one'\n")
    r = kiln("verify", built.hello, "--store", root, "--policy", str(pol))
    assert r.returncode == 2 and "non-negative integer" in r.stderr
    r = kiln("verify", "--store", root)
    assert r.returncode == 2 and "the following arguments are required: TARGET" in r.stderr
    r = kiln("verify", "https://registry.invalid/x", "--store", root)
    assert r.returncode == 2 and "name the path as URL#PATH" in r.stderr
    r = kiln("rebuild", built.hello, "--store", str(tmp_path / "no-store"))
    assert r.returncode == 2 and f"no kiln store at {tmp_path / 'no-store'}" in r.stderr
    r = kiln("verify", "/kiln/store/" + "0" * 32 + "-nope", "--store", root)
    assert r.returncode == 3 and "ERR  valid:" in r.stdout


def test_sbom_formats(built) -> None:
    root = str(built.store.root)
    r = kiln("sbom", built.hello, "--store", root)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["specVersion"] == "1.6" and len(doc["components"]) == 1
    assert kiln("sbom", built.hello, "--store", root).stdout == r.stdout  # deterministic
    r = kiln("sbom", built.hello, "--store", root, "--format", "spdx", "--build")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["spdxVersion"] == "SPDX-2.3"


def test_sbom_attest_and_verify(built, tmp_path: Path) -> None:
    root = str(built.store.root)
    key = SecretKey.generate("builder")
    keyfile = tmp_path / "builder.sec"
    write_secret_key(keyfile, key)
    out = tmp_path / "bom.json"
    r = kiln("sbom", built.hello, "--store", root, "--attest", "--key", str(keyfile), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["bomFormat"] == "CycloneDX"
    assert attestations.list(built.store, built.hello) == ["sbom"]
    cache = SecretKey.generate("cache")
    built.store.add_signatures(built.hello, [sign_info(built.store.query(built.hello), cache)])
    pol = tmp_path / "policy.toml"
    pol.write_text(
        f'[keys]\nprovenance = ["{key.public()}"]\nsigning = ["{cache.public()}"]\n'
        "[require]\nsbom = true\nsignatures = 1\n"
    )
    r = kiln("verify", built.hello, "--store", root, "--policy", str(pol))
    assert r.returncode == 0, r.stdout
    # the same again: nothing to say; the build closure's: it replaces the runtime one, said
    r = kiln("sbom", built.hello, "--store", root, "--attest", "--key", str(keyfile), "-o", str(out))
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr
    r = kiln(
        "sbom", built.hello, "--store", root, "--attest", "--key", str(keyfile), "--build", "-o", str(out)
    )
    assert r.returncode == 0 and "note: it replaced" in r.stderr and "--build" in r.stderr, r.stderr
    # A world-readable secret key is refused.
    os.chmod(keyfile, 0o644)
    r = kiln("sbom", built.hello, "--store", root, "--attest", "--key", str(keyfile))
    assert r.returncode == 1 and "chmod 600" in r.stderr


def test_sbom_attest_with_signer_command(built, tmp_path: Path) -> None:
    """The external signer holds the key; kiln only sees the public key."""
    key = SecretKey.generate("hsm")
    secret = tmp_path / "hsm-only" / "k.sec"
    secret.parent.mkdir()
    write_secret_key(secret, key)
    script = tmp_path / "signer.py"
    script.write_text(
        "import base64, sys\n"
        "from kiln.store.keyfiles import load_secret_key\n"
        f"k = load_secret_key({str(secret)!r})\n"
        "sys.stdout.write(k.sign(sys.stdin.buffer.read()).split(':', 1)[1])\n"
    )
    r = kiln(
        "sbom", built.hello, "--store", str(built.store.root), "--attest",
        "--signer-cmd", f"{sys.executable} {script}", "--signer-key", key.public().to_text(),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    env = attestations.read(built.store, built.hello, "sbom")
    from kiln.store import dsse

    assert dsse.verify(env, {"hsm": key.public().key}).signed_by == ("hsm",)
