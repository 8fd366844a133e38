"""kiln key rotate / revoke, checked through kiln verify with the resulting policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def kiln(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KILN_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "kiln", *args], env=env, capture_output=True, text=True)


def _setup(tmp_path: Path):
    home = tmp_path / "home"
    assert kiln(home, "key", "generate", "rel-1").returncode == 0
    assert kiln(home, "store", "init").returncode == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    path = kiln(home, "store", "add", str(src)).stdout.strip()
    assert kiln(home, "store", "sign", "--key", str(home / "keys" / "rel-1.sec"), path).returncode == 0
    return home, path


def test_rotate_resigns_and_revoke_compromised_rejects_old_signatures(tmp_path):
    home, path = _setup(tmp_path)
    old_pub = kiln(home, "key", "public", "rel-1").stdout.strip()
    r = kiln(home, "key", "rotate", "rel-1", "--resign")
    assert r.returncode == 0, r.stderr
    new_pub = r.stdout.strip()
    assert new_pub.startswith("rel-2:") and (home / "keys" / "rel-2.sec").stat().st_mode & 0o777 == 0o600
    sigs = kiln(home, "store", "info", path).stdout
    assert "rel-1:" in sigs and "rel-2:" in sigs

    policy = tmp_path / "policy.toml"
    policy.write_text(f'[keys]\nsigning = ["{new_pub}", "{old_pub}"]\n[require]\nsignatures = 1\n')
    assert kiln(home, "verify", path, "--policy", str(policy)).returncode == 0

    r = kiln(home, "key", "revoke", "rel-1", "--policy", str(policy), "--reason", "laptop stolen")
    assert r.returncode == 0, r.stderr
    # the policy still trusts the key for signing: said, as the revocation wins
    assert f"note: {policy} still lists this key under [keys] signing; the revocation overrides" in r.stderr
    assert "(the key counts for nothing at all)" in r.stderr
    v = kiln(home, "verify", path, "--policy", str(policy))
    assert v.returncode == 1 and "rel-1" in v.stdout and "compromised" in v.stdout


def test_revoke_retired_keeps_paths_signed_by_the_successor(tmp_path):
    home, path = _setup(tmp_path)
    new_pub = kiln(home, "key", "rotate", "rel-1", "--resign").stdout.strip()
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[keys]\nsigning = ["{new_pub}"]\n[require]\nsignatures = 1\n')
    r = kiln(home, "key", "revoke", "rel-1", "--policy", str(policy), "--retired")
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr  # (not listed: nothing to say)
    assert "compromised = false" in policy.read_text()
    v = kiln(home, "verify", path, "--policy", str(policy))
    assert v.returncode == 0, v.stdout


def test_revoke_never_writes_a_broken_policy(tmp_path):
    home, _ = _setup(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text("this is = = not toml\n")
    r = kiln(home, "key", "revoke", "rel-1", "--policy", str(policy))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert policy.read_text() == "this is = = not toml\n"


def test_the_keys_directory_is_private_however_it_is_made(tmp_path):
    """The first build's default key and ``kiln key generate`` both leave
    ``$KILN_HOME/keys`` 0700 (a build used to make it 0755), narrowing an old one."""
    from kiln.buildglue import load_sign_key
    from kiln.store.localstore import LocalStore

    old = os.umask(0o022)
    try:
        with LocalStore.open(tmp_path / "home") as store:
            load_sign_key(store, None, create=True)
    finally:
        os.umask(old)
    keys = tmp_path / "home" / "keys"
    assert keys.stat().st_mode & 0o777 == 0o700
    os.chmod(keys, 0o755)  # as an older kiln left it
    assert kiln(tmp_path / "home", "key", "generate", "other-1").returncode == 0
    assert keys.stat().st_mode & 0o777 == 0o700


def test_key_file_mix_ups_are_named(tmp_path):
    """A public key given where the secret key goes says so (not "chmod 600" advice),
    and ``-o DIR`` names the directory, not a temp file."""
    home = tmp_path / "home"
    assert kiln(home, "key", "generate", "k-1").returncode == 0
    pub = home / "keys" / "k-1.pub"
    os.chmod(pub, 0o644)
    assert kiln(home, "store", "init").returncode == 0
    r = kiln(home, "store", "sign", "--key", str(pub), "--all")
    assert (
        r.returncode == 1
        and r.stderr == f"error: {pub} is a public key; signing needs the secret key (NAME.sec)\n"
    )
    (tmp_path / "dir").mkdir()
    r = kiln(home, "key", "generate", "k-2", "-o", str(tmp_path / "dir"), "--force")
    assert (
        r.returncode == 1
        and r.stderr == f"error: {tmp_path / 'dir'} is a directory; name the key file to write\n"
    )


def test_rotating_the_default_key_keeps_the_old_one(tmp_path):
    """``kiln key rotate default`` made NAME-2 the default and overwrote default.sec:
    the old secret key was gone. It stays as keys/NAME-1.sec."""
    from kiln.store.keyfiles import load_secret_key, write_secret_key
    from kiln.store.signing import SecretKey

    home = tmp_path / "home"
    assert kiln(home, "store", "init").returncode == 0
    old = SecretKey.generate("builder-1")
    (home / "keys").mkdir(mode=0o700)
    write_secret_key(home / "keys" / "default.sec", old)
    r = kiln(home, "key", "rotate", "default")
    assert r.returncode == 0 and r.stdout.startswith("builder-2:"), r.stderr
    assert load_secret_key(home / "keys" / "default.sec").name == "builder-2"
    assert load_secret_key(home / "keys" / "builder-1.sec").key == old.key
    assert (home / "keys" / "builder-1.sec").stat().st_mode & 0o777 == 0o600


def test_rotating_a_default_key_named_default_or_shadowed_keeps_it_too(tmp_path):
    """A key named ``default`` would be kept as default.sec itself, and a keys/NAME.sec
    holding another key must not be overwritten: the old key goes to NAME.retired-N.sec."""
    from kiln.store.keyfiles import load_secret_key, write_secret_key
    from kiln.store.signing import SecretKey

    home = tmp_path / "home"
    assert kiln(home, "store", "init").returncode == 0
    (home / "keys").mkdir(mode=0o700)
    named_default = SecretKey.generate("default")
    write_secret_key(home / "keys" / "default.sec", named_default)
    assert kiln(home, "key", "rotate", "default").returncode == 0
    assert load_secret_key(home / "keys" / "default.retired-1.sec").key == named_default.key
    assert load_secret_key(home / "keys" / "default.sec").name == "default-2"
    # keys/ci-1.sec holds another key of that name: it is left alone
    other = SecretKey.generate("ci-1")
    write_secret_key(home / "keys" / "ci-1.sec", other)
    mine = SecretKey.generate("ci-1")  # same name, another key
    write_secret_key(home / "keys" / "default.sec", mine, overwrite=True)
    assert kiln(home, "key", "rotate", "default").returncode == 0
    assert load_secret_key(home / "keys" / "ci-1.sec").key == other.key  # untouched
    assert load_secret_key(home / "keys" / "ci-1.retired-1.sec").key == mine.key
