"""ed25519 keys and path signatures: RFC 8032 vectors, Nix text formats, trust rules,
key files; and (with Nix) interoperability with ``nix key``, ``nix store sign`` and
``nix store verify`` on an input-addressed build output."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from fmtkit import NEW_CLI, NIX_OPTS, nix, run

from kiln.store.errors import FormatError, KilnError
from kiln.store.hashes import Hash
from kiln.store.keyfiles import load_public_key, load_secret_key, write_public_key, write_secret_key
from kiln.store.pathinfo import PathInfo
from kiln.store.signing import PublicKey, SecretKey, sign_info, valid_signers

# RFC 8032 section 7.1, tests 1 and 2: (seed, public, message, signature), hex.
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


def b64(h: str) -> str:
    return base64.b64encode(bytes.fromhex(h)).decode()


def info(**kw) -> PathInfo:
    base = dict(
        path="/nix/store/fkkph61ilz8i4ls15kgzaqydv22n5vgs-golden-out",
        nar_hash=Hash.sha256_of(b"nar"),
        nar_size=176,
        references=("/nix/store/4chcqkl41xk5hfvvbzlpakiv8z602i6h-golden-dep.txt",),
    )
    base.update(kw)
    return PathInfo(**base)


@pytest.mark.parametrize(("seed", "pub", "msg", "sig"), RFC8032)
def test_rfc8032_vectors_in_nix_text_form(seed: str, pub: str, msg: str, sig: str) -> None:
    sk = SecretKey.parse(f"rfc:{b64(seed + pub)}")
    assert sk.public() == PublicKey.parse(f"rfc:{b64(pub)}")
    assert sk.public().to_text() == f"rfc:{b64(pub)}"
    assert sk.to_text() == f"rfc:{b64(seed + pub)}"
    assert sk.sign(bytes.fromhex(msg)) == f"rfc:{b64(sig)}"
    assert sk.public().verify(bytes.fromhex(msg), f"rfc:{b64(sig)}")


def test_generate_sign_verify() -> None:
    sk = SecretKey.generate("cache.example-1")
    pk = sk.public()
    s = sk.sign(b"data")
    assert s.startswith("cache.example-1:") and len(base64.b64decode(s.split(":")[1])) == 64
    assert pk.verify(b"data", s)
    assert not pk.verify(b"datA", s)
    assert not SecretKey.generate("cache.example-1").public().verify(b"data", s)  # same name, other key
    assert not pk.verify(b"data", "other:" + s.split(":")[1])  # wrong name
    for junk in ("", "cache.example-1", "cache.example-1:", "cache.example-1:!!!", "cache.example-1:AAAA"):
        assert not pk.verify(b"data", junk)
    # non-ASCII base64 (a hostile narinfo's Sig: line) is invalid, not a ValueError
    assert not pk.verify(b"data", "cache.example-1:\u00e9" + s.split(":")[1][1:])
    assert SecretKey.parse(sk.to_text()) == sk and PublicKey.parse(pk.to_text()) == pk
    assert base64.b64encode(sk.key).decode() not in repr(sk)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("nocolon", "found no ':'"),
        (":AAAA", "must be non-empty"),
        ("a b:AAAA", "without ':' or whitespace"),
        ("k:not base64!", "invalid base64"),
        ("k:\u00e9" + "A" * 87, "invalid base64"),
        ("k:" + base64.b64encode(b"x" * 32).decode(), "expected 64 bytes, found 32"),
    ],
)
def test_secret_key_parse_errors(text: str, pattern: str) -> None:
    with pytest.raises(FormatError, match=pattern):
        SecretKey.parse(text)


def test_secret_key_halves_must_match() -> None:
    a, b = SecretKey.generate("a"), SecretKey.generate("a")
    with pytest.raises(FormatError, match="does not match"):
        SecretKey("a", a.key[:32] + b.key[32:])
    with pytest.raises(FormatError, match="expected 32 bytes"):
        PublicKey.parse("a:" + base64.b64encode(a.key).decode())


def test_sign_info_and_valid_signers() -> None:
    k1, k2, k3 = SecretKey.generate("k1"), SecretKey.generate("k2"), SecretKey.generate("k3")
    i = info()
    s1, s2 = sign_info(i, k1), sign_info(i, k2)
    assert s1 == k1.sign(i.fingerprint())
    trusted = [k1.public(), k2.public()]
    assert valid_signers(replace(i, sigs=(s1, s2)), trusted) == {"k1", "k2"}
    # the same key signing twice counts once
    assert valid_signers(replace(i, sigs=(s1, s1)), trusted) == {"k1"}
    # ... also when it is trusted (and signs) under two names
    alias = SecretKey("k1-alias", k1.key)
    both = [k1.public(), alias.public()]
    assert len(valid_signers(replace(i, sigs=(s1, sign_info(i, alias))), both)) == 1
    # an untrusted signer does not count; no trusted keys -> nothing
    assert valid_signers(replace(i, sigs=(sign_info(i, k3),)), trusted) == set()
    assert valid_signers(replace(i, sigs=(s1,)), []) == set()
    # a signature by a different key that reuses a trusted name does not count
    impostor = SecretKey.generate("k1")
    assert valid_signers(replace(i, sigs=(sign_info(i, impostor),)), trusted) == set()
    # the fingerprint covers path, NAR hash, NAR size and references
    for changed in (
        replace(i, nar_size=177),
        replace(i, nar_hash=Hash.sha256_of(b"other")),
        replace(i, references=()),
        replace(i, path="/nix/store/fkkph61ilz8i4ls15kgzaqydv22n5vgs-golden-ouT"),
    ):
        assert valid_signers(replace(changed, sigs=(s1,)), trusted) == set()
    # ...but not the deriver or the compressed-file fields
    assert valid_signers(replace(i, sigs=(s1,), deriver="/nix/store/x.drv", file_size=1), trusted) == {"k1"}
    # malformed signatures are ignored, not fatal
    assert valid_signers(replace(i, sigs=("garbage", "k1:", s1)), trusted) == {"k1"}


def test_key_files(tmp_path: Path) -> None:
    sk = SecretKey.generate("files-1")
    p = tmp_path / "k.sec"
    write_secret_key(p, sk)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert load_secret_key(p) == sk
    assert p.read_text() == sk.to_text()
    with pytest.raises(KilnError, match="already exists"):
        write_secret_key(p, SecretKey.generate("other"))
    assert load_secret_key(p) == sk  # untouched
    write_secret_key(p, SecretKey.generate("other"), overwrite=True)
    assert load_secret_key(p).name == "other"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["k.sec"]  # no temp files left
    write_public_key(tmp_path / "k.pub", sk.public())
    assert load_public_key(tmp_path / "k.pub") == sk.public()
    (tmp_path / "bad").write_text("x:y")
    with pytest.raises(FormatError, match=r"bad is accessible by group/others \(mode 644\); run: chmod 600"):
        load_secret_key(tmp_path / "bad")  # checked before the content is even read
    os.chmod(tmp_path / "bad", 0o600)
    with pytest.raises(FormatError, match=r"bad: secret key 'x': invalid base64"):
        load_secret_key(tmp_path / "bad")
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    with pytest.raises(FormatError, match="not a public key file"):
        load_public_key(tmp_path / "bin")


# ---------------------------------------------------------------------------- with Nix


@pytest.fixture(scope="module")
def ia_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An input-addressed output built by nix-build (CA paths verify without signatures,
    so they would prove nothing)."""
    d = tmp_path_factory.mktemp("sigbuild")
    (d / "p.nix").write_text(
        'let dep = builtins.toFile "kiln-sig-dep.txt" "dep\\n"; in derivation { name = "kiln-sig-test";'
        ' system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo ${dep} > $out" ]; }'
    )
    return run("nix-build", *NIX_OPTS, "--no-out-link", d / "p.nix").decode().strip()


def _nix_info(path: str) -> PathInfo:
    j = json.loads(nix("path-info", "--json", path))[0]
    return PathInfo(
        path=j["path"],
        nar_hash=Hash.parse(j["narHash"]),
        nar_size=j["narSize"],
        references=tuple(j.get("references", ())),
        sigs=tuple(j.get("signatures", ())),
    )


@pytest.mark.nix
def test_nix_generated_key_parses_and_signs_like_nix(tmp_path: Path, ia_path: str) -> None:
    sec = nix("key", "generate-secret", "--key-name", "nixmade-1")
    pub = nix("key", "convert-secret-to-public", stdin=sec.encode())
    sk = SecretKey.parse(sec)
    assert sk.to_text() == sec and sk.public().to_text() == pub.strip()
    (tmp_path / "sk").write_text(sec)
    nix("store", "sign", "--key-file", tmp_path / "sk", ia_path)
    nixinfo = _nix_info(ia_path)
    ours = sign_info(nixinfo, sk)
    assert ours in nixinfo.sigs  # byte-identical signature (ed25519 is deterministic)
    assert valid_signers(nixinfo, [PublicKey.parse(pub)]) == {"nixmade-1"}


@pytest.mark.nix
def test_kiln_key_and_signature_accepted_by_nix_store_verify(tmp_path: Path, ia_path: str) -> None:
    sk = SecretKey.generate("kilnmade-1")
    write_secret_key(tmp_path / "k.sec", sk)
    pk = sk.public().to_text()
    verify = ["nix", *NEW_CLI, *NIX_OPTS, "store", "verify", "--no-contents", "--sigs-needed", "1"]
    # before: no signature by this key -> Nix refuses
    before = subprocess.run([*verify, "--trusted-public-keys", pk, ia_path], capture_output=True)
    assert before.returncode != 0
    # Nix signs with kiln's key file; the signature it stores is exactly kiln's
    nix("store", "sign", "--key-file", tmp_path / "k.sec", ia_path)
    nixinfo = _nix_info(ia_path)
    assert sign_info(nixinfo, sk) in nixinfo.sigs
    run(*verify, "--trusted-public-keys", pk, ia_path)
    # and a different key with the same name is rejected by both
    other = SecretKey.generate("kilnmade-1").public()
    assert subprocess.run(
        [*verify, "--trusted-public-keys", other.to_text(), ia_path], capture_output=True
    ).returncode
    assert valid_signers(nixinfo, [other]) == set()
    assert os.stat(tmp_path / "k.sec").st_mode & 0o077 == 0
