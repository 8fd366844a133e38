"""``kiln store sign --signer-cmd CMD --signer-key PUB``: paths a build did not make (added,
substituted, or to re-sign after a rotation) signed by a key held elsewhere (KMS/HSM), the
signature checked against PUB before it is added; a path already carrying the key's
signature is counted apart (ed25519 signatures are deterministic)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from storekit import make_tree

from kiln.store.keyfiles import write_public_key, write_secret_key
from kiln.store.signing import SecretKey


def kiln(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, timeout=120)


def _signer(tmp_path: Path, sk_file: Path) -> str:
    """A stand-in for a KMS: a program holding the secret key that kiln never reads."""
    script = tmp_path / "kms.py"
    script.write_text(
        "import sys\n"
        "from kiln.store.keyfiles import load_secret_key\n"
        "from kiln.store.dsse import Ed25519Signer, b64encode\n"
        f"k = load_secret_key({str(sk_file)!r})\n"
        "print(b64encode(Ed25519Signer(k.key).sign(sys.stdin.buffer.read())))\n"
    )
    return f"{sys.executable} {script}"


def test_store_sign_with_an_external_signer(tmp_path: Path) -> None:
    st = str(tmp_path / "st")
    path = kiln("store", "add", "--store", st, str(make_tree(tmp_path / "t", {"a": "x\n"}))).stdout.strip()
    hsm = SecretKey.generate("hsm-1")
    write_secret_key(tmp_path / "hsm.sec", hsm)
    write_public_key(tmp_path / "hsm.pub", hsm.public())
    cmd = _signer(tmp_path, tmp_path / "hsm.sec")

    r = kiln(
        "store", "sign", "--store", st, "--signer-cmd", cmd, "--signer-key", str(tmp_path / "hsm.pub"), path
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "signed 1 paths"
    info = json.loads(kiln("store", "info", "--store", st, path, "--json").stdout)
    assert [s.split(":")[0] for s in info["signatures"]] == ["hsm-1"]
    v = kiln(
        "store", "verify", "--store", st, "--trusted-key", str(tmp_path / "hsm.pub"), "--sigs-needed", "1"
    )
    assert v.returncode == 0, v.stdout + v.stderr

    again = kiln(
        "store",
        "sign",
        "--store",
        st,
        "--signer-cmd",
        cmd,
        "--signer-key",
        str(tmp_path / "hsm.pub"),
        "--all",
    )
    assert again.stdout.strip() == "signed 0 paths (1 carried this key's signature already)"

    # a signer answering with another key's signature is refused, nothing added (a path
    # not signed yet: one that is is not signed again, so its signer is not even asked)
    path = kiln("store", "add", "--store", st, str(make_tree(tmp_path / "t2", {"b": "y\n"}))).stdout.strip()
    other = SecretKey.generate("hsm-1")
    write_secret_key(tmp_path / "other.sec", other)
    (tmp_path / "l").mkdir()
    liar = _signer(tmp_path / "l", tmp_path / "other.sec")
    bad = kiln(
        "store", "sign", "--store", st, "--signer-cmd", liar, "--signer-key", str(tmp_path / "hsm.pub"), path
    )
    assert bad.returncode == 1 and "does not verify under public key" in bad.stderr
    info = json.loads(kiln("store", "info", "--store", st, path, "--json").stdout)
    assert info["signatures"] == []


def test_store_sign_usage_errors(tmp_path: Path) -> None:
    st = str(tmp_path / "st")
    path = kiln("store", "add", "--store", st, str(make_tree(tmp_path / "t", {"a": "x\n"}))).stdout.strip()
    r = kiln("store", "sign", "--store", st, path)
    assert r.returncode == 2 and "--key FILE, or --signer-cmd CMD --signer-key PUB" in r.stderr
    r = kiln("store", "sign", "--store", st, "--signer-key", "x:y", "--key", "k", path)
    assert r.returncode == 2 and "only meaningful with --signer-cmd" in r.stderr
    r = kiln("store", "sign", "--store", st, "--signer-cmd", "true", path)
    assert r.returncode != 0 and "needs its public key" in r.stderr
