"""Provenance records the recipe path as given, in UTF-8 JSON; a recipe path that is not
UTF-8 has no faithful text form, so ``kiln build`` refuses it before building anything
(``buildprov.check_recordable``). Before, the outputs were built and signed, writing the
provenance raised ``UnicodeEncodeError`` (exit 70), and the next run passed with no
provenance at all. ``intoto.canonical_json`` itself refuses such text with a
``FormatError`` rather than an internal error.

End to end on a recipe, offline: the toolchain is a one-package ``.deb`` (a static
busybox) served from a hashed source mirror, as in ``tests/cli/test_run_cli.py``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.buildprov import NotRecordable, check_recordable
from kiln.store import attestations, intoto
from kiln.store.errors import FormatError
from kiln.store.localstore import LocalStore

sys.path.insert(0, str(Path(__file__).parents[1] / "toolchain"))
from debs import Entry, make_deb  # noqa: E402

RECIPE = """\
let toolchain = debian_rootfs {{ lock = [
  {{ name = "bbtool", version = "1.0", arch = "amd64", sha256 = "{sha}", filename = "pool/main/b/bbtool/bbtool_1.0_amd64.deb", size = {size} }},
] }}
package hello {{
  version = "1.0"
  deps = [toolchain]
  build = "mkdir -p $out; echo hi > $out/hi"
}}
"""


def test_canonical_json_refuses_text_that_is_not_utf8():
    assert (
        intoto.canonical_json({"recipeFile": "caf\u00e9.recipe"}) == '{"recipeFile":"café.recipe"}'.encode()
    )
    bad = os.fsdecode(b"bad\xff.recipe")  # (a lone surrogate: how Python holds the byte)
    with pytest.raises(FormatError, match="not UTF-8"):
        intoto.canonical_json({"recipeFile": bad})
    check_recordable("caf\u00e9/x.recipe")
    with pytest.raises(NotRecordable, match=r"'bad\\xff.recipe' is not valid UTF-8"):
        check_recordable(bad)


def _world(root: Path) -> tuple[dict, str]:
    busybox = shutil.which("busybox") or "/bin/busybox"
    entries = [Entry("./usr/", "d", mode=0o755), Entry("./usr/bin/", "d", mode=0o755)]
    entries.append(Entry("./usr/bin/busybox", data=Path(busybox).read_bytes(), mode=0o755))
    for applet in ("sh", "mkdir", "echo"):
        entries.append(Entry(f"./usr/bin/{applet}", "l", link="busybox"))
    entries.append(Entry("./usr/bin/bash", data=b'#!/usr/bin/sh\nexec /usr/bin/sh "$@"\n', mode=0o755))
    entries.append(Entry("./bin", "l", link="usr/bin"))
    data = make_deb(root / "bbtool_1.0_amd64.deb", entries, name="bbtool").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    (root / "mirror" / "sha256").mkdir(parents=True)
    (root / "mirror" / "sha256" / sha).write_bytes(data)
    (root / ".kilnroot").touch()
    env = dict(os.environ, KILN_HOME=str(root / "home"), KILN_SOURCE_MIRRORS=str(root / "mirror"))
    return env, RECIPE.format(sha=sha, size=len(data))


def _kiln(env: dict, *args: str | bytes, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.bwrap
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed")
def test_a_recipe_path_that_is_not_utf8_is_refused_before_building(tmp_path: Path):
    env, text = _world(tmp_path)
    bad = b"bad\xff.recipe"
    (tmp_path / os.fsdecode(bad)).write_text(text)
    out = _kiln(env, "path", bad, "hello", cwd=tmp_path)  # (evaluating it is fine)
    assert out.returncode == 0, out.stderr
    path = out.stdout.strip()
    r = _kiln(env, "build", bad, "hello", cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert "the recipe path 'bad\\xff.recipe' is not valid UTF-8" in r.stderr, r.stderr
    assert "internal error" not in r.stderr
    store = LocalStore.open(tmp_path / "home", create=False)
    try:
        assert not store.is_valid(path)  # refused before anything was built
        assert not list((tmp_path / "home" / "locks").glob("*.hook"))
    finally:
        store.close()
    # kiln report reproducibility builds what it reports on: refused up front too
    r = _kiln(env, "report", "reproducibility", bad, cwd=tmp_path)
    assert r.returncode == 1 and "the recipe path 'bad\\xff.recipe' is not valid UTF-8" in r.stderr, r.stderr
    assert "building" not in r.stderr, r.stderr  # (it built the toolchain first, then refused)
    # the same recipe under a UTF-8 name (not ASCII) builds, its name recorded as it is
    (tmp_path / "café.recipe").write_text(text)
    r = _kiln(env, "build", "café.recipe", "hello", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == path, r.stderr
    store = LocalStore.open(tmp_path / "home", create=False)
    try:
        env_ = attestations.read(store, path, "provenance")
        assert env_ is not None
        st = json.loads(env_.payload)
        assert st["predicate"]["buildDefinition"]["externalParameters"]["recipeFile"] == "café.recipe"
    finally:
        store.close()
