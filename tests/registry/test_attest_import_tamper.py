"""Carrying signed closures to an offline machine (``kiln copy --from file://MEDIA --to
store --trusted-key K``): an attestation on the media that claims a signer the copy
trusts but does not verify was tampered with, and the copy says so and fails
(``registry.attest_fetch``), where it used to drop it with a warning and exit 0 (so a
policy that did not require that kind then passed). One signed only by a signer unknown
here (a rebuilder's, say) stays a skip with a warning. The paths themselves, checked by
their own signatures, are imported and rooted either way. Real ``file://`` registries
and stores, the real CLI."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from attestkit import signed_provenance
from regkit import Keys, add_built, kiln, make_store

from kiln.registry import layout
from kiln.registry.attest_transfer import rebuild_listing
from kiln.registry.client import open_client
from kiln.registry.push import push
from kiln.registry.storage import FileStorage
from kiln.store import attestations, intoto
from kiln.store.dsse import Ed25519Signer, Envelope, keyid
from kiln.store.localstore import LocalStore
from kiln.store.pathadmit import keep_sigs
from kiln.store.paths import StorePath
from kiln.store.signing import SecretKey, sign_info


def sbom_of(store: LocalStore, path: str, sk: SecretKey, note: str = "") -> Envelope:
    """A CycloneDX SBOM attestation of ``path`` (valid in ``store``) signed by ``sk``."""
    doc = {"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1, "metadata": {"note": note}}
    subject = [intoto.subject(StorePath.parse(path).base, store.query(path).nar_hash.hex)]
    return attestations.sign(intoto.statement(subject, intoto.CYCLONEDX_TYPE, doc), [Ed25519Signer(sk.key)])


class Media:
    """A build store with ``dep`` <- ``app``, each with a provenance and an SBOM signed
    by ``att_keys``; both paths pushed, signed by ``path_keys``, to a registry directory
    (the removable media) read as ``file://``."""

    def __init__(self, tmp: Path, path_keys: Keys, att_keys: Keys) -> None:
        self.tmp = tmp
        self.store = make_store(tmp / "build")
        self.dep = add_built(self.store, tmp, "dep", "dependency")
        self.app = add_built(self.store, tmp, "app", "application", (self.dep,))
        for p in (self.dep, self.app):
            attestations.write(self.store, p, "provenance", signed_provenance(self.store, p, att_keys.sk))
            attestations.write(self.store, p, "sbom", sbom_of(self.store, p, att_keys.sk))
        self.reg = tmp / "media"
        self.url = f"file://{self.reg}"
        push(self.store, [self.app], lambda: open_client(self.url), sign_key=path_keys.sk, progress=False)
        assert sorted(json.loads(self._listing().read_bytes())["kinds"]) == ["provenance", "sbom"]

    def hp(self) -> str:
        return self.app.rsplit("/", 1)[1][:32]

    def _listing(self) -> Path:
        return self.reg / layout.att_listing_key(self.hp())

    def att(self, kind: str) -> Path:
        return self.reg / layout.att_key(self.hp(), kind)

    def edit(self, kind: str, change: Callable[[dict], None]) -> None:
        """Change the ``kind`` envelope on the media as whoever held it could, listing
        included (so the file matches its listing entry: only its signature tells)."""
        env = json.loads(self.att(kind).read_bytes())
        change(env)
        self.att(kind).write_text(json.dumps(env))
        rebuild_listing(FileStorage(self.reg), self.hp())

    def copy(self, dest: Path, *args: str, root: str = "fw"):  # noqa: ANN201 - CompletedProcess
        return kiln(
            "copy", "--from", self.url, "--to", "store", "--store", str(dest), "--add-root", root, self.app, *args
        )  # fmt: skip


def _payload(env: dict) -> dict:
    return json.loads(base64.b64decode(env["payload"]))


def _set_payload(env: dict, st: dict) -> None:
    env["payload"] = base64.b64encode(json.dumps(st).encode()).decode()


def _flip_sig(env: dict) -> None:
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[5] ^= 1
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()


def _edit_payload(env: dict) -> None:  # the statement changed, its signature kept
    st = _payload(env)
    st["predicate"]["metadata"]["note"] = "edited"
    _set_payload(env, st)


def _forge(env: dict) -> None:
    """The statement changed and signed again by another key, which writes the trusted
    key's id in its signature (a keyid is only a hint: anyone can write any)."""
    claimed = env["signatures"][0]["keyid"]
    st = _payload(env)
    st["predicate"]["metadata"]["note"] = "forged"
    forged = attestations.sign(st, [Ed25519Signer(SecretKey.generate("build-1").key)]).to_dict()
    forged["signatures"][0]["keyid"] = claimed
    env.clear()
    env.update(forged)


def _unsign(env: dict) -> None:
    env["signatures"] = []


TAMPERING = {"signature": _flip_sig, "payload": _edit_payload, "forged": _forge, "unsigned": _unsign}


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_a_tampered_attestation_fails_the_copy_and_names_itself(tmp_path: Path, how: str) -> None:
    """Before: a warning, exit 0, and a policy not requiring an SBOM passed (the unsigned
    case exited 1 but made no GC root). Now every case: exit 1, "tampering found" with
    the path, the kind and why; the paths and the provenance are stored, the path is
    rooted, the SBOM is not stored; a second copy (the path already here) fails again."""
    build = Keys(tmp_path, "build-1")
    m = Media(tmp_path, build, build)
    m.edit("sbom", TAMPERING[how])
    dest = tmp_path / "offline"
    for _ in range(2):
        r = m.copy(dest, "--trusted-key", str(build.pk_file))
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "tampering found: 1 attestation(s)" in r.stderr, r.stderr
        assert f"{m.app} sbom: tampered with: " in r.stderr, r.stderr
        if how == "unsigned":
            assert "it has no signature" in r.stderr, r.stderr
        else:
            kid = keyid(build.pk.key)[:16]
            assert f"in the name of trusted key 'build-1' (keyid {kid}...) does not verify" in r.stderr, (
                r.stderr
            )
        assert "the paths were copied into" in r.stderr and "Traceback" not in r.stderr, r.stderr
        with LocalStore.open(dest) as st:
            assert st.is_valid(m.app) and st.is_valid(m.dep)
            assert attestations.list(st, m.app) == ["provenance"]
        assert (dest / "gcroots" / "fw").is_symlink()


def test_an_unknown_signer_s_attestation_is_skipped_not_refused(tmp_path: Path) -> None:
    """Signed by a key unknown here under its own id (a rebuilder's, another builder's):
    nothing claims a trusted signer, so it is the documented skip (a warning, exit 0)."""
    build, stranger = Keys(tmp_path, "build-1"), Keys(tmp_path, "stranger-1")
    m = Media(tmp_path, build, build)
    m.att("sbom").write_bytes(sbom_of(m.store, m.app, stranger.sk, "a stranger's").dumps().encode())
    rebuild_listing(FileStorage(m.reg), m.hp())
    dest = tmp_path / "offline"
    r = m.copy(dest, "--trusted-key", str(build.pk_file))
    assert r.returncode == 0, r.stderr
    assert "tamper" not in r.stderr, r.stderr
    assert f"skipped: {m.app} sbom: not signed by a trusted key" in r.stderr, r.stderr
    with LocalStore.open(dest) as st:
        assert attestations.list(st, m.app) == ["provenance"]
    assert (dest / "gcroots" / "fw").is_symlink()


def test_the_dropped_signature_warning_tells_untrusted_from_invalid(tmp_path: Path) -> None:
    """``keep_sigs`` said "not valid by a trusted key" of a valid signature by a key not
    trusted here; it now tells that apart from one in a trusted key's name that is not
    valid by it. The copy of a path signed by two keys, one trusted: no alarm word."""
    build, old = Keys(tmp_path, "build-1"), Keys(tmp_path, "old-1")
    m = Media(tmp_path, build, build)
    push(m.store, [m.app], lambda: open_client(m.url), sign_key=old.sk, progress=False)  # a 2nd Sig:
    r = m.copy(tmp_path / "offline", "--trusted-key", str(build.pk_file))
    assert r.returncode == 0, r.stderr
    assert f"{m.app}: keeping 1 of its 2 signatures (1 not by a trusted key dropped)" in r.stderr, r.stderr
    info = m.store.query(m.app)
    impostor = sign_info(info, SecretKey.generate("build-1"))  # the trusted key's name, another key
    unknown = sign_info(info, old.sk)
    genuine = sign_info(info, build.sk)
    kept, why = keep_sigs(dataclasses.replace(info, sigs=(impostor, unknown, genuine)), [build.pk])
    assert kept.sigs == (genuine,), why
    assert "(1 not by a trusted key, 1 in a trusted key's name but not valid by it dropped)" in why, why
