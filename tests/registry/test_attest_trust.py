"""A registry cannot plant attestations in a store (``registry.attest_fetch``): a fetched
attestation is stored only if a key the copy or substitution trusts signed it, and a
forged one, however future-dated, neither replaces a trusted local one nor keeps a
genuine one out. Skips are warnings, not failures."""

from __future__ import annotations

import asyncio

from regkit import kiln
from test_attestations import Setup, provenance, store_with_paths

from kiln.registry import layout
from kiln.registry.attest_fetch import fetch_attestations
from kiln.registry.attest_transfer import rebuild_listing
from kiln.registry.httpclient import HttpClient
from kiln.registry.storage import FileStorage
from kiln.store import attestations, intoto
from kiln.store.dsse import Ed25519Signer, Envelope
from kiln.store.localstore import LocalStore
from kiln.store.paths import StorePath


def _forged(s: Setup, sk, finished: str = "2999-01-01T00:00:00Z") -> Envelope:  # noqa: ANN001
    """A provenance for ``s.app``'s real content signed by ``sk``, dated ``finished``."""
    st = intoto.parse_statement(provenance(s.store, s.app, sk, {"forged": True}).payload)
    st.predicate["runDetails"]["metadata"]["finishedOn"] = finished
    subject = [intoto.subject(StorePath.parse(s.app).base, s.store.query(s.app).nar_hash.hex)]
    return attestations.sign(
        intoto.statement(subject, st.predicate_type, st.predicate), [Ed25519Signer(sk.key)]
    )


def _plant(s: Setup, env: Envelope) -> None:
    """What a hostile registry serves: the envelope on disk, listed (no admission)."""
    storage = FileStorage(s.reg)
    storage.put_bytes(layout.att_key(s.hp(s.app), "provenance"), env.dumps().encode())
    rebuild_listing(storage, s.hp(s.app))


def _copy(s: Setup, store_root, keys) -> tuple[int, str]:  # noqa: ANN001
    r = kiln(
        "copy", "--store", str(store_root), "--from", s.url, "--to", "store", s.app,
        "--trusted-key", str(keys.pk_file),
    )  # fmt: skip
    return r.returncode, r.stderr


def test_a_forged_attestation_does_not_replace_a_trusted_one(tmp_path, keys, other_keys, kiln_server) -> None:
    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.app)
    d = tmp_path / "d"
    code, err = _copy(s, d, keys)
    assert code == 0, err
    genuine = attestations.read(s.store, s.app, "provenance")
    with LocalStore.open(d) as other:
        assert attestations.read(other, s.app, "provenance") == genuine
    _plant(s, _forged(s, other_keys.sk))
    # copying the path again (already valid here): the forged one is skipped, with why
    code, err = _copy(s, d, keys)
    assert code == 0, err
    assert "attestation from" in err and "skipped" in err and "not signed by a trusted key" in err, err
    with LocalStore.open(d) as other:
        assert attestations.read(other, s.app, "provenance") == genuine
    # a fresh store gets the path but not the forged attestation
    code, err = _copy(s, tmp_path / "fresh", keys)
    assert code == 0 and "not signed by a trusted key" in err, err
    with LocalStore.open(tmp_path / "fresh") as fresh:
        assert fresh.is_valid(s.app) and attestations.list(fresh, s.app) == []


def test_a_forged_future_dated_local_one_gives_way_to_a_trusted_one(
    tmp_path, keys, other_keys, kiln_server
) -> None:
    """A store that holds a forged, future-dated provenance (fetched before fetches
    checked signers) takes the genuine one: an untrusted claim of time pins nothing."""
    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.app)
    other = store_with_paths(s, tmp_path / "other")
    attestations.write(other, s.app, "provenance", _forged(s, other_keys.sk))

    async def fetch(trusted) -> int:  # noqa: ANN001
        async with HttpClient(s.url) as c:
            return await fetch_attestations(c, other, [s.app], trusted=trusted)

    assert asyncio.run(fetch([keys.pk])) == 1
    assert attestations.read(other, s.app, "provenance") == attestations.read(s.store, s.app, "provenance")
    # a trusted, newer local one is kept against an older trusted one
    newer = _forged(s, keys.sk)  # (signed by the trusted key: genuine, and newer)
    attestations.write(other, s.app, "provenance", newer)
    assert asyncio.run(fetch([keys.pk])) == 0
    assert attestations.read(other, s.app, "provenance") == newer
    # nothing trusted: nothing stored
    fresh = store_with_paths(s, tmp_path / "fresh")

    async def fetch_fresh() -> int:
        async with HttpClient(s.url) as c:
            return await fetch_attestations(c, fresh, [s.app], trusted=[])

    assert asyncio.run(fetch_fresh()) == 0 and attestations.list(fresh, s.app) == []


def test_a_newer_local_one_signed_by_the_store_s_own_key_is_kept(tmp_path, keys, kiln_server) -> None:
    """A path whose local provenance the store's own build key (``keys/default.pub``)
    signed keeps it when a registry offers an older one, even one a trusted key signed:
    only a local one that neither signed gives way."""
    from kiln.store.keyfiles import write_public_key, write_secret_key
    from kiln.store.signing import SecretKey

    s = Setup(tmp_path, keys, kiln_server)
    s.push(s.app)
    d = tmp_path / "d"
    code, err = _copy(s, d, keys)
    assert code == 0, err
    own = SecretKey.generate("own-1")
    (d / "keys").mkdir(mode=0o700, exist_ok=True)
    write_secret_key(d / "keys" / "default.sec", own)
    write_public_key(d / "keys" / "default.pub", own.public())
    mine = _forged(s, own, "2999-01-01T00:00:00Z")
    with LocalStore.open(d) as st:
        attestations.write(st, s.app, "provenance", mine)
    code, err = _copy(s, d, keys)
    assert code == 0 and "the local one is newer" in err, err
    with LocalStore.open(d) as st:
        assert attestations.read(st, s.app, "provenance") == mine
