"""Helpers for build-loop tests: a real local store, a static busybox added to it as a
source, and a helper that writes derivations using it as their builder.

These tests run real bubblewrap sandboxes; nothing is mocked. Derivations are made
directly (``Derivation.make`` + ``finalize``) rather than from recipes, so the build loop
is tested on its own; recipes are covered end to end in ``test_packages.py``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kiln.store.derivation import Derivation, Output, drv_path, finalize
from kiln.store.localstore import LocalStore

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
APPLETS = [
    "sh",
    "cat",
    "echo",
    "mkdir",
    "chmod",
    "sleep",
    "cp",
    "ls",
    "rm",
    "touch",
    "head",
    "mknod",
    "true",
    "find",
]


def add_busybox(store: LocalStore, work: Path, applets: list[str] = APPLETS) -> str:
    """Add a static busybox with ``applets`` linked to ``store`` (made in ``work/bb``);
    its store path, the ``Graph``'s toolchain."""
    d = work / "bb"
    (d / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, d / "bin" / "busybox")
    for a in applets:
        os.symlink("busybox", d / "bin" / a)
    return store.add_path(d, "busybox-static").path


class Graph:
    """Makes and stores derivations whose builder is the store's static busybox."""

    def __init__(self, store: LocalStore, bb: str) -> None:
        self.store = store
        self.bb = bb
        self.memo: dict = {}
        self.drvs: dict[str, Derivation] = {}

    def drv(
        self, name: str, script: str, inputs: list[str] = (), outputs=("out",), env=None, srcs=()
    ) -> tuple[str, Derivation]:
        """A derivation running ``sh -c script``; ``inputs`` are .drv paths (their ``out``),
        ``srcs`` more store paths it may read (sources)."""
        e = {"PATH": f"{self.bb}/bin", "name": name, **(env or {})}
        for i, p in enumerate(inputs):
            e[f"in{i}"] = self.drvs[p].output_path("out")
        d = Derivation.make(
            name,
            outputs={o: Output() for o in outputs},
            input_drvs={p: ["out"] for p in inputs},
            input_srcs=[self.bb, *srcs],
            builder=f"{self.bb}/bin/busybox",
            args=["sh", "-c", script],
            env={**e, **{o: "" for o in outputs}},
            store_dir=self.store.store_dir,
        )
        d = finalize(d, lambda p: self.drvs[p], self.memo)
        p = str(drv_path(d))
        self.store.add_text(f"{name}.drv", d.serialize().encode(), [str(r) for r in d.references()])
        self.drvs[p] = d
        return p, d


def flaky_signer(tmp_path: Path, key, flag: Path, *, dsse_only: bool = False) -> str:
    """A ``--signer-cmd`` standing in for a KMS that holds ``key`` (a ``SecretKey``) and
    refuses to sign while ``flag`` exists (``dsse_only``: refuses only DSSE envelopes, so
    path signatures still work)."""
    import sys
    import textwrap

    from kiln.store.keyfiles import write_secret_key

    kf = tmp_path / "hsm.sec"
    write_secret_key(kf, key)
    script = tmp_path / "signer.py"
    refuse = (
        f'data.startswith(b"DSSEv1 ") and os.path.exists({str(flag)!r})'
        if dsse_only
        else f"os.path.exists({str(flag)!r})"
    )
    script.write_text(
        textwrap.dedent(f"""\
        import base64, os, sys
        import nacl.signing
        from kiln.store.keyfiles import load_secret_key
        data = sys.stdin.buffer.read()
        if {refuse}:
            sys.exit("the KMS is unavailable")
        sk = load_secret_key({str(kf)!r})
        print(base64.b64encode(nacl.signing.SigningKey(sk.key[:32]).sign(data).signature).decode())
        """)
    )
    return f"{sys.executable} {script}"
