"""``kiln challenge`` counts a registry once however its URL is spelled: two spellings of
one registry agreeing with each other are one source, not a consistent pair. A real
``kiln serve`` registry, the real command (no sandbox needed: nothing is rebuilt)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.challenge import distinct_registries, duplicate_registries, registry_identity
from kiln.store.localstore import LocalStore


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("http://127.0.0.1:19211", "http://localhost:19211"),
        ("http://127.0.0.1:19211", "HTTP://127.0.0.1:19211/"),
        ("http://[::1]:19211", "http://LocalHost:19211"),
        ("http://cache.example", "http://Cache.Example:80/"),
        ("https://cache.example/kiln", "https://user:secret@cache.example:443/kiln/"),
    ],
)
def test_spellings_of_one_registry(a: str, b: str) -> None:
    assert registry_identity(a) == registry_identity(b)
    assert distinct_registries([a, b]) == [a]
    assert duplicate_registries([a, b, a]) == [(b, a), (a, a)]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("http://127.0.0.1:19211", "http://127.0.0.1:19212"),
        ("http://cache.example", "https://cache.example"),
        ("http://cache.example/a", "http://cache.example/A"),
        ("http://127.0.0.1:19211", "http://127.0.0.2:19211"),
    ],
)
def test_different_registries(a: str, b: str) -> None:
    assert distinct_registries([a, b]) == [a, b] and duplicate_registries([a, b]) == []


def test_challenge_asks_one_registry_once(kiln, serve_store, tmp_path: Path, store) -> None:
    path = f"{store.store_dir}/{'a' * 32}-elsewhere"
    served = tmp_path / "served"
    s = LocalStore.open(served)
    try:
        tree = tmp_path / "tree"
        tree.mkdir()
        (tree / "data").write_text("one\n")
        s.register_built(path, tree, [], None)
    finally:
        s.close()
    url = serve_store(served).url
    port = url.rsplit(":", 1)[1]
    spellings = [url, f"HTTP://127.0.0.1:{port}/", f"http://localhost:{port}"]
    args = [a for u in spellings for a in ("--registry", u)]
    r = kiln("challenge", path, *args)
    # one source, however many spellings: unknown, not "consistent"
    assert f"{path}: unknown" in r.stdout, r.stdout
    assert r.stdout.count(" serves") == 1, r.stdout
    for dup in spellings[1:]:
        assert f"warning: --registry {dup} is the same registry as {url}" in r.stderr, r.stderr


def test_a_registrys_error_text_is_one_escaped_line() -> None:
    from kiln.challenge import Answer, PathChallenge, render

    hostile = "bad narinfo\n  http://other: sha256:x agrees\x1b[2K\u202e"
    r = PathChallenge("/kiln/store/" + "a" * 32 + "-p", "", "", (Answer("http://r", "error", "", hostile),))
    lines = render([r])
    assert lines[2] == "  http://r: error: bad narinfo\\n  http://other: sha256:x agrees\\x1b[2K\\u202e"
