"""A path whose closure has a hole (a dependency quarantined by ``kiln store verify
--repair``) is refused by what would use or describe it (``kiln sbom``, ``kiln run``,
``kiln shell``) and reported by ``kiln store info``: none of them may treat the smaller
closure ``LocalStore.closure`` walks as the whole one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from clikit import kiln

from kiln.store import attestations, sbom
from kiln.store.holes import IncompleteClosure
from kiln.store.keyfiles import write_secret_key
from kiln.store.signing import SecretKey


def _says_what_is_missing_and_what_to_do(err: str, built, doing: str) -> None:
    line = err.strip()
    assert line.startswith(f"error: cannot {doing} {built.hello}: its closure is incomplete"), err
    assert f"{built.zlib} (referenced by {built.hello})" in line, err
    assert "'kiln store verify --repair' cannot bring them back" in line, err
    assert "kiln build" in line and "kiln copy" in line, err
    assert "Traceback" not in err


def test_closure_with_holes_names_each_missing_path_and_its_referrers(built) -> None:
    st = built.store
    assert st.closure_with_holes([built.hello]) == ([built.zlib, built.hello], {})
    built.quarantine_zlib()
    assert st.closure_with_holes([built.hello]) == ([built.hello], {built.zlib: (built.hello,)})
    # closure() itself is unchanged: GC, push and copy walk what is there
    assert st.closure([built.hello]) == [built.hello]


def test_sbom_refuses_a_path_whose_dependency_was_quarantined(built, tmp_path: Path) -> None:
    root = str(built.store.root)
    key = tmp_path / "builder.sec"
    write_secret_key(key, SecretKey.generate("builder-1"))
    built.quarantine_zlib()
    r = kiln("sbom", built.hello, "--store", root, "--attest", "--key", str(key))
    assert r.returncode == 1, (r.stdout, r.stderr)
    _says_what_is_missing_and_what_to_do(r.stderr, built, "make an SBOM of")
    # nothing signed, nothing stored, nothing printed: a signed SBOM leaving zlib out
    # would outlive a repair and travel with 'kiln push'
    assert r.stdout == ""
    assert attestations.read(built.store, built.hello, "sbom") is None
    # without --attest and with --build too, in either format
    for extra in ([], ["--build"], ["--format", "spdx"]):
        r = kiln("sbom", built.hello, "--store", root, *extra)
        assert r.returncode == 1 and r.stdout == "", (extra, r.stdout)
        _says_what_is_missing_and_what_to_do(r.stderr, built, "make an SBOM of")
    with pytest.raises(IncompleteClosure) as e:
        sbom.collect(built.store, built.hello)
    assert e.value.holes == {built.zlib: (built.hello,)}
    # the path that lost nothing still gets its SBOM (the deb it was built from is valid)
    r = kiln("sbom", built.deb, "--store", root)
    assert r.returncode == 0, r.stderr


def test_store_info_reports_an_incomplete_closure(built) -> None:
    root = str(built.store.root)
    doc = json.loads(kiln("store", "info", built.hello, "--store", root, "--json").stdout)
    assert doc["closurePaths"] == 2 and doc["closureMissing"] == {}
    built.quarantine_zlib()
    r = kiln("store", "info", built.hello, "--store", root)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    (closure,) = [x for x in lines if x.startswith("closure:")]
    assert "INCOMPLETE" in closure and "1 paths" in closure and "1 missing" in closure, closure
    missing = lines[lines.index("missing:") + 1]
    assert missing.split() == [built.zlib, "(referenced", "by", f"{built.hello})"], missing
    r = kiln("store", "info", built.hello, "--store", root, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["closurePaths"] == 1
    assert doc["closureMissing"] == {built.zlib: [built.hello]}


@pytest.mark.parametrize("cmd", ["run", "shell"])
def test_run_and_shell_refuse_a_package_whose_dependency_was_quarantined(
    built, tmp_path: Path, cmd: str
) -> None:
    root = str(built.store.root)
    marker = tmp_path / "started"
    # shows the program the store and leaves a mark: had it started, it would have
    # run without zlib
    script = f"touch {marker}; ls {Path(built.zlib).parent}"
    argv = [cmd, "--store", root, built.hello, "--", "/bin/sh", "-c", script]
    if shutil.which("bwrap") is not None:  # (the logical store is mounted by bwrap)
        r = kiln(*argv)
        assert r.returncode == 0 and Path(built.zlib).name in r.stdout, (r.stdout, r.stderr)
        marker.unlink()
    built.quarantine_zlib()
    r = kiln(*argv)
    assert r.returncode == 1, (r.stdout, r.stderr)
    _says_what_is_missing_and_what_to_do(r.stderr, built, "run" if cmd == "run" else "open a shell with")
    assert not marker.exists()


def test_verify_fails_a_path_whose_closure_has_a_hole_further_down(built) -> None:
    root = str(built.store.root)
    # app -> hello -> zlib: app's own reference stays valid, its closure does not
    app = built.store.add_text("app", f"exec {built.hello}\n".encode(), [built.hello]).path
    r = kiln("verify", app, "--store", root)
    assert r.returncode == 0 and "pass closure: its 1 reference(s) are valid" in r.stdout, r.stdout
    built.quarantine_zlib()
    r = kiln("verify", app, "--store", root)
    assert r.returncode == 1, r.stdout
    (line,) = [x for x in r.stdout.splitlines() if "closure:" in x]
    assert line.strip().startswith("FAIL closure: references 1 path(s) not valid in the store"), line
    assert line.endswith(f"{built.zlib} (via {built.hello})"), line
    # with --closure: the target answers for the hole, hello for its own reference
    doc = json.loads(kiln("verify", app, "--store", root, "--closure", "--json").stdout)
    assert doc["ok"] is False
    assert [(p["path"], [c["name"] for c in p["checks"] if not c["ok"]]) for p in doc["paths"]] == [
        (app, ["closure"]),
        (built.hello, ["closure"]),
    ]
    # the sbom of app is refused too, naming the member that lost its dependency
    r = kiln("sbom", app, "--store", root)
    assert r.returncode == 1 and f"{built.zlib} (referenced by {built.hello})" in r.stderr, r.stderr
