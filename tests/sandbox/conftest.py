"""Fixtures for the sandbox tests: a busybox-only toolchain rootfs and a real BwrapExecutor.

The rootfs is laid out like a merged-/usr Debian root (``usr/bin`` with busybox and its
applet links, ``bin -> usr/bin`` and ``sbin -> usr/bin`` symlinks), so builds get a
shell without anything of the host's /usr.
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from kiln.sandbox import BwrapExecutor, Result, SandboxSpec

BUSYBOX = "/bin/busybox"
STORE = "/kiln/store"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(item.fspath).is_relative_to(here):
            item.add_marker(pytest.mark.bwrap)
            if shutil.which("bwrap") is None:
                item.add_marker(pytest.mark.skip(reason="bubblewrap (bwrap) is not installed"))


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static is not installed")
    root = tmp_path_factory.mktemp("rootfs")
    ubin = root / "usr" / "bin"
    ubin.mkdir(parents=True)
    shutil.copy2(BUSYBOX, ubin / "busybox")
    applets = os.popen(f"{BUSYBOX} --list").read().split()
    for a in applets:
        if a != "busybox":
            (ubin / a).symlink_to("busybox")
    (root / "bin").symlink_to("usr/bin")
    (root / "sbin").symlink_to("usr/bin")
    return root


@pytest.fixture(scope="session")
def executor() -> BwrapExecutor:
    return BwrapExecutor()


@dataclass
class Run:
    result: Result
    log: str


@pytest.fixture
def build_dir(tmp_path: Path) -> Path:
    d = tmp_path / "build"
    d.mkdir()
    return d


@pytest.fixture
def sh(executor: BwrapExecutor, rootfs: Path, build_dir: Path):
    """``sh(script, **spec_fields) -> Run``: run ``/bin/sh -c script`` in a fresh sandbox."""

    def run(script: str, *, env: dict[str, str] | None = None, on_output=None, **kw) -> Run:
        spec = SandboxSpec(
            argv=("/bin/sh", "-c", script),
            build_dir=str(build_dir),
            env={"PATH": "/bin", **(env or {})},
            rootfs=str(rootfs),
            **kw,
        )
        buf = io.BytesIO()
        result = executor.run(spec, buf, on_output=on_output)
        assert result.log_bytes == len(buf.getvalue())
        return Run(result, buf.getvalue().decode(errors="replace"))

    return run
