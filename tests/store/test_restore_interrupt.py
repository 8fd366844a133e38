"""A ^C (SIGTERM, SIGHUP: kiln raises them as exceptions) at any moment of ``restore``
leaves nothing behind: one just after the hidden directory was made, before its name was
kept, used to leave ``.out.restore-<pid>-*`` for good (the sweep of dead writers' leftovers
spares a live pid's, and its next restore may be much later)."""

from __future__ import annotations

import io
import os

import pytest

from kiln.store import nar, nar_restore


@pytest.mark.parametrize("at", ["after-mkdir", "before-mkdir"])
def test_an_interrupt_around_the_scratch_mkdir_leaves_nothing(tmp_path, monkeypatch, at: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    data = nar.dump_bytes(src)
    real_mkdir = os.mkdir

    def mkdir(path, mode=0o777, *a, **kw):  # noqa: ANN001, ANN202 - os.mkdir's
        if b".restore-" in os.fsencode(path):
            if at == "before-mkdir":
                raise KeyboardInterrupt
            real_mkdir(path, mode, *a, **kw)
            raise KeyboardInterrupt  # as a signal handler's, right after the syscall
        return real_mkdir(path, mode, *a, **kw)

    dest = tmp_path / "dst" / "out"
    dest.parent.mkdir()
    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(KeyboardInterrupt):
        nar_restore.restore(io.BytesIO(data), dest)
    monkeypatch.undo()
    assert os.listdir(dest.parent) == []
    nar_restore.restore(io.BytesIO(data), dest)  # and the next one works
    assert (dest / "f").read_text() == "x"
