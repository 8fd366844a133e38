"""A GC's trash (and a lock) clears its descriptor before closing it, so an interrupt
between the two (Ctrl-C lands anywhere) can never make the cleanup's second ``close``
close the same number again, by then maybe another file's: ``kiln store gc`` interrupted
there died with "internal error: OSError: [Errno 9] Bad file descriptor", exit 70, not
130 (concurrency soak)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiln.store.gcremove import Trash


def test_an_interrupted_close_never_closes_the_descriptor_twice(tmp_path: Path, monkeypatch) -> None:
    trash = Trash(tmp_path)
    real_close = os.close
    fired = []

    def close_then_interrupt(fd: int) -> None:
        real_close(fd)
        if not fired:
            fired.append(fd)
            raise KeyboardInterrupt  # (as if Ctrl-C arrived right after the close)

    monkeypatch.setattr(os, "close", close_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        trash.close()
    monkeypatch.setattr(os, "close", real_close)
    other = os.open(tmp_path / "other", os.O_CREAT | os.O_RDWR)
    assert other == fired[0]  # (the lowest free number: the one just closed)
    try:
        trash.close()  # gc's ``finally``: must not touch ``other``
        os.fstat(other)
    finally:
        real_close(other)
