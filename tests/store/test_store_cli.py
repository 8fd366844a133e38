"""``kiln store ...`` end to end, as a user runs it (real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from storekit import make_tree

from kiln.store import nar


def kiln(*args: str, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "kiln", *args], input=stdin, capture_output=True)
    if check and r.returncode != 0:
        raise AssertionError(f"kiln {' '.join(args)} -> {r.returncode}\n{r.stderr.decode()}")
    return r


def test_cli_round_trip(tmp_path):
    st = str(tmp_path / "st")
    src = make_tree(tmp_path / "src", {"a": "hello\n", "bin/x": "x:#!/bin/sh\n", "l": "->a"})
    out = kiln("store", "init", "--store", st, "--store-dir", "/kiln/store").stdout.decode()
    assert "/kiln/store" in out
    path = kiln("store", "add", "--store", st, str(src), "--name", "demo").stdout.decode().strip()
    assert path.startswith("/kiln/store/") and path.endswith("-demo")
    assert kiln("store", "cat", "--store", st, path, "a").stdout == b"hello\n"
    assert kiln("store", "cat", "--store", st, path + "/a").stdout == b"hello\n"
    real = tmp_path / "st" / path.lstrip("/")
    assert kiln("store", "cat", "--store", st, str(real / "a")).stdout == b"hello\n"
    ls = kiln("store", "ls", "--store", st, path).stdout.decode()
    assert "regular    a 6" in ls and "symlink    l -> a" in ls and "directory  bin" in ls
    dumped = kiln("store", "dump", "--store", st, path).stdout
    assert dumped == nar.dump_bytes(src)
    kiln("store", "restore", str(tmp_path / "restored"), stdin=dumped)
    assert (tmp_path / "restored" / "a").read_text() == "hello\n"
    info = json.loads(kiln("store", "info", "--store", st, path, "--json").stdout)
    assert info["path"] == path and info["narSize"] == len(dumped) and info["closurePaths"] == 1
    assert info["references"] == [] and info["signatures"] == []
    assert "nar hash:" in kiln("store", "info", "--store", st, path).stdout.decode()

    # sign, then verify with the key's public half
    from kiln.store.keyfiles import write_public_key, write_secret_key
    from kiln.store.signing import SecretKey

    sk = SecretKey.generate("cli-test-1")
    write_secret_key(tmp_path / "sk", sk)
    write_public_key(tmp_path / "pk", sk.public())
    kiln("store", "sign", "--store", st, "--key", str(tmp_path / "sk"), "--all")
    info = json.loads(kiln("store", "info", "--store", st, path, "--json").stdout)
    assert len(info["signatures"]) == 1 and info["signatures"][0].startswith("cli-test-1:")
    r = kiln("store", "verify", "--store", st, "--trusted-key", str(tmp_path / "pk"), "--sigs-needed", "1")
    assert b"0 problem(s)" in r.stdout
    # (an added path proves itself: the summary does not let it read as vouched for by the key)
    assert b"(1 content-addressed: their content proves the path, no signature needed)" in r.stdout
    r = kiln("store", "verify", "--store", st, "--json", "--trusted-key", str(tmp_path / "pk"))
    assert json.loads(r.stdout)["contentProved"] == 1

    # corrupt the tree: verify exits 1 and names the path; --repair fixes it
    os.chmod(real, 0o755)
    os.chmod(real / "a", 0o644)
    (real / "a").write_text("evil\n")
    r = kiln("store", "verify", "--store", st, check=False)
    assert r.returncode == 1 and path.encode() in r.stderr and b"tree-corrupt" in r.stderr
    kiln("store", "verify", "--store", st, "--repair")
    assert kiln("store", "verify", "--store", st, check=False).returncode == 0
    assert (real / "a").read_text() == "hello\n"

    # gc: dry run lists, root protects, unrooted goes
    r = kiln("store", "gc", "--store", st, "--dry-run")
    assert path.encode() in r.stdout and b"would delete 1 paths" in r.stderr
    kiln("store", "add-root", "--store", st, "demo", path)
    r = kiln("store", "gc", "--store", st)
    assert b"deleted 0 paths" in r.stderr
    os.unlink(tmp_path / "st" / "gcroots" / "demo")
    r = kiln("store", "gc", "--store", st)
    assert path.encode() in r.stdout and not real.exists()


def test_cli_errors(tmp_path):
    st = str(tmp_path / "st")
    kiln("store", "init", "--store", st)
    r = kiln("store", "info", "--store", st, "/kiln/store/" + "0" * 32 + "-nope", check=False)
    assert r.returncode == 1 and b"not valid" in r.stderr and b"Traceback" not in r.stderr
    r = kiln("store", "cat", "--store", st, "/etc/passwd", check=False)
    assert r.returncode == 1 and b"not a path in the store" in r.stderr
    r = kiln("store", "add", "--store", st, str(tmp_path / "missing"), check=False)
    assert r.returncode == 1 and b"Traceback" not in r.stderr
    assert b"checked 0 paths" in kiln("store", "--store", st, "verify").stdout  # --store before the verb
    r = kiln("store", "info", "--store", str(tmp_path / "nostore"), "/kiln/store/x", check=False)
    assert r.returncode == 1 and b"no kiln store" in r.stderr


def test_verify_with_a_trusted_key_checks_signatures_by_default(tmp_path):
    """``--trusted-key`` without ``--sigs-needed`` means one signature (as ``registry
    verify``); it checked none, and "0 problems" read as "signed"."""
    from storekit import make_tree

    from kiln.store.hashes import Hash
    from kiln.store.keyfiles import write_public_key
    from kiln.store.localstore import LocalStore
    from kiln.store.paths import make_output_path
    from kiln.store.signing import SecretKey

    st = tmp_path / "st"
    with LocalStore.open(st) as s:
        out = str(make_output_path(Hash.sha256_of(b"b"), "out", "built", s.store_dir))
        s.register_built(out, make_tree(tmp_path / "b", {"f": "x"}), [], None)
    write_public_key(tmp_path / "pk", SecretKey.generate("nobody-1").public())
    r = kiln("store", "verify", "--store", str(st), "--trusted-key", str(tmp_path / "pk"), check=False)
    assert r.returncode == 1 and out.encode() in r.stdout + r.stderr, r
    r = kiln(
        "store", "verify", "--store", str(st), "--trusted-key", str(tmp_path / "pk"), "--sigs-needed", "0"
    )
    assert r.returncode == 0
