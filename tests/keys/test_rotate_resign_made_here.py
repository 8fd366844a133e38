"""``kiln key rotate --resign`` after a key leak signs only what the store made itself.

The scenario of the audit: an attacker holding the stolen ``rel-1`` key builds a closure
of their own, signs it with ``rel-1`` and publishes it; the victim's store, which trusts
``rel-1``, copies it in. The victim then rotates ``rel-1`` with ``--resign``: its own builds
get ``rel-2`` signatures, the attacker's paths must not (they used to: every valid path
with a ``rel-1`` signature was re-signed). Real stores, real sandboxed builds (busybox),
real ``kiln`` processes; the copy goes through a ``file://`` registry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.store.keyfiles import load_secret_key, write_public_key, write_secret_key
from kiln.store.localstore import LocalStore
from kiln.store.signing import SecretKey

sys.path.insert(0, str(Path(__file__).parents[1] / "build"))
from buildkit import Graph, add_busybox  # noqa: E402

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]


def kiln(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILN_HOME": str(home)}
    env.pop("KILN_SIGN_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args], env=env, capture_output=True, text=True, timeout=120
    )


def chain(home: Path, work: Path, tag: str) -> tuple[str, list[str]]:
    """Write a two-derivation chain into the store at ``home``: (its top ``.drv``, the
    outputs it makes, dependency first)."""
    with LocalStore.open(home) as s:
        g = Graph(s, add_busybox(s, work))
        lib, lib_d = g.drv(f"lib-{tag}", f"mkdir $out; echo {tag} > $out/lib")
        app, app_d = g.drv(
            f"app-{tag}", "mkdir $out; cat $in0/lib > $out/app; echo $in0 >> $out/app", inputs=[lib]
        )
        return app, [lib_d.output_path("out"), app_d.output_path("out")]


def give_key(home: Path, key: SecretKey, default: bool) -> None:
    keys = home / "keys"
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    for f in [keys / f"{key.name}.sec"] + ([keys / "default.sec"] if default else []):
        write_secret_key(f, key, overwrite=True)
        write_public_key(f.with_suffix(".pub"), key.public(), overwrite=True)


def sig_names(home: Path, path: str) -> set[str]:
    r = kiln(home, "store", "info", "--json", path)
    assert r.returncode == 0, r.stderr
    return {s.partition(":")[0] for s in json.loads(r.stdout)["signatures"]}


def test_resign_leaves_imported_paths_signed_by_the_leaked_key_alone(tmp_path: Path) -> None:
    stolen = SecretKey.generate("rel-1")
    # the attacker's store: builds with the stolen key and publishes
    evil_home = tmp_path / "evil"
    give_key(evil_home, stolen, default=True)
    evil_drv, evil = chain(evil_home, tmp_path / "w-evil", "evil")
    r = kiln(evil_home, "build", evil_drv, "--no-root")
    assert r.returncode == 0, r.stderr
    reg = f"file://{tmp_path / 'reg'}"
    assert kiln(evil_home, "copy", "--from", "store", "--to", reg, evil[-1]).returncode == 0

    # the victim: rel-1 is its build key; it builds its own chain and copies the attacker's in
    home = tmp_path / "home"
    give_key(home, stolen, default=True)
    mine_drv, mine = chain(home, tmp_path / "w-mine", "mine")
    r = kiln(home, "build", mine_drv, "--no-root")
    assert r.returncode == 0, r.stderr
    pub = str(home / "keys" / "rel-1.pub")
    r = kiln(home, "copy", "--from", reg, "--to", "store", "--trusted-key", pub, evil[-1])
    assert r.returncode == 0, r.stderr
    for p in evil:
        assert sig_names(home, p) == {"rel-1"}
        assert json.loads(kiln(home, "store", "info", "--json", p).stdout)["ultimate"] is False
    for p in mine:
        assert json.loads(kiln(home, "store", "info", "--json", p).stdout)["ultimate"] is True
    assert "made here:     yes" in kiln(home, "store", "info", mine[-1]).stdout
    assert "made here:     no (imported" in kiln(home, "store", "info", evil[-1]).stdout

    r = kiln(home, "key", "rotate", "rel-1", "--resign")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("rel-2:")
    for p in mine:
        assert sig_names(home, p) == {"rel-1", "rel-2"}, p
    for p in evil:
        assert sig_names(home, p) == {"rel-1"}, f"{p} was laundered under the new key"
    assert f"re-signed {len(mine)} path(s) made in the store" in r.stderr
    assert f"left {len(evil)} path(s) signed by rel-1 unsigned by rel-2" in r.stderr
    assert f"{len(evil)} imported" in r.stderr
    assert f"kiln store sign --key {home / 'keys' / 'rel-2.sec'} PATH..." in r.stderr
    for p in evil:
        assert f"  imported  {p}\n" in r.stderr
    assert load_secret_key(home / "keys" / "default.sec").name == "rel-2"

    # the operator vouches for one of them by hand, as the message says
    new_sec = str(home / "keys" / "rel-2.sec")
    assert kiln(home, "store", "sign", "--key", new_sec, evil[0]).returncode == 0
    assert sig_names(home, evil[0]) == {"rel-1", "rel-2"}


def test_rotate_store_option_acts_on_that_store(tmp_path: Path) -> None:
    """``--store DIR``: the key is looked up in DIR/keys, DIR's default key switches, DIR's
    paths are re-signed; ``$KILN_HOME`` is not touched. (Before, ``--store`` was refused
    as an unknown option, and without it the rotation acted on ``$KILN_HOME``.)"""
    key = SecretKey.generate("ci-1")
    store = tmp_path / "ci-store"
    give_key(store, key, default=True)
    drv, built = chain(store, tmp_path / "w", "ci")
    assert kiln(store, "build", drv, "--no-root").returncode == 0
    elsewhere = tmp_path / "home"  # $KILN_HOME: a store of its own, with its own default key
    give_key(elsewhere, SecretKey.generate("ci-1"), default=True)
    assert kiln(elsewhere, "store", "init").returncode == 0

    r = kiln(elsewhere, "key", "rotate", "ci-1", "--resign", "--store", str(store))
    assert r.returncode == 0, r.stderr
    assert load_secret_key(store / "keys" / "default.sec").name == "ci-2"
    assert load_secret_key(store / "keys" / "ci-1.sec").key == key.key
    for p in built:
        assert sig_names(store, p) == {"ci-1", "ci-2"}
    assert f"re-signed {len(built)} path(s) made in the store at {store}" in r.stderr
    assert not (elsewhere / "keys" / "ci-2.sec").exists()
    assert load_secret_key(elsewhere / "keys" / "default.sec").name == "ci-1"


def test_resign_with_no_store_is_an_error_before_anything_is_written(tmp_path: Path) -> None:
    home = tmp_path / "home"
    give_key(home, SecretKey.generate("k-1"), default=False)  # keys, but no store there
    r = kiln(home, "key", "rotate", "k-1", "--resign")
    assert r.returncode == 1 and f"--resign: no kiln store at {home}" in r.stderr, r.stderr
    assert "re-signed" not in r.stderr
    assert sorted(p.name for p in (home / "keys").iterdir()) == ["k-1.pub", "k-1.sec"]
    r = kiln(home, "key", "rotate", "k-1", "--resign", "--store", str(tmp_path / "nothing"))
    assert r.returncode == 1 and "no key named 'k-1'" in r.stderr, r.stderr
