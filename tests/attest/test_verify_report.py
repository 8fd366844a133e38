"""``kiln verify``'s report: a closure with a hole fails (``closure`` check), and text
from outside (a registry's attestation subjects) cannot drive the terminal or fake a
line of the report. Real stores, a real ``kiln serve`` registry, the real command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from clikit import kiln, line_within

from kiln.cmd_verify import render
from kiln.store import attestations, dsse, intoto
from kiln.store.policy import Check, Report
from kiln.store.signing import SecretKey


def test_a_closure_missing_a_quarantined_dependency_fails(built) -> None:
    root = str(built.store.root)
    r = kiln("verify", built.hello, "--store", root, "--closure")
    assert r.returncode == 0 and "pass closure: its 1 reference(s) are valid" in r.stdout, r.stdout
    built.quarantine_zlib()
    r = kiln("verify", built.hello, "--store", root, "--closure")
    assert r.returncode == 1, r.stdout
    assert "FAIL closure: references 1 path(s) not valid in the store" in r.stdout
    assert built.zlib in r.stdout.split("FAIL closure:")[1].splitlines()[0]
    assert "result: FAIL (1 of 1 paths failed)" in r.stdout
    doc = json.loads(kiln("verify", built.hello, "--store", root, "--closure", "--json").stdout)
    assert doc["ok"] is False
    (p,) = doc["paths"]
    assert [c["name"] for c in p["checks"] if not c["ok"]] == ["closure"]
    # without --closure too: the path itself cannot be used without its reference
    r = kiln("verify", built.hello, "--store", root)
    assert r.returncode == 1 and "FAIL closure: references 1 path(s) not valid" in r.stdout, r.stdout


HOSTILE = "x\n  pass signatures: ok\nresult: PASS\x1b[8m\r\u202e"


def _one_line_each(out: str) -> None:
    """No control character but the newlines between lines; one result line, last."""
    assert not any(ord(c) < 32 and c != "\n" or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in out), out
    lines = out.splitlines()
    assert [x for x in lines if x.startswith("result:")] == [lines[-1]], lines
    assert not any(x.lstrip().startswith(("pass signatures", "result: PASS")) for x in lines), lines


def test_a_finding_is_one_escaped_line() -> None:
    report = Report(
        "/kiln/store/" + "1" * 32 + "-p\x1b]0;title\x07",
        "policy.toml",
        (Check("valid", True, "registered"), Check("attestations", False, f"refused: {HOSTILE}")),
    )
    lines = render([report], closure=False)
    _one_line_each("\n".join(lines) + "\n")
    assert lines[-1] == "result: FAIL (1 check failed)"
    assert "\\x1b]0;title\\x07" in lines[0]
    assert (
        lines[2] == "  FAIL attestations: refused: x\\n  pass signatures: ok\\nresult: PASS\\x1b[8m\\r\\u202e"
    )


@pytest.fixture
def serve() -> Iterator:
    """``serve(root)``: ``kiln serve --store root`` on a free local port; stopped by pid."""
    procs: list[subprocess.Popen] = []

    def start(root: Path) -> str:
        cmd = [sys.executable, "-m", "kiln", "serve", "--store", str(root), "--listen", "127.0.0.1:0"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        line = line_within(proc.stdout, 30)
        assert "listening on http://127.0.0.1:" in line, line
        return line.split("listening on ", 1)[1].strip()

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def test_a_registrys_hostile_attestation_cannot_fake_the_report(built, serve) -> None:
    """The registry serves a provenance whose subject name holds a forged "pass" check, a
    forged result line and an escape that would hide the real one; the refusal quotes the
    subject, and the report shows it escaped, on the one line of its check."""
    k = SecretKey.generate("evil-1")
    st = intoto.statement([intoto.subject(HOSTILE, "0" * 64)], intoto.PROVENANCE_TYPE, {})
    d = attestations._dir(built.store, built.hello)
    d.mkdir(parents=True, exist_ok=True)
    # (written as a hostile registry would hold it: attestations.write refuses the subject)
    (d / "provenance.dsse.json").write_text(attestations.sign(st, [dsse.Ed25519Signer(k.key)]).dumps())
    url = serve(built.store.root)
    r = kiln("verify", f"{url}#{built.hello}")
    assert r.returncode == 1, r.stdout + r.stderr
    _one_line_each(r.stdout)
    assert "pass signatures: ok\\nresult: PASS\\x1b[8m" in r.stdout
    assert r.stdout.splitlines()[-1].startswith("result: FAIL")
