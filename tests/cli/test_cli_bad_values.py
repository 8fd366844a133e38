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
    r = kiln("serve", "--dir", str(tmp_path / "reg"), "--listen", "127.0.0.1:99999")
    assert r.returncode == 1 and "port from 0 to 65535" in r.stderr, r.stderr


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
        (["store", "sign", "--key", "k.sec"], "give store paths to sign, or --all"),
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
