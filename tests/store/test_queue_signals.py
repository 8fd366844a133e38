"""A signal while the main thread takes a chunk from a reader thread's queue
(``nar.hash_path``'s reader, ``debarchive.ReadAhead``'s decompressor) ends the work: it
does not hang. A signal's exception raised just after ``Queue.get`` took the queue's
lock used to leave it held: the reader blocked on it for ever, and so did the join that
waits for the reader. The take now runs in a ``sigshield`` region. The moment is made
exact: the main thread's ``Condition.__enter__`` inside ``Queue.get`` sends SIGINT right
after taking the lock; the handler raises as kiln's do (``sigshield.deliver``). Without the region the
ReadAhead case hung on CPython 3.11.7; the hash case did not at this exact moment (the
handler happened to run where the lock is released on the way out), and is kept as a
check that the work still ends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sigkit import sigint_after_condition_lock

RUNNER = (
    """
import io, os, signal, sys
from kiln.store import sigshield
signal.signal(signal.SIGINT, lambda *a: sigshield.deliver(KeyboardInterrupt()))
"""
    + sigint_after_condition_lock("get")
    + """
try:
    if sys.argv[1] == "hash":
        from kiln.store import nar
        nar.hash_path(sys.argv[2], chunk_size=1 << 16)
    else:
        from kiln.store.debarchive import ReadAhead
        r = ReadAhead(io.BytesIO(os.urandom(1 << 22)), chunk=1 << 16)
        try:
            while r.read(1 << 16):
                pass
        finally:
            r.close()
except KeyboardInterrupt:
    sys.exit(130)
sys.exit(0 if not _armed[0] else 3)
"""
)


@pytest.mark.parametrize("what", ["hash", "readahead"])
def test_a_signal_as_a_chunk_is_taken_from_the_reader_ends_the_work(tmp_path: Path, what: str) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    for i in range(64):  # (many batches: the reader thread runs)
        (tree / f"f{i}").write_bytes(bytes([i]) * (1 << 16))
    r = subprocess.run(
        [sys.executable, "-c", RUNNER, what, str(tree)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 130, r.stderr
