"""Registry tokens given in a file (``cli/tokenargs.py``): ``--token-file`` on every
command that takes ``--token`` (``push``, ``copy``, ``mirror sync``, ``verify``) and
``--from-token-file`` where ``--from-token`` is, against a real ``kiln serve --private``.

- each command authenticates with the token read from the file (a trailing newline
  dropped), from ``-`` (standard input) and from a pipe (``<(...)``), and the file wins
  over ``$KILN_REGISTRY_TOKEN``;
- a file group or others may read is refused with the ``chmod`` to run (nothing sent),
  as are an empty file, one holding more than the token, and both ``--token`` and
  ``--token-file`` (a usage error, exit 2);
- ``--help`` says ``--token`` is visible to other local users;
- a ``--to``/``--from`` (or ``mirror sync`` SRC/DST) that is a kiln token is refused
  before a registry directory is made of it, and the token is never shown.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from regkit import add_chain, add_tree, kiln, make_store

from kiln.registry.auth import TokenStore
from kiln.registry.client import open_client
from kiln.registry.publish import publish_index
from kiln.registry.push import push
from kiln.registry.storage import open_storage


@pytest.fixture
def private(tmp_path: Path, keys, kiln_server):  # noqa: ANN201
    """(store, paths, registry dir, read token, write token, server): two paths
    published in a ``--private`` registry with a signed index."""
    store = make_store(tmp_path / "store")
    paths = add_chain(store, tmp_path, 2)
    reg = tmp_path / "reg"
    push(store, paths, lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    publish_index(open_storage(reg), keys.sk)
    tokens = TokenStore(open_storage(reg))
    rtok, wtok = tokens.create(["read"]), tokens.create(["write"])
    srv = kiln_server("--dir", str(reg), "--private", "--trusted-key", str(keys.pk_file))
    return store, paths, reg, rtok, wtok, srv


def token_file(path: Path, token: str, mode: int = 0o600) -> str:
    path.write_text(token + "\n")  # as ``echo`` or an editor leaves it
    os.chmod(path, mode)
    return str(path)


def test_push_reads_the_token_from_a_file(tmp_path, keys, private) -> None:
    store, _paths, reg, rtok, wtok, srv = private
    new = add_tree(store, tmp_path, "new", "new\n")
    args = ["push", "--store", str(store.root), new, "--to", srv.url, "--sign-key", str(keys.sk_file)]
    hp = new.split("/")[-1][:32]
    # a file others may read is refused, naming the chmod; nothing is sent
    loose = token_file(tmp_path / "loose", wtok, 0o640)
    r = kiln(*args, "--token-file", loose)
    assert r.returncode == 1 and f"run: chmod 600 {loose}" in r.stderr, r.stderr
    assert not (reg / f"{hp}.narinfo").exists()
    # the file wins over the variable (here a read token, which could not push)
    r = kiln(*args, "--token-file", token_file(tmp_path / "w", wtok), env={"KILN_REGISTRY_TOKEN": rtok})
    assert r.returncode == 0, r.stderr
    assert (reg / f"{hp}.narinfo").exists()
    assert wtok[14:] not in r.stdout + r.stderr


def test_push_reads_the_token_from_standard_input_and_a_pipe(tmp_path, keys, private) -> None:
    store, _paths, reg, _rtok, wtok, srv = private
    for n, how in enumerate(("-", "pipe")):
        new = add_tree(store, tmp_path, f"new{n}", f"new {n}\n")
        args = ["push", "--store", str(store.root), new, "--to", srv.url, "--sign-key", str(keys.sk_file)]
        if how == "-":
            r = subprocess.run(
                [sys.executable, "-m", "kiln", *args, "--token-file", "-"],
                input=wtok + "\n",
                capture_output=True,
                text=True,
                timeout=120,
            )
        else:  # bash's <(...): /dev/fd/N, a pipe
            cmd = " ".join([sys.executable, "-m", "kiln", *args, "--token-file", '<(printf %s "$T")'])
            r = subprocess.run(
                ["bash", "-c", cmd],
                env={**os.environ, "T": wtok},
                capture_output=True,
                text=True,
                timeout=120,
            )
        assert r.returncode == 0, (how, r.stderr)
        assert (reg / f"{new.split('/')[-1][:32]}.narinfo").exists()


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("", "is empty"),
        ("\n\n", "is empty"),
        ("kiln_0000aaaa_" + "x" * 43 + "\nsecond-line", "holds more than a token"),
        ("kiln_0000aaaa_ " + "x" * 43, "holds more than a token"),
    ],
)
def test_a_file_without_a_token_alone_is_refused(tmp_path, content: str, said: str) -> None:
    f = tmp_path / "tok"
    f.write_text(content)
    os.chmod(f, 0o600)
    r = kiln("push", "/kiln/store/" + "0" * 32 + "-x", "--to", str(tmp_path / "reg"), "--token-file", str(f))
    assert r.returncode == 1 and said in r.stderr, r.stderr
    assert "x" * 20 not in r.stderr  # the content is never shown
    assert not (tmp_path / "reg").exists()


def test_token_and_token_file_together_are_a_usage_error(tmp_path) -> None:
    f = token_file(tmp_path / "tok", "kiln_0000aaaa_" + "x" * 43)
    for args in (
        ["push", "/kiln/store/x", "--to", "reg", "--token", "t", "--token-file", f],
        ["copy", "--from", "u", "--to", "store", "x", "--from-token", "t", "--from-token-file", f],
        ["mirror", "sync", "u", "d", "--token-file", f, "--token", "t"],
        ["verify", "http://127.0.0.1:1#x", "--token", "t", "--token-file", f],
    ):
        r = kiln(*args)
        assert r.returncode == 2 and "not allowed with argument" in r.stderr, (args, r.stderr)


def test_help_says_the_command_line_is_visible(tmp_path) -> None:
    for args in (["push"], ["copy"], ["mirror", "sync"], ["verify"]):
        r = kiln(*args, "--help")
        text = " ".join(r.stdout.split())
        assert r.returncode == 0 and "Visible to every local user" in text, (args, r.stdout)
        assert "--token-file FILE" in text, (args, r.stdout)
    assert "--from-token-file FILE" in " ".join(kiln("copy", "--help").stdout.split())


def test_copy_reads_both_tokens_from_files(tmp_path, keys, private) -> None:
    _store, paths, _reg, rtok, _wtok, srv = private
    trust = ["--trusted-key", str(keys.pk_file)]
    rfile = token_file(tmp_path / "r", rtok)
    s2 = tmp_path / "s2"
    r = kiln(
        "copy",
        "--store",
        str(s2),
        "--from",
        srv.url,
        "--token-file",
        rfile,
        "--to",
        "store",
        *trust,
        paths[-1],
    )
    assert r.returncode == 0, r.stderr
    assert make_store(s2).is_valid(paths[-1])
    out = tmp_path / "out"
    r = kiln(
        "copy", "--from", srv.url, "--from-token-file", rfile, "--to", f"file://{out}", *trust, paths[-1]
    )
    assert r.returncode == 0, r.stderr
    assert (out / f"{paths[-1].split('/')[-1][:32]}.narinfo").exists()
    # between registries, --token-file is the destination's: the source still wants its own
    r = kiln(
        "copy",
        "--from",
        srv.url,
        "--token-file",
        rfile,
        "--to",
        f"file://{tmp_path / 'o2'}",
        *trust,
        paths[-1],
    )
    assert r.returncode == 1 and "HTTP 401" in r.stderr, r.stderr


def test_mirror_sync_and_verify_read_the_token_from_a_file(tmp_path, private) -> None:
    _store, paths, reg, rtok, _wtok, srv = private
    rfile = token_file(tmp_path / "r", rtok)
    root = str(reg / "index/root.json")
    r = kiln("mirror", "sync", srv.url, str(tmp_path / "m"), "--root", root, "--token-file", rfile)
    assert r.returncode == 0, r.stderr
    assert "2 paths" in r.stdout
    target = f"{srv.url}#{paths[-1]}"
    assert kiln("verify", target).returncode != 0  # (401 without the token)
    r = kiln("verify", target, "--token-file", rfile)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_token_given_as_a_registry_is_refused_and_not_shown(tmp_path) -> None:
    token = "kiln_6645cb44_RHx6" + "Qz9-_a" * 7
    store = make_store(tmp_path / "store")
    path = add_tree(store, tmp_path, "p", "p\n")
    for args in (
        ["push", "--store", str(store.root), path, "--to", token],
        ["copy", "--store", str(store.root), "--from", "store", "--to", token, path],
        ["copy", "--store", str(store.root), "--from", token, "--to", "store", path],
        ["mirror", "sync", "http://127.0.0.1:1", token],
        ["mirror", "sync", token, str(tmp_path / "m")],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "kiln", *args], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert r.returncode == 2, (args, r.stderr)
        assert "kiln_6645cb44_*** is a registry token" in r.stderr, r.stderr
        assert token[14:] not in r.stderr
        assert not (tmp_path / token).exists()
