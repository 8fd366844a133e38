"""Fixtures for rebuilder tests: a real local store with a static busybox as a source,
derivations that use it as their builder (``Derivation.make`` + ``finalize`` +
``store.add_text``, as in tests/build), the ``kiln`` command run as a subprocess, keys,
and real ``kiln serve`` registries on 127.0.0.1 stopped by pid at teardown.

Everything runs for real: bubblewrap sandboxes, stores, HTTP servers. Nothing is mocked.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.store.derivation import Derivation, Output, drv_path, finalize
from kiln.store.localstore import LocalStore
from kiln.store.signing import SecretKey, write_public_key, write_secret_key

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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    s = LocalStore.open(tmp_path / "home")
    yield s
    s.close()


@pytest.fixture
def busybox_path(store: LocalStore, tmp_path: Path) -> str:
    d = tmp_path / "bb"
    (d / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, d / "bin" / "busybox")
    for a in APPLETS:
        os.symlink("busybox", d / "bin" / a)
    return store.add_path(d, "busybox-static").path


@pytest.fixture
def graph(store: LocalStore, busybox_path: str) -> Graph:
    return Graph(store, busybox_path)


@pytest.fixture
def kiln(store: LocalStore) -> Kiln:
    return Kiln(store.root)


@pytest.fixture
def rebuilder_keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path, "rebuilder-a-1")


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve_store() -> Iterator:
    """``serve_store(root)`` starts ``kiln serve --store root`` on a free local port."""
    started: list[Server] = []

    def start(root: Path) -> Server:
        port = _free_port()
        cmd = [sys.executable, "-m", "kiln", "serve", "--store", str(root), "--listen", f"127.0.0.1:{port}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        s = Server(proc, f"http://127.0.0.1:{port}")
        started.append(s)
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if "listening" not in line:
            s.stop()
            raise RuntimeError(f"kiln serve failed: {line} {proc.stderr.read()}")  # type: ignore[union-attr]
        return s

    yield start
    for s in started:
        s.stop()
