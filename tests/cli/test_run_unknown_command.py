"""``kiln run PKG -- WORD``: the first word after ``--`` is the command; one that is in
neither the package's ``bin`` nor the host's PATH is refused before anything starts,
saying so and how to give the word to the package's program instead (the host's ``env``
said "'Bob': No such file or directory", for ``kiln run greeter -- Bob``)."""

from __future__ import annotations

import shutil

import pytest
from clikit import kiln

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
]


def test_an_unknown_command_is_named(tmp_path) -> None:
    pkg = tmp_path / "greeter"
    (pkg / "bin").mkdir(parents=True)
    (pkg / "bin" / "greeter").write_text('#!/bin/sh\necho hello "$@"\n')
    (pkg / "bin" / "greeter").chmod(0o755)
    st = ["--store", str(tmp_path / "st")]
    path = kiln("store", "add", str(pkg), *st).stdout.strip()
    r = kiln("run", *st, path, "--", "Bob")
    assert r.returncode == 1, r.stderr
    assert (
        f"no command 'Bob' in {path}/bin or on PATH" in r.stderr and "kiln run PKG -- greeter Bob" in r.stderr
    )
    r = kiln("run", *st, path, "--", "greeter", "Bob")
    assert r.returncode == 0 and r.stdout == "hello Bob\n", r.stderr
    r = kiln("run", *st, path, "--", "true")  # (a host command: on PATH)
    assert r.returncode == 0, r.stderr
    # kiln's options between PKG and -- are kiln's (they went to the program)
    r = kiln("run", path, *st, "--", "greeter", "Ann")
    assert r.returncode == 0 and r.stdout == "hello Ann\n", r.stderr
    r = kiln("run", *st, path, "--", "--", "x")  # (after the first --: all the command's)
    assert r.returncode == 0 and r.stdout == "hello -- x\n", r.stderr
