"""Every ``--json`` of kiln follows one convention (``cli/jsonout.py``, README "In
scripts"): one JSON object on stdout, a top-level ``"ok"`` that is true exactly when the
exit status is 0, and every ``sha256:`` hash as Nix prints ``narHash`` (nix-base32).

Each command is run for real (a toolchain unpacked from a small ``.deb``, builds and
rebuilds in bubblewrap, a directory registry, a mirror of it), once where it succeeds
and, where a failure is cheap to make, once where it does not. Before this, ``kiln
rebuild``/``challenge``/``report`` printed hex NAR hashes (``kiln store info`` nix32),
``kiln registry verify``/``store info``/``mirror status`` had no ``ok``, ``kiln verify``
without ``--closure`` had no ``paths``, and ``kiln store sign``'s summary went to stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "toolchain"))
from debs import Entry, make_deb  # noqa: E402

from kiln.store.keyfiles import write_public_key, write_secret_key  # noqa: E402
from kiln.store.signing import SecretKey  # noqa: E402

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]

#: ``sha256:`` and 52 nix-base32 digits (Nix's alphabet: no e, o, t, u)
NIX32 = re.compile(r"sha256:[0-9a-df-np-sv-z]{52}")

RECIPE = """\
let toolchain = debian_rootfs {{ lock = [
  {{ name = "bbtool", version = "1.0", arch = "amd64", sha256 = "{sha}", filename = "pool/main/b/bbtool/bbtool_1.0_amd64.deb", size = {size} }},
] }}
package calm {{
  version = "1.0"
  deps = [toolchain]
  build = "mkdir -p $out; echo calm > $out/data"
}}
"""


class World:
    """A store with ``calm`` built (GC root ``calm``), its toolchain from a source mirror."""

    def __init__(self, root: Path) -> None:
        self.root = root
        busybox = shutil.which("busybox") or "/bin/busybox"
        entries = [Entry("./usr/", "d", mode=0o755), Entry("./usr/bin/", "d", mode=0o755)]
        entries.append(Entry("./usr/bin/busybox", data=Path(busybox).read_bytes(), mode=0o755))
        entries += [Entry(f"./usr/bin/{a}", "l", link="busybox") for a in ("sh", "mkdir", "echo", "cat")]
        # builds run /bin/bash; busybox has no bash applet
        entries.append(Entry("./usr/bin/bash", data=b'#!/usr/bin/sh\nexec /usr/bin/sh "$@"\n', mode=0o755))
        entries.append(Entry("./bin", "l", link="usr/bin"))
        data = make_deb(root / "bbtool_1.0_amd64.deb", entries, name="bbtool").read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        (root / "mirror" / "sha256").mkdir(parents=True)
        (root / "mirror" / "sha256" / sha).write_bytes(data)
        self.env = dict(os.environ, KILN_HOME=str(root / "home"), KILN_SOURCE_MIRRORS=str(root / "mirror"))
        self.env.pop("KILN_SIGN_KEY", None)
        self.recipe = root / "pkgs.recipe"
        self.recipe.write_text(RECIPE.format(sha=sha, size=len(data)))
        self.key = SecretKey.generate("json-test-1")
        self.key_file = root / "json-test.sec"
        write_secret_key(self.key_file, self.key)
        self.stranger = root / "stranger.pub"  # a key that signed nothing
        write_public_key(self.stranger, SecretKey.generate("stranger-1").public())
        r = self.kiln("build", str(self.recipe), "calm")
        assert r.returncode == 0, r.stderr
        self.out = r.stdout.strip()

    def kiln(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "kiln", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def json(self, *args: str, status: int = 0) -> dict:
        """``kiln ARGS --json``: exit ``status``, stdout one JSON object whose ``ok`` says
        whether the status is 0, every hash in it nix32 (``_hashes``)."""
        r = self.kiln(*args, "--json")
        assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
        doc = json.loads(r.stdout)  # (the whole of stdout: one document, nothing else)
        assert isinstance(doc, dict) and doc["ok"] is (status == 0), doc
        for h in _hashes(doc):
            assert NIX32.fullmatch(h), f"{args[0]}: {h} is not sha256:<nix32>"
        return doc


def _hashes(value: object) -> list[str]:
    """Every string in ``value`` (nested) that is a ``sha256:`` hash and nothing else."""
    if isinstance(value, dict):
        return [h for v in value.values() for h in _hashes(v)]
    if isinstance(value, list):
        return [h for v in value for h in _hashes(v)]
    return [value] if isinstance(value, str) and re.fullmatch(r"sha256:\S+", value) else []


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("json"))


def _nar_hash(world: World) -> str:
    info = world.json("store", "info", world.out)
    assert NIX32.fullmatch(info["narHash"]) and NIX32.fullmatch(info["fileHash"]), info
    assert list(info)[:2] == ["ok", "path"]  # then Nix's path-info order, as before
    return info["narHash"]


def test_verify_has_ok_and_paths_with_or_without_closure(world: World) -> None:
    one = world.json("verify", world.out)
    assert one["verdict"] == "passed" and one["exit_status"] == 0
    assert [p["path"] for p in one["paths"]] == [world.out] == [one["path"]]  # old keys kept
    whole = world.json("verify", world.out, "--closure")
    assert [p["path"] for p in whole["paths"]] == [world.out]  # (calm references nothing)
    assert "path" not in whole  # (a closure has no one report at the top)
    # a hash as the documents print it names the path again
    assert world.json("verify", _nar_hash(world))["paths"][0]["path"] == world.out
    missing = f"{world.out.rsplit('/', 1)[0]}/{'a' * 32}-missing"
    gone = world.json("verify", missing, status=3)
    assert gone["verdict"] == "unchecked" and gone["paths"][0]["ok"] is False


def test_rebuild_report_and_store_info_print_one_hash_form(world: World) -> None:
    nar = _nar_hash(world)
    doc = world.json("rebuild", "calm", "--key", str(world.key_file))
    (o,) = doc["outputs"]
    assert o["path"] == world.out and o["registered"] == o["rebuilt"] == nar
    doc = world.json("report", "reproducibility", str(world.recipe))
    (calm,) = [p for p in doc["packages"] if p["attribute"] == "calm"]
    assert calm["outputs"][0]["registered"] == nar and doc["summary"].startswith("2/2")


def test_challenge_registry_verify_and_mirror_status(world: World) -> None:
    reg, mirror = world.root / "reg", world.root / "mirror-of-reg"
    r = world.kiln("push", world.out, "--to", str(reg))
    assert r.returncode == 0 and r.stdout.startswith("pushed "), r.stderr
    nar = _nar_hash(world)
    doc = world.json("challenge", world.out, "--registry", str(reg))
    (p,) = doc["paths"]
    assert p["local"] == p["registries"][0]["narHash"] == nar and p["verdict"] == "consistent"

    doc = world.json("registry", "verify", "--dir", str(reg))
    assert doc["problems"] == [] and doc["checked"] >= 1 and doc["removed"] == []
    doc = world.json("registry", "verify", "--dir", str(reg), "--trusted-key", str(world.stranger), status=1)
    assert doc["problems"] and doc["checked"] >= 1

    doc = world.json("verify", f"{reg}#{world.out}")  # a registry target: the same shape
    assert doc["paths"][0]["path"] == world.out

    r = world.kiln("registry", "publish-index", "--dir", str(reg), "--key", str(world.key_file))
    assert r.returncode == 0, r.stderr
    r = world.kiln("mirror", "sync", f"file://{reg}", str(mirror), "--root", str(reg / "index/1.root.json"))
    assert r.returncode == 0, r.stderr
    doc = world.json("mirror", "status", str(mirror))
    assert doc["fresh"] is True
    ts = mirror / "index/timestamp.json"
    signed = json.loads(ts.read_text())
    signed["signed"]["expires"] = "2001-01-01T00:00:00Z"  # a mirror whose syncs stopped
    ts.write_text(json.dumps(signed))
    doc = world.json("mirror", "status", str(mirror), status=1)
    assert doc["fresh"] is False and "expired" in doc["frozen"]


def test_store_verify_and_sign_streams(world: World) -> None:
    doc = world.json("store", "verify")
    assert doc["problems"] == [] and doc["checked"] >= 2
    doc = world.json("store", "verify", "--trusted-key", str(world.stranger), status=1)
    assert any(p["path"] == world.out for p in doc["problems"])
    r = world.kiln("store", "sign", "--key", str(world.key_file), world.out)
    # what it did, on stdout (it prints nothing else there); stderr is for warnings
    assert r.returncode == 0 and r.stdout == "signed 1 paths\n" and r.stderr == "", r
