"""``quarantine.recorded_closure_edges`` reads each ``info.txt`` safely: a huge sparse
file is reported too large (not read until MemoryError during GC), a symbolic link is
reported as one, and a genuine record with tens of thousands of references is still read
whole."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

from kiln.store.quarantine import recorded_closure_edges

_LIMIT = 2 << 30  # a child's address space: a 6 GiB read fails at once instead of swapping


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (_LIMIT, _LIMIT))


def _record(root: Path, name: str) -> Path:
    d = root / "quarantine" / name
    d.mkdir(parents=True)
    return d / "info.txt"


def test_a_huge_info_txt_is_reported_too_large(tmp_path: Path) -> None:
    with open(_record(tmp_path, "big-1"), "wb") as f:
        f.truncate(6 << 30)  # sparse: costs nothing to make
    code = (
        "import sys; from pathlib import Path; from kiln.store.quarantine import recorded_closure_edges\n"
        "print(recorded_closure_edges(Path(sys.argv[1]))[1])"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limited,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{tmp_path}/quarantine/big-1: info.txt is too large" in r.stdout, r.stdout


def test_a_symlinked_or_fifo_info_txt_is_reported_plainly(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_text("path: /kiln/store/x\n")
    os.symlink(target, _record(tmp_path, "link-1"))
    os.mkfifo(_record(tmp_path, "fifo-1"))
    edges, unread = recorded_closure_edges(tmp_path)
    assert edges == {}
    q = tmp_path / "quarantine"
    assert unread == [f"{q}/fifo-1: info.txt is a FIFO", f"{q}/link-1: info.txt is a symbolic link"]


def test_a_record_with_fifty_thousand_references_is_read(tmp_path: Path) -> None:
    refs = [f"/kiln/store/{i:032d}-reference-number-{i}" for i in range(50_000)]
    text = f"path: /kiln/store/{'a' * 32}-big\nreferences: {' '.join(refs)}\nderiver: \n"
    assert len(text) > 2_500_000
    _record(tmp_path, "many-1").write_text(text)
    edges, unread = recorded_closure_edges(tmp_path)
    assert unread == [] and edges[f"/kiln/store/{'a' * 32}-big"] == frozenset(refs)
