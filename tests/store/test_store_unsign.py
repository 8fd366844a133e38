"""``kiln store unsign --key PUB PATH...|--all`` removes every signature a key made (after
revoking it), whatever name the signature carries, and lists each one it removed; other
keys' signatures, and ones that only borrow the key's name, stay. Before it there was no
way to remove a signature from a store at all. Real stores, real ``kiln`` processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from storekit import make_tree

from kiln.store.keyfiles import write_public_key
from kiln.store.localstore import LocalStore
from kiln.store.signing import PublicKey, SecretKey, sign_info


def kiln(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args],
        env={**os.environ, "KILN_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_unsign_removes_every_signature_by_the_key_and_lists_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    revoked, kept = SecretKey.generate("rel-1"), SecretKey.generate("rel-2")
    disguised = SecretKey("rel-2", revoked.key)  # the revoked key, signing as rel-2
    impostor = SecretKey.generate("rel-1")  # another key that borrows the name
    with LocalStore.open(home) as s:
        a = s.add_path(make_tree(tmp_path / "a", {"f": "a\n"}), "a")
        b = s.add_path(make_tree(tmp_path / "b", {"f": "b\n"}), "b")
        c = s.add_path(make_tree(tmp_path / "c", {"f": "c\n"}), "c")
        s.add_signatures(a.path, [sign_info(a, revoked), sign_info(a, kept), sign_info(a, disguised)])
        s.add_signatures(b.path, [sign_info(b, kept), sign_info(b, impostor)])
        s.add_signatures(c.path, [sign_info(c, revoked)])
        before = {p.path: set(s.query(p.path).sigs) for p in (a, b, c)}
    pub = tmp_path / "rel-1.pub"
    write_public_key(pub, revoked.public())

    r = kiln(home, "store", "unsign", "--key", str(pub), a.path)  # one path
    assert r.returncode == 0, r.stderr
    gone_a = {sign_info(a, revoked), sign_info(a, disguised)}
    assert set(r.stdout.splitlines()) == {f"{a.path} {sig}" for sig in gone_a}
    assert f"removed 2 signature(s) by {revoked.public().to_text()} from 1 of 1 path(s)" in r.stderr
    with LocalStore.open(home) as s:
        assert set(s.query(a.path).sigs) == before[a.path] - gone_a == {sign_info(a, kept)}
        assert set(s.query(c.path).sigs) == before[c.path]  # not named: untouched

    r = kiln(home, "store", "unsign", "--key", revoked.public().to_text(), "--all")  # key text too
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{c.path} {sign_info(c, revoked)}\n"
    with LocalStore.open(home) as s:
        assert s.query(c.path).sigs == ()
        assert set(s.query(b.path).sigs) == before[b.path]  # the impostor's rel-1 is not rel-1's key's
        for p in (a, b, c):
            info = s.query(p.path)
            assert not any(
                PublicKey(x.partition(":")[0], revoked.key[32:]).verify(info.fingerprint(), x)
                for x in info.sigs
            )

    r = kiln(home, "store", "unsign", "--key", str(pub), "--all")  # nothing left: still exit 0
    assert r.returncode == 0 and r.stdout == "" and "removed 0 signature(s)" in r.stderr


def test_unsign_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with LocalStore.open(home) as s:
        p = s.add_path(make_tree(tmp_path / "a", {"f": "a\n"}), "a").path
    key = SecretKey.generate("k-1")
    r = kiln(home, "store", "unsign", "--key", key.public().to_text())
    assert r.returncode == 2 and "give store paths to unsign, or --all" in r.stderr
    r = kiln(home, "store", "unsign", "--key", key.public().to_text(), "--all", p)
    assert r.returncode == 2
    r = kiln(home, "store", "unsign", "--key", key.to_text(), p)  # a secret key: never echoed
    assert r.returncode == 1 and key.to_text().partition(":")[2][:20] not in r.stderr, r.stderr
    r = kiln(home, "store", "unsign", "--key", key.public().to_text(), "/kiln/store/" + "0" * 32 + "-x")
    assert r.returncode == 1 and "not valid" in r.stderr, r.stderr
