"""Bad option values are usage errors naming the option, never a traceback ("internal
error", exit 70) after work has started."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def kiln(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args], capture_output=True, text=True, timeout=60, env=env
    )


@pytest.mark.parametrize(
    "option, value, says",
    [
        ("--cores", "-4", "whole number >= 0"),
        ("-j", "0", "whole number >= 1"),
        ("--rounds", "zero", "whole number >= 1"),
        ("--timeout", "-1", "positive number of seconds"),
        ("--max-silent-time", "nan", "positive number of seconds"),
        ("--sigs-needed", "-1", "whole number >= 0"),
    ],
)
def test_build_options(tmp_path: Path, option: str, value: str, says: str) -> None:
    r = kiln("build", "--store", str(tmp_path / "s"), option, value, str(tmp_path / "x.recipe"))
    assert r.returncode == 2 and says in r.stderr and "internal error" not in r.stderr, r.stderr


def test_kiln_sigs_needed_from_the_environment(tmp_path: Path) -> None:
    recipe = tmp_path / "x.recipe"
    recipe.write_text('package x {\n  build = "echo > $out"\n}\n')
    env = dict(os.environ, KILN_SIGS_NEEDED="abc")
    r = kiln(
        "build",
        "--store",
        str(tmp_path / "s"),
        "--substituter",
        f"file://{tmp_path}/reg",
        str(recipe),
        env=env,
    )
    assert r.returncode == 1 and "KILN_SIGS_NEEDED must be a whole number" in r.stderr, r.stderr


def test_serve_on_a_port_in_use_or_out_of_range(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = kiln("serve", "--dir", str(tmp_path / "reg"), "--listen", f"127.0.0.1:{port}")
        assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in r.stderr, r.stderr
    for bad in ("127.0.0.1:99999", "5000", "host:port"):
        r = kiln("serve", "--dir", str(tmp_path / "reg"), "--listen", bad)
        assert r.returncode == 1 and "port from 0 to 65535" in r.stderr, r.stderr
    # neither left a new registry directory behind (it was made before the port was tried)
    assert not (tmp_path / "reg").exists()


def test_signer_key_without_signer_cmd_is_refused(tmp_path: Path) -> None:
    """It was ignored, and kiln made a new signing key on the build machine instead."""
    r = kiln(
        "build",
        "--store",
        str(tmp_path / "s"),
        "--signer-key",
        "/nonexistent.pub",
        str(tmp_path / "x.recipe"),
    )
    assert r.returncode == 2 and "--signer-key names the public key of --signer-cmd" in r.stderr, r.stderr
    assert not (tmp_path / "s" / "keys").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["build", "--vary", "x.recipe"], "--vary goes with --check"),
        (["build", "--vary-only", "umask", "x.recipe"], "--vary-only goes with --check"),
        (
            ["build", "--check", "--vary-only", "umask,tz", "x.recipe"],
            "argument --vary-only: tz: expected one or more of dirs, cores",
        ),
        (
            ["rebuild", "--vary-only", "", "/kiln/store/x"],
            "argument --vary-only: nothing: expected one or more of",
        ),
        (["store", "sign", "--key", "k.sec"], "give store paths to sign, or --all"),
        (
            ["store", "sign", "--key", "k.sec", "--all", "/kiln/store/x"],
            "give store paths to sign, or --all (not both)",
        ),
        (
            ["copy", "--from", "store", "--to", "store", "/kiln/store/x"],
            "--from store --to store: nothing to do",
        ),
    ],
)
def test_options_that_do_not_go_together_are_usage_errors(tmp_path: Path, args: list[str], says: str) -> None:
    """Exit 2, as argparse's own usage errors (they exited 1, as a failed command)."""
    (tmp_path / "k.sec").write_text("x")
    r = kiln(*args, "--store", str(tmp_path / "s")) if args[0] != "build" else kiln(*args)
    assert r.returncode == 2 and f"error: {says}" in r.stderr, r.stderr


def test_a_drv_that_is_not_utf8_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """A ``.drv`` with a byte that is not UTF-8 was an internal error (UnicodeDecodeError)
    in show-derivation and build."""
    drv = tmp_path / "bad.drv"
    drv.write_bytes(b'Derive([("out","","","")],[],[],"x86_64-linux","/bin/sh",[],[("name","\xff")])')
    env = dict(os.environ, KILN_HOME=str(tmp_path / "home"))
    r = kiln("show-derivation", str(drv), env=env)
    assert r.returncode == 1 and "not a derivation (not UTF-8 at byte" in r.stderr, r.stderr
    assert kiln("store", "init", env=env).returncode == 0
    added = kiln("store", "add", str(drv), env=env).stdout.strip()
    for args in (["build", added], ["show-derivation", added]):
        r = kiln(*args, env=env)
        assert r.returncode == 1 and "not UTF-8" in r.stderr and "internal error" not in r.stderr, (
            args,
            r.stderr,
        )


def test_files_that_are_not_utf8_are_errors_not_crashes(tmp_path: Path) -> None:
    """A registry directory's nix-cache-info and a policy file that are not UTF-8 were
    internal errors (UnicodeDecodeError)."""
    env = dict(os.environ, KILN_HOME=str(tmp_path / "home"))
    reg = tmp_path / "reg"
    reg.mkdir()
    (reg / "nix-cache-info").write_bytes(b"\xffStoreDir: /kiln/store\n")
    for args in (
        ["registry", "verify", "--dir", str(reg)],
        ["registry", "token", "create", "--scope", "read", "--dir", str(reg)],
    ):
        r = kiln(*args, env=env)
        assert r.returncode == 1 and "nix-cache-info is not UTF-8" in r.stderr, (args, r.stderr)
    pol = tmp_path / "p.toml"
    pol.write_bytes(b"\xff\xfe")
    pub = "someone-1:" + "A" * 43 + "="
    r = kiln("key", "revoke", pub, "--policy", str(pol), env=env)
    assert r.returncode == 1 and "not UTF-8" in r.stderr and pol.read_bytes() == b"\xff\xfe", r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["store", "add", ""],  # was the current directory
        ["eval", "x.recipe", ""],  # was every attribute
        ["build", "x.recipe", ""],
        ["sbom", "/kiln/store/" + "0" * 32 + "-x", "-o", ""],  # was stdout
    ],
)
def test_an_empty_argument_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    """An empty string (an unset shell variable) is refused rather than read as "here"
    or "everything"."""
    r = kiln(*args, env=dict(os.environ, KILN_HOME=str(tmp_path / "home")))
    assert r.returncode == 2 and "expected a value, found an empty string" in r.stderr, r.stderr


def test_names_printed_one_per_line_cannot_hold_a_line_break(tmp_path: Path) -> None:
    env = dict(os.environ, KILN_HOME=str(tmp_path / "home"))
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg), env=env).returncode == 0
    r = kiln(
        "registry", "token", "create", "--scope", "read", "--dir", str(reg), "--comment", "a\nb", env=env
    )
    assert r.returncode == 1 and "must be printable" in r.stderr, r.stderr
    (tmp_path / "src").mkdir()
    r = kiln("store", "add", str(tmp_path / "src"), "--add-root", "a\nb", env=env)
    assert r.returncode == 1 and "invalid GC root name" in r.stderr, r.stderr


def test_registry_init_checks_its_arguments(tmp_path: Path) -> None:
    """``--store-dir relative`` was written into nix-cache-info and served; ``--dir ""``
    made the current directory a registry."""
    r = kiln("registry", "init", "--dir", str(tmp_path / "reg"), "--store-dir", "relative")
    assert r.returncode == 1 and "invalid store dir 'relative'" in r.stderr, r.stderr
    assert not (tmp_path / "reg" / "nix-cache-info").exists()
    r = kiln("registry", "init", "--dir", "")
    assert r.returncode == 2 and "expected a value" in r.stderr, r.stderr


def test_serve_with_an_index_key_the_root_no_longer_names_is_refused(tmp_path: Path) -> None:
    """After kiln registry rotate-root, a server restarted with the old --index-key started
    and said nothing; each push then failed to publish (HTTP 400 to the pusher) with its
    paths published but not in the index, and healthz said ok."""
    reg, old, new = tmp_path / "reg", tmp_path / "idx-1", tmp_path / "idx-2"
    for name, f in (("idx-1", old), ("idx-2", new)):
        assert kiln("key", "generate", name, "--out", str(f)).returncode == 0
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    assert kiln("registry", "publish-index", "--dir", str(reg), "--key", str(old)).returncode == 0
    r = kiln("registry", "rotate-root", "--dir", str(reg), "--old-key", str(old), "--new-key", str(new))
    assert r.returncode == 0, r.stderr
    r = kiln("serve", "--dir", str(reg), "--index-key", str(old), "--listen", "127.0.0.1:0")
    assert r.returncode == 1, r.stderr
    assert (
        "--index-key: key idx-1 is not a timestamp/snapshot/index key of this registry's root v2" in r.stderr
    )
    assert "start the server with the new key" in r.stderr
