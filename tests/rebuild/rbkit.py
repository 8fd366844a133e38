"""Helpers for rebuilder tests (fixtures are in conftest.py): derivations whose builder is
a static busybox (``Derivation.make`` + ``finalize`` + ``store.add_text``, as in
tests/build), the ``kiln`` command as a subprocess, keys, and ``kiln serve`` processes.
A separate module (not conftest) so test files can import it in any import mode."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.store.derivation import Derivation, Output, drv_path, finalize
from kiln.store.keyfiles import write_public_key, write_secret_key
from kiln.store.localstore import LocalStore
from kiln.store.signing import SecretKey

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
APPLETS = ["sh", "cat", "echo", "mkdir", "chmod", "cp", "ls", "rm", "touch", "head", "true", "false"]

needs_bwrap = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
]


class Graph:
    """Makes and stores derivations whose builder is the store's static busybox."""

    def __init__(self, store: LocalStore, bb: str) -> None:
        self.store = store
        self.bb = bb
        self.memo: dict = {}
        self.drvs: dict[str, Derivation] = {}

    def drv(self, name: str, script: str, inputs: list[str] = (), env=None) -> tuple[str, str]:
        """A derivation running ``sh -c script``; returns ``(.drv path, out path)``."""
        e = {"PATH": f"{self.bb}/bin", "name": name, **(env or {})}
        for i, p in enumerate(inputs):
            e[f"in{i}"] = self.drvs[p].output_path("out")
        d = Derivation.make(
            name,
            outputs={"out": Output()},
            input_drvs={p: ["out"] for p in inputs},
            input_srcs=[self.bb],
            builder=f"{self.bb}/bin/busybox",
            args=["sh", "-c", script],
            env={**e, "out": ""},
            store_dir=self.store.store_dir,
        )
        d = finalize(d, lambda p: self.drvs[p], self.memo)
        p = str(drv_path(d))
        self.store.add_text(f"{name}.drv", d.serialize().encode(), [str(r) for r in d.references()])
        self.drvs[p] = d
        return p, d.output_path("out")


class Kiln:
    """``python -m kiln ... --store ROOT`` as a subprocess."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = dict(os.environ, KILN_HOME=str(root))
        self.env.pop("KILN_SIGN_KEY", None)

    def __call__(self, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
        r = subprocess.run(
            [sys.executable, "-m", "kiln", *args], env=self.env, capture_output=True, text=True, timeout=300
        )
        if expect is not None and r.returncode != expect:
            raise AssertionError(
                f"kiln {' '.join(args)} exited {r.returncode}, expected {expect}:\n{r.stdout}\n{r.stderr[-4000:]}"
            )
        return r


class Keys:
    def __init__(self, d: Path, name: str) -> None:
        self.sk = SecretKey.generate(name)
        self.pk = self.sk.public()
        self.sk_file = d / f"{name}.sec"
        self.pk_file = d / f"{name}.pub"
        write_secret_key(self.sk_file, self.sk)
        write_public_key(self.pk_file, self.pk)


# ---------------------------------------------------------------------------- servers


class Server:
    def __init__(self, proc: subprocess.Popen, url: str) -> None:
        self.proc, self.url = proc, url

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
