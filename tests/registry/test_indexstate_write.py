"""``registry/indexstate._write``: a state file is replaced whole or not at all, and a
write that fails (a full disk) or is interrupted leaves no temp file beside it: GC does
not look in ``index-state/``, so one left there stayed for good."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from kiln.registry import indexstate


def _full_disk(fd: int, data: bytes) -> None:
    os.write(fd, data[:10])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_write_keeps_the_old_state_and_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    state = tmp_path / "index-state" / "ab.json"
    state.parent.mkdir()
    indexstate._write(state, b'{"version": 1}\n')
    monkeypatch.setattr(indexstate, "write_all", _full_disk)
    with pytest.raises(OSError, match="No space"):
        indexstate._write(state, b'{"version": 2, "padding": "' + b"x" * 100 + b'"}\n')
    assert state.read_bytes() == b'{"version": 1}\n'
    assert sorted(p.name for p in state.parent.iterdir()) == ["ab.json"]


def test_an_interrupted_write_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    state = tmp_path / "ab.json"

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(indexstate.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        indexstate._write(state, b"{}\n")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
