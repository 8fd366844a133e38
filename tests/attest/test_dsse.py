"""DSSE: the spec's own test vectors (secure-systems-lab/dsse testvectors/vectors.json,
Ed25519 RFC 8032 keys), plus round trips with kiln's keyids and an external signer."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from kiln.store import dsse
from kiln.store.errors import FormatError, KilnError
from kiln.store.signcmd import CommandSigner

VECTORS = json.loads((Path(__file__).parent / "data" / "dsse_vectors.json").read_text(encoding="utf-8"))
KEYS = {name: bytes.fromhex(k["public"]) for name, k in VECTORS["keys"].items()}
SEEDS = {name: bytes.fromhex(k["seed"]) for name, k in VECTORS["keys"].items()}


def _outcome(v: dict) -> str:
    try:
        env = dsse.Envelope.from_dict(v["envelope"])
        dsse.verify(env, {n: KEYS[n] for n in v["trustedKeys"]}, v["threshold"], v["supportedPayloadTypes"])
    except (dsse.DsseError, FormatError):
        return "reject"
    return "accept"


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=[v["id"] for v in VECTORS["vectors"]])
def test_spec_vectors(vector: dict) -> None:
    assert _outcome(vector) == vector["expect"]
    # ``pae`` is what the signatures cover; for "payload-type-swapped" that is not the
    # envelope's own PAE (which is why it is rejected), as in the spec's check_reference.py.
    if vector["expect"] == "accept":
        assert dsse.Envelope.from_dict(vector["envelope"]).pae().hex() == vector["pae"]


def test_signing_reproduces_vector_signature() -> None:
    v = VECTORS["vectors"][0]
    env = dsse.Envelope.from_dict(v["envelope"])
    signed = dsse.sign(env.payload, [dsse.Ed25519Signer(SEEDS["A"])], env.payload_type)
    assert dsse.b64encode(signed.signatures[0].sig) == v["envelope"]["signatures"][0]["sig"]
    assert signed.signatures[0].keyid == dsse.keyid(KEYS["A"])


def test_pae_documented_examples() -> None:
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert dsse.pae(dsse.PAYLOAD_TYPE, b"") == b"DSSEv1 28 application/vnd.in-toto+json 0 "


def test_roundtrip_and_tamper() -> None:
    s = dsse.Ed25519Signer(SEEDS["B"])
    env = dsse.sign(b'{"x":1}', [s])
    back = dsse.Envelope.loads(env.dumps())
    assert back == env
    assert dsse.verify(back, {"b": KEYS["B"]}).signed_by == ("b",)
    tampered = dsse.Envelope(env.payload_type, b'{"x":2}', env.signatures)
    with pytest.raises(dsse.DsseError, match="0 valid signature"):
        dsse.verify(tampered, {"b": KEYS["B"]})
    with pytest.raises(dsse.DsseError):
        dsse.verify(env, {"a": KEYS["A"]})


def test_malformed_envelopes() -> None:
    for bad in ("[]", "{}", '{"payload":"!!","payloadType":"x","signatures":[]}', "nope"):
        with pytest.raises(FormatError):
            dsse.Envelope.loads(bad)


def test_command_signer(tmp_path: Path) -> None:
    seed_file = tmp_path / "seed"
    seed_file.write_text(SEEDS["A"].hex())
    script = tmp_path / "signer.py"
    script.write_text(
        "import base64, sys, nacl.signing\n"
        f"k = nacl.signing.SigningKey(bytes.fromhex(open({str(seed_file)!r}).read()))\n"
        "print(base64.b64encode(k.sign(sys.stdin.buffer.read()).signature).decode())\n"
    )
    cmd = f"{sys.executable} {script}"
    env = dsse.sign(b"payload", [CommandSigner(cmd, KEYS["A"])])
    assert dsse.verify(env, {"a": KEYS["A"]}).signed_by == ("a",)
    # The wrong public key configured: the signer's output is checked before use.
    with pytest.raises(KilnError, match="does not verify"):
        dsse.sign(b"payload", [CommandSigner(cmd, KEYS["B"])])
    with pytest.raises(KilnError, match="exited with status"):
        dsse.sign(b"payload", [CommandSigner(f"{sys.executable} -c 'import sys; sys.exit(3)'", KEYS["A"])])


def test_command_signer_that_hangs_is_killed_with_its_children(tmp_path: Path) -> None:
    # a wrapper script whose child hangs: the timeout must not leave the child running
    pidfile = tmp_path / "child.pid"
    script = tmp_path / "hang.sh"
    script.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nwait\n")
    script.chmod(0o755)
    t0 = time.monotonic()
    with pytest.raises(KilnError, match=r"did not answer within 1 s \(killed with its children\)"):
        dsse.sign(b"payload", [CommandSigner(str(script), KEYS["A"], timeout=1.0)])
    assert time.monotonic() - t0 < 30
    child = int(pidfile.read_text())
    for _ in range(50):  # (the kernel reaps it once init has waited)
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the signer's child {child} outlived the timeout")
