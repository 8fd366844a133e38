"""``kiln verify DIR#PATH`` (a registry directory named by a plain path, as on removable
media) judged the *local store's* copy of PATH: tampered media passed whenever the
verifying machine held the path. A target with ``#`` is a registry target whatever the
form of its registry (``#`` is in no store path), and a path outside the store is not
taken for the store's path of the same last component."""

from __future__ import annotations

import os
from pathlib import Path

from regkit import Keys, add_tree, kiln, make_store

from kiln.registry import layout
from kiln.registry.client import open_client
from kiln.registry.push import push


def test_a_plain_directory_target_reads_the_media_not_the_local_store(tmp_path: Path) -> None:
    keys = Keys(tmp_path, "fw-build-1")
    home = tmp_path / "home"
    store = make_store(home)
    path = add_tree(store, tmp_path, "firmware", "image\n" * 1000)
    media = tmp_path / "media" / "reg"
    push(store, [path], lambda: open_client(f"file://{media}"), sign_key=keys.sk, progress=False)
    info = store.query(path)
    store.close()
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[keys]\nsigning = ["{keys.pk}"]\n[require]\nsignatures = 1\n')
    env = {**os.environ, "KILN_HOME": str(home)}
    for target in (f"{media}#{path}", f"file://{media}#{path}"):
        r = kiln("verify", target, "--policy", str(policy), env=env)
        assert r.returncode == 0, (target, r.stdout, r.stderr)
    # the object on the media is tampered with; the local store's copy is intact
    blob = media / layout.blob_key(info.file_hash)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x55
    blob.write_bytes(bytes(data))
    for target in (f"{media}#{path}", f"file://{media}#{path}"):
        r = kiln("verify", target, "--policy", str(policy), env=env)
        assert r.returncode == 1, (target, r.stdout, r.stderr)
    # a path outside the store is not the store's path of the same name
    r = kiln("verify", f"/nonexistent/x/{path.rsplit('/', 1)[1]}", "--policy", str(policy), env=env)
    assert r.returncode == 3 and "is not a path in the store" in r.stdout and "DIR#PATH" in r.stdout


def test_a_refused_attestation_does_not_hide_the_path_s_other_checks(tmp_path: Path) -> None:
    """An attestation the fetch refused (another path's provenance, under this path's
    name) made the report that one line: the path's own checks (its signatures, its
    content) were not shown at all."""
    import json

    from test_attestations import provenance

    from kiln.registry.attest_transfer import rebuild_listing
    from kiln.registry.storage import FileStorage
    from kiln.store import attestations

    keys = Keys(tmp_path, "fw-build-1")
    store = make_store(tmp_path / "home")
    path = add_tree(store, tmp_path, "firmware", "image\n" * 1000)
    other = add_tree(store, tmp_path, "other", "another image\n")
    attestations.write(store, path, "provenance", provenance(store, path, keys.sk))
    swapped = provenance(store, other, keys.sk)  # (validly signed: of another path)
    media = tmp_path / "media" / "reg"
    push(store, [path], lambda: open_client(f"file://{media}"), sign_key=keys.sk, progress=False)
    store.close()
    hp = path.rsplit("/", 1)[1][:32]
    (media / layout.att_key(hp, "provenance")).write_bytes(swapped.dumps().encode())
    rebuild_listing(FileStorage(media), hp)  # (as listed: only its subject tells)
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[keys]\nsigning = ["{keys.pk}"]\n[require]\nsignatures = 1\n')
    r = kiln(
        "verify",
        f"{media}#{path}",
        "--policy",
        str(policy),
        "--json",
        env={**os.environ, "KILN_HOME": str(tmp_path / "h2")},
    )
    assert r.returncode == 1, r.stdout + r.stderr
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert not checks["attestations"]["ok"] and "does not name" in checks["attestations"]["detail"], checks
    assert checks["signatures"]["ok"] and checks["content"]["ok"], checks
