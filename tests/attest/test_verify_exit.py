"""``kiln verify``'s exit status on a local store tells "this is bad" from "I could not
tell": 0 passed, 1 a check failed (rejected), 2 usage error, 3 a check could not be run
(the target not in the store, an object, tree or attestation missing or unreadable); a
failure wins over what could not be checked. ``--json`` says which (``verdict``,
``exit_status``; ``unchecked`` on each check). Real stores, the real command."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from clikit import kiln
from storekit import corrupt_file

from kiln.store import attestations


def _verify(built, *args: str):
    return kiln("verify", *args, "--store", str(built.store.root))


def _doc(built, *args: str) -> dict:
    r = _verify(built, *args, "--json")
    doc = json.loads(r.stdout)
    assert doc["exit_status"] == r.returncode, (doc, r.stderr)
    return doc


def _remove_object(built, path: str) -> Path:
    obj = built.store.object_path(path)
    obj.unlink()
    return obj


def _remove_tree(built, path: str) -> None:
    real = built.store.real_path(path)
    for d, _, _ in os.walk(real):
        os.chmod(d, 0o755)
    shutil.rmtree(real)


def test_passed_is_0_and_says_so(built) -> None:
    r = _verify(built, built.hello)
    # (no --policy: the result says what it vouches for, a bare PASS read as "trusted")
    assert (
        r.returncode == 0
        and r.stdout.splitlines()[-1]
        == "result: PASS (content only: no --policy, so no signature or attestation was required)"
    ), r.stdout
    doc = _doc(built, built.hello)
    assert doc["verdict"] == "passed" and doc["exit_status"] == 0
    assert all(c["unchecked"] is None for c in doc["checks"])


def test_a_path_not_in_the_store_is_3_not_1(built) -> None:
    for target in ("/kiln/store/" + "0" * 32 + "-nope", "0" * 32, "sha256:" + "0" * 64, "no-such-root-name"):
        r = _verify(built, target)
        assert r.returncode == 3, (target, r.stdout, r.stderr)
        assert "\n  ERR  valid: " in r.stdout, r.stdout
        assert r.stdout.splitlines()[-1] == "result: UNCHECKED (1 check could not be run)", r.stdout
        doc = _doc(built, target)
        assert doc["verdict"] == "unchecked" and doc["ok"] is False
        assert [c["unchecked"] for c in doc["checks"]] == ["unavailable"]


def test_usage_errors_stay_2(built, tmp_path: Path) -> None:
    """Bad arguments, a policy file that is missing or does not parse, no store: 2."""
    assert _verify(built, built.hello, "--policy", str(tmp_path / "missing.toml")).returncode == 2
    (tmp_path / "bad.toml").write_text("[require]\nclean_source = 'yes'\n")
    r = _verify(built, built.hello, "--policy", str(tmp_path / "bad.toml"))
    assert r.returncode == 2 and "clean_source must be true or false" in r.stderr, r.stderr
    r = _verify(built, "sha256:zz")
    assert r.returncode == 2 and "is not a NAR digest" in r.stderr, r.stderr
    r = kiln("verify", built.hello, "--store", str(tmp_path / "no-store"))
    assert r.returncode == 2 and "no kiln store" in r.stderr, r.stderr
    (tmp_path / "a-file").write_text("x")  # (its config.json: "Not a directory", no store either)
    r = kiln("verify", built.hello, "--store", str(tmp_path / "a-file"))
    assert r.returncode == 2 and "no kiln store" in r.stderr, r.stderr
    for url, says in (("http://[::1", "not a registry URL"), ("ftp://h", "unsupported registry URL scheme")):
        r = kiln("verify", f"{url}#{built.hello}")
        assert r.returncode == 2 and says in r.stderr, r.stderr


def test_a_missing_or_unreadable_object_is_3_and_a_corrupt_one_1(built) -> None:
    obj = built.store.object_path(built.zlib)
    good = obj.read_bytes()
    obj.unlink()
    r = _verify(built, built.zlib)
    assert r.returncode == 3, r.stdout + r.stderr
    assert (
        f"  ERR  content: cannot read the stored object: object of {built.zlib} is missing: {obj}" in r.stdout
    )
    assert "  pass tree:" in r.stdout and r.stdout.endswith("result: UNCHECKED (1 check could not be run)\n")
    obj.mkdir()  # (not a regular file: unreadable, not corrupt)
    r = _verify(built, built.zlib)
    assert r.returncode == 3 and "ERR  content: cannot read the stored object:" in r.stdout, r.stdout
    obj.rmdir()
    obj.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    r = _verify(built, built.zlib)
    assert r.returncode == 1 and "  FAIL content: stored object does not match" in r.stdout, r.stdout
    assert _doc(built, built.zlib)["verdict"] == "rejected"


def test_a_missing_tree_is_3_and_a_modified_one_1(built) -> None:
    corrupt_file(built.store.real_path(built.zlib) / "libz.so")
    r = _verify(built, built.zlib)
    assert r.returncode == 1 and "  FAIL tree: materialised tree was modified" in r.stdout, r.stdout
    _remove_tree(built, built.hello)
    r = _verify(built, built.hello)
    assert r.returncode == 3 and "  ERR  tree: cannot read the materialised tree:" in r.stdout, r.stdout


def test_an_unreadable_attestation_is_3(built) -> None:
    """A provenance or a VSA file that is there but cannot be read (here: a directory in
    its place) is no verdict, and no crash."""
    d = attestations._dir(built.store, built.hello)
    (d / "provenance.dsse.json").mkdir(parents=True)
    r = _verify(built, built.hello)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "  ERR  provenance: cannot read the stored provenance:" in r.stdout, r.stdout
    (d / "provenance.dsse.json").rmdir()
    (d / "vsa-0123456789abcdef.dsse.json").mkdir()
    r = _verify(built, built.hello)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "  ERR  reproduced: cannot read the stored verification summaries:" in r.stdout, r.stdout


def test_a_failure_wins_over_what_could_not_be_checked(built) -> None:
    # one path: its tree is modified (rejected) and its object is gone (unchecked)
    corrupt_file(built.store.real_path(built.zlib) / "libz.so")
    _remove_object(built, built.zlib)
    r = _verify(built, built.zlib)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "result: FAIL (1 check failed, 1 could not be run)", r.stdout
    doc = _doc(built, built.zlib)
    assert doc["verdict"] == "rejected"
    assert {c["name"]: c["unchecked"] for c in doc["checks"] if not c["ok"]} == {
        "content": "unavailable",
        "tree": None,
    }


def test_closure_one_path_rejected_one_unchecked_is_1(built) -> None:
    _remove_object(built, built.hello)
    r = _verify(built, built.hello, "--closure")
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "result: UNCHECKED (1 of 2 paths could not be checked)", r.stdout
    corrupt_file(built.store.real_path(built.zlib) / "libz.so")
    r = _verify(built, built.hello, "--closure")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "result: FAIL (1 of 2 paths failed, 1 could not be checked)", r.stdout
    doc = _doc(built, built.hello, "--closure")
    assert doc["verdict"] == "rejected" and doc["ok"] is False
    assert [p["verdict"] for p in doc["paths"]] == ["unchecked", "rejected"]


def test_a_store_whose_database_is_damaged_is_3_not_a_usage_error(tmp_path: Path) -> None:
    """The store is there but cannot be opened: a check that could not run (3), named in
    the report, not "usage error" (2: it was so, a script took it for bad arguments)."""
    st = tmp_path / "st"
    (tmp_path / "f").write_text("x\n")
    path = kiln("store", "add", str(tmp_path / "f"), "--store", str(st)).stdout.strip()
    (st / "db.sqlite").write_bytes(b"garbage" * 1000)
    r = kiln("verify", path, "--store", str(st))
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"  ERR  valid: the store database {st / 'db.sqlite'} is damaged" in r.stdout, r.stdout
    doc = json.loads(kiln("verify", path, "--store", str(st), "--json").stdout)
    assert doc["verdict"] == "unchecked" and doc["exit_status"] == 3
