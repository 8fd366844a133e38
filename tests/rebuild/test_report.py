"""``kiln report reproducibility``: recipe files end to end.

The recipes use a real ``debian_rootfs`` toolchain, made from a small ``.deb`` built here
(static busybox, with ``/bin/bash`` a shell wrapper around it) and served from a hashed
source mirror directory, so the whole pipeline runs (fetch from the mirror, unpack, build
in the sandbox with the rootfs as ``/bin``) without a network or the big toolchain.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from rbkit import BUSYBOX, needs_bwrap

from kiln.store import attestations

pytestmark = needs_bwrap

BASH_WRAPPER = b'#!/bin/busybox sh\nexec /bin/busybox sh "$@"\n'


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members:
        hdr = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{0o100644:<8o}{len(data):<10}`\n"
        out.write(hdr.encode())
        out.write(data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def _tar_gz(entries: list[tuple[str, bytes | str | None, int]]) -> bytes:
    """``(name, content, mode)``: bytes = file, str = symlink target, None = directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as t:
        for name, content, mode in entries:
            ti = tarfile.TarInfo(name)
            ti.mode = mode
            if content is None:
                ti.type = tarfile.DIRTYPE
                t.addfile(ti)
            elif isinstance(content, str):
                ti.type, ti.linkname = tarfile.SYMTYPE, content
                t.addfile(ti)
            else:
                ti.size = len(content)
                t.addfile(ti, io.BytesIO(content))
    return buf.getvalue()


def make_rootfs_deb() -> bytes:
    files: list[tuple[str, bytes | str | None, int]] = [
        ("./bin", None, 0o755),
        ("./bin/busybox", Path(BUSYBOX).read_bytes(), 0o755),
        ("./bin/bash", BASH_WRAPPER, 0o755),
    ]
    files += [(f"./bin/{a}", "busybox", 0o777) for a in ("sh", "cat", "echo", "mkdir")]
    control = _tar_gz([("./control", b"Package: bbroot\nVersion: 1.0\nArchitecture: amd64\n", 0o644)])
    return _ar([("debian-binary", b"2.0\n"), ("control.tar.gz", control), ("data.tar.gz", _tar_gz(files))])


def write_recipes(d: Path) -> tuple[Path, Path]:
    deb = make_rootfs_deb()
    digest = hashlib.sha256(deb).hexdigest()
    (d / "mirror" / "sha256").mkdir(parents=True)
    (d / "mirror" / "sha256" / digest).write_bytes(deb)
    head = (
        "let debian_lock = [\n"
        f'  {{ name = "bbroot", version = "1.0", arch = "amd64", sha256 = "{digest}",'
        f' filename = "pool/main/b/bbroot/bbroot_1.0_amd64.deb", size = {len(deb)} }},\n'
        "]\n"
        'let toolchain = debian_rootfs { name = "toolchain", lock = debian_lock }\n\n'
    )
    mixed = d / "mixed.recipe"
    mixed.write_text(
        head
        + 'package steady {\n  deps = [toolchain]\n  build = "mkdir $out; echo steady > $out/data"\n}\n\n'
        + "package flaky {\n  deps = [toolchain]\n"
        + '  build = "mkdir $out; echo same > $out/keep; cat /proc/sys/kernel/random/uuid > $out/id"\n}\n'
    )
    good = d / "good.recipe"
    good.write_text(head + 'package calm {\n  deps = [toolchain]\n  build = "echo calm > $out"\n}\n')
    return mixed, good


def test_report_reproducibility(kiln, tmp_path, store, rebuilder_keys):
    mixed, good = write_recipes(tmp_path)
    mirror = str(tmp_path / "mirror")

    r = kiln("report", "reproducibility", str(mixed), "--source-mirror", mirror, expect=1)
    lines = r.stdout.splitlines()
    assert any(line.split() == ["toolchain", "reproducible:", "yes"] for line in lines), r.stdout
    assert any(line.split() == ["steady", "reproducible:", "yes"] for line in lines)
    assert any(line.split() == ["flaky", "reproducible:", "NO"] for line in lines)
    assert "id: contents differ" in r.stdout and "keep:" not in r.stdout
    assert lines[-1] == "2/3 packages reproducible (67%)"

    r = kiln("report", "reproducibility", str(good), "--source-mirror", mirror)
    assert r.stdout.splitlines()[-1] == "2/2 packages reproducible (100%)"

    # --json, and --key signs a verdict per output
    r = kiln("report", "reproducibility", str(good), "--json", "--key", str(rebuilder_keys.sk_file))
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["summary"] == "2/2 packages reproducible (100%)"
    assert {p["attribute"]: p["status"] for p in doc["packages"]} == {
        "toolchain": "reproduced",
        "calm": "reproduced",
    }
    assert all(o["vsa"] for p in doc["packages"] for o in p["outputs"])
    # what the report built carries signed provenance, like a kiln build
    (calm,) = [p for p in doc["packages"] if p["attribute"] == "calm"]
    assert "provenance" in attestations.list(store, calm["outputs"][0]["path"])
    assert store.query(calm["outputs"][0]["path"]).sigs


def test_report_lists_build_failures_and_goes_on(kiln, tmp_path):
    mixed, _ = write_recipes(tmp_path)
    broken = tmp_path / "broken.recipe"
    broken.write_text(
        mixed.read_text().split("package steady")[0]
        + 'package broken {\n  deps = [toolchain]\n  build = "exit 4"\n}\n\n'
        + 'package fine {\n  deps = [toolchain]\n  build = "echo fine > $out"\n}\n'
    )
    r = kiln("report", "reproducibility", str(broken), "--source-mirror", str(tmp_path / "mirror"), expect=1)
    assert any(line.split()[:3] == ["broken", "reproducible:", "build"] for line in r.stdout.splitlines())
    assert "exit status 4" in r.stdout or "builder for" in r.stdout
    assert r.stdout.splitlines()[-1] == "2/3 packages reproducible (67%)"


def test_report_usage(kiln):
    assert kiln("report", expect=2).returncode == 2
    r = kiln("report", "speed", "x.recipe", expect=2)
    assert "available: reproducibility" in r.stderr


def test_a_report_that_checked_nothing_fails(kiln, tmp_path):
    """``all([])`` made "0/0 packages reproducible" a pass (exit 0)."""
    empty = tmp_path / "nopk.recipe"
    empty.write_text("let a = 1\n")
    r = kiln("report", "reproducibility", str(empty), expect=1)
    assert "no package in" in r.stderr and "was checked" in r.stderr


def test_a_missing_recipe_file_is_found_before_anything_is_built(kiln, tmp_path, store):
    """A typo in the last file name threw away the builds and rebuilds of the ones
    before it: every file is evaluated first."""
    _, good = write_recipes(tmp_path)
    r = kiln("report", "reproducibility", str(good), str(tmp_path / "typo.recipe"), expect=1)
    assert "typo.recipe does not exist" in r.stderr
    assert "building" not in r.stderr and "reproducible" not in r.stdout
