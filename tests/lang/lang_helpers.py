"""Helpers shared by the recipe-language tests (imported as ``lang_helpers``)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

from kiln.lang.sources import filtered_copy
from kiln.store.nar import hash_path
from kiln.store.paths import make_source_path

DATA = Path(__file__).resolve().parent.parent / "data" / "lang"


def source_hasher(store_dir: str = "/kiln/store"):
    def add(src: Path, name: str) -> str:
        copy = filtered_copy(src)
        try:
            h, _ = hash_path(copy)
        finally:
            shutil.rmtree(copy.parent)
        return str(make_source_path(name, h, store_dir=store_dir))

    return add


def run_kiln(
    args: list[str],
    cwd: Path,
    env_extra: dict | None = None,
    home: Path | None = None,
    cpu: int | None = None,
    mem: int | None = None,
    timeout: float = 120,
):
    """``python -m kiln ARGS`` in ``cwd`` without the caller's ``KILN_*`` variables;
    ``cpu``/``mem``: its CPU seconds and address space limited (``RLIMIT_CPU``/``_AS``)."""

    def limit() -> None:
        if cpu is not None:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        if mem is not None:
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))

    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    if home is not None:
        env["KILN_HOME"] = str(home)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit if cpu is not None or mem is not None else None,
    )
