"""``kiln challenge``: compare what real ``kiln serve`` registries serve with the local build.

Two registries: one serves a store holding the same build as ours, the other a store
where a different tree was registered under the same output path (a tampered or
non-reproducible build). A third path exists only locally, so registries lack it.
"""

from __future__ import annotations

import json
from pathlib import Path

from rbkit import needs_bwrap

from kiln.store.localstore import LocalStore

pytestmark = needs_bwrap


def _twin_store(root: Path, tmp: Path, path: str, content: str) -> None:
    """A second store with ``content`` registered under output path ``path``."""
    s = LocalStore.open(root)
    try:
        tree = tmp / f"tree-{root.name}"
        tree.mkdir()
        (tree / "data").write_text(content)
        s.register_built(path, tree, [], None)
    finally:
        s.close()


def test_challenge_reports_agreement_disagreement_and_absence(store, graph, kiln, serve_store, tmp_path):
    drv, out = graph.drv("target", "mkdir $out; echo honest > $out/data")
    kiln("build", drv)
    honest_root, evil_root = tmp_path / "honest", tmp_path / "evil"
    _twin_store(honest_root, tmp_path, out, "honest\n")  # same tree: same NAR hash
    _twin_store(evil_root, tmp_path, out, "backdoored\n")
    honest, evil = serve_store(honest_root), serve_store(evil_root)
    local_only = graph.drv("local-only", "echo mine > $out")
    kiln("build", local_only[0])
    local_hash = f"sha256:{store.query(out).nar_hash.nix32}"  # as Nix (and kiln store info) prints it

    r = kiln("challenge", out, local_only[1], "--registry", honest.url, "--registry", evil.url, expect=1)
    text = r.stdout
    assert f"{out}: inconsistent" in text
    assert f"local (store): {local_hash}" in text
    assert f"{honest.url}: {local_hash} agrees" in text
    assert f"{evil.url}: sha256:" in text and "DIFFERS" in text
    assert f"{local_only[1]}: unknown" in text
    assert f"{honest.url}: does not have it" in text
    assert "2 store paths challenged: 0 consistent, 1 inconsistent, 1 unknown" in text

    doc = json.loads(
        kiln("challenge", out, "--registry", honest.url, "--registry", evil.url, "--json", expect=1).stdout
    )
    (p,) = doc["paths"]
    assert doc["ok"] is False and p["verdict"] == "inconsistent" and p["local"] == local_hash
    assert [x["status"] for x in p["registries"]] == ["agrees", "differs"]
    assert p["registries"][1]["narHash"] != local_hash

    # Only the honest registry: consistent, exit 0. With --rebuild the local hash comes
    # from a fresh rebuild, which agrees too.
    r = kiln("challenge", "target", "--registry", honest.url)
    assert f"{out}: consistent" in r.stdout
    r = kiln("challenge", out, "--registry", honest.url, "--rebuild")
    assert f"local (rebuild): {local_hash}" in r.stdout and "agrees" in r.stdout


def test_challenge_without_a_local_build_compares_registries(kiln, serve_store, tmp_path, store):
    path = f"{store.store_dir}/{'a' * 32}-elsewhere"
    a, b = tmp_path / "a", tmp_path / "b"
    _twin_store(a, tmp_path, path, "one\n")
    _twin_store(b, tmp_path, path, "two\n")
    ra, rb = serve_store(a), serve_store(b)
    r = kiln("challenge", path, "--registry", ra.url, "--registry", rb.url, expect=1)
    assert f"{path}: inconsistent" in r.stdout and "local: (not built here)" in r.stdout
    assert r.stdout.count(" serves") == 2
    r = kiln("challenge", path, "--registry", ra.url)
    assert f"{path}: unknown" in r.stdout


def test_unreachable_registry_is_reported_not_fatal(store, graph, kiln, serve_store, tmp_path):
    drv, out = graph.drv("reach", "echo r > $out")
    kiln("build", drv)
    good = tmp_path / "good"
    _twin_store(good, tmp_path, out, "")  # content irrelevant: we only need an answer
    srv = serve_store(good)
    r = kiln("challenge", out, "--registry", srv.url, "--registry", "http://127.0.0.1:9", expect=None)
    assert "http://127.0.0.1:9: error:" in r.stdout and r.returncode == 1  # reported, and not a pass


def test_a_bad_registry_is_that_registrys_error_and_creates_nothing(
    store, graph, kiln, serve_store, tmp_path
):
    """A mistyped directory used to become an empty registry that "does not have it"; a
    body that is not UTF-8 or a malformed URL crashed the whole challenge (exit 70); one
    registry given twice counted as two sources agreeing."""
    drv, out = graph.drv("bad-reg", "echo r > $out")
    kiln("build", drv)
    good = tmp_path / "good"
    _twin_store(good, tmp_path, out, "")
    srv = serve_store(good)
    typo = tmp_path / "typo-registry"
    garbage = tmp_path / "garbage-registry"
    garbage.mkdir()
    (garbage / "nix-cache-info").write_bytes(b"StoreDir: \xff\xfe\n")
    r = kiln(
        "challenge",
        out,
        "--registry",
        srv.url,
        "--registry",
        str(typo),
        "--registry",
        f"file://{garbage}",
        "--registry",
        "http://[::1",
        expect=None,
    )
    assert r.returncode == 1, r.stderr
    assert f"{typo}: error: " in r.stdout and "is not a registry" in r.stdout, r.stdout
    assert f"file://{garbage}: error: " in r.stdout and "http://[::1: error: " in r.stdout, r.stdout
    assert not typo.exists()
    path = f"{store.store_dir}/{'b' * 32}-elsewhere"
    _twin_store(tmp_path / "one", tmp_path, path, "x\n")
    one = serve_store(tmp_path / "one")
    r = kiln("challenge", path, "--registry", one.url, "--registry", one.url + "/")
    assert f"{path}: unknown" in r.stdout and r.stdout.count(" serves") == 1, r.stdout
