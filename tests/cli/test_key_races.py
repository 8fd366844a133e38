"""Key files under concurrency and after a kill: ``kiln key generate`` run twice at once
left a ``.pub`` that did not belong to the ``.sec`` (the loser wrote its public half
first); two first ``kiln build``s failed one of them on "default.sec already exists";
a writer killed mid-write left ``.key-*`` temp files (one holding a secret key) for good."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from clikit import kiln_at

from kiln.buildglue import load_sign_key
from kiln.store.keyfiles import TEMP_PREFIX, load_public_key, load_secret_key, write_secret_key
from kiln.store.localstore import LocalStore
from kiln.store.signing import SecretKey


def test_concurrent_generates_leave_a_matching_pair(tmp_path: Path) -> None:
    env = {**os.environ, "KILN_HOME": str(tmp_path / "home")}
    for rnd in range(8):
        name = f"k{rnd}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "kiln", "key", "generate", name],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        results = [(p.wait(60), *p.communicate()) for p in procs]
        assert sum(rc == 0 for rc, _, _ in results) == 1, results
        assert all("already exists" in err for rc, _, err in results if rc != 0), results
        keys = tmp_path / "home" / "keys"
        sec = load_secret_key(keys / f"{name}.sec")
        assert load_public_key(keys / f"{name}.pub") == sec.public(), f"round {rnd}: the pair does not match"
        (winner,) = [out for rc, out, _ in results if rc == 0]
        assert winner.splitlines()[0] == sec.public().to_text()


def test_a_secret_key_left_alone_gets_its_public_half(tmp_path: Path) -> None:
    """A generate killed between its two writes: the re-run refuses (the key is there)
    and writes the missing ``.pub`` from it."""
    keys = tmp_path / "home" / "keys"
    keys.mkdir(parents=True, mode=0o700)
    key = SecretKey.generate("k1")
    write_secret_key(keys / "k1.sec", key)
    r = kiln_at(tmp_path, "key", "generate", "k1")
    assert r.returncode == 1 and "k1.sec already exists" in r.stderr, r.stderr
    assert load_public_key(keys / "k1.pub") == key.public()


def test_stale_temp_files_of_a_killed_writer_are_swept(tmp_path: Path) -> None:
    keys = tmp_path / "home" / "keys"
    keys.mkdir(parents=True, mode=0o700)
    old, fresh = keys / (TEMP_PREFIX + "abc123"), keys / (TEMP_PREFIX + "def456")
    users = keys / ".key-notes.txt"  # a user's own file: not kiln's to delete
    for p in (old, fresh, users):
        p.write_text("k:secret")
    for p in (old, users):
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    assert kiln_at(tmp_path, "key", "generate", "k2").returncode == 0
    assert not old.exists() and fresh.exists()  # (a write in progress elsewhere is left alone)
    assert users.exists()


def test_two_first_builds_share_the_key_one_of_them_made(tmp_path: Path) -> None:
    """Both callers of ``load_sign_key`` on a store without a key get the same key, and
    the ``.pub`` matches it."""
    for rnd in range(40):
        store = LocalStore.open(tmp_path / f"s{rnd}")
        barrier = threading.Barrier(2)
        got: list[object] = []

        def first_build(
            store: LocalStore = store, barrier: threading.Barrier = barrier, got: list[object] = got
        ) -> None:
            barrier.wait()
            try:
                got.append(load_sign_key(store, None, create=True))
            except BaseException as e:  # noqa: BLE001 - checked below
                got.append(e)

        ts = [threading.Thread(target=first_build) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert all(isinstance(k, SecretKey) for k in got), got
        a, b = got
        assert a.to_text() == b.to_text(), f"round {rnd}: two keys"  # type: ignore[union-attr]
        assert load_public_key(store.root / "keys" / "default.pub") == a.public()  # type: ignore[union-attr]
        store.close()


def test_a_default_key_without_its_public_half_gets_it(tmp_path: Path) -> None:
    store = LocalStore.open(tmp_path / "s")
    (store.root / "keys").mkdir(mode=0o700, exist_ok=True)
    key = SecretKey.generate("kiln-x-1")
    write_secret_key(store.root / "keys" / "default.sec", key)
    assert load_sign_key(store, None, create=True).to_text() == key.to_text()  # type: ignore[union-attr]
    assert load_public_key(store.root / "keys" / "default.pub") == key.public()


def test_generated_key_names_the_user_and_host() -> None:
    """Two users of one host get store keys of different names (trust goes by name)."""
    import pwd

    from kiln.buildglue import default_key_name

    name = default_key_name()
    assert name == f"kiln-{pwd.getpwuid(os.geteuid()).pw_name}@{os.uname().nodename}-1"
    assert ":" not in name and not any(c.isspace() for c in name)
