"""Fixtures for registry tests (helpers live in regkit.py): keys, and factories for real
servers on 127.0.0.1 that are stopped by pid at teardown."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for ``import regkit`` in any import mode

from regkit import Keys, Server, add_chain, add_tree, kiln, make_store, push_cli, start_kiln, start_nginx  # noqa: E402


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path, "kiln-test-1")


@pytest.fixture
def other_keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path, "intruder-1")


@pytest.fixture
def kiln_server() -> Iterator:
    started: list[Server] = []

    def start(*args: str) -> Server:
        s = start_kiln(list(args))
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


@pytest.fixture
def nginx_server(tmp_path: Path) -> Iterator:
    started: list[Server] = []

    def start(root: Path, workers: int = 1) -> Server:
        s = start_nginx(root, tmp_path / f"nginx{len(started)}", workers)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


@pytest.fixture
def pushed(tmp_path: Path, keys, kiln_server):
    """A store with a 5-path chain plus a leaf, pushed to a served registry dir."""
    store = make_store(tmp_path / "store")
    chain = add_chain(store, tmp_path, 5)
    leaf = add_tree(store, tmp_path, "leaf", "leaf\n")
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file), "--index-key", str(keys.sk_file))
    r = push_cli(store, [chain[-1], leaf], srv.url, tok, keys.sk_file)
    assert r.returncode == 0, r.stderr
    assert "pushed 6 of 6 paths" in r.stdout and "index version 1" in r.stdout
    return store, chain, leaf, reg, tok, srv
