"""SIGHUP to ``kiln serve`` reopens the access log in every worker and the server goes
on serving (logrotate: ``mv access.log access.log.1``, then HUP), where it used to end
the server ("kiln: terminated") while the workers kept writing to the moved file."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from regkit import kiln, request, start_kiln
from test_serve_workers import children, stop, workers_of


def _open_files(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # (closed meanwhile)
            out.add(os.readlink(fd))
    return out


AFTER = "/" + "a" * 32 + ".narinfo"  # (a miss: 404, logged as any answer)


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reopens_the_access_log_in_every_worker(tmp_path: Path, workers: int) -> None:
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    log, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    srv = start_kiln(["--dir", str(reg), "--workers", str(workers), "--access-log", str(log)])
    try:
        serving = workers_of(srv, workers) if workers > 1 else [srv.proc.pid]
        assert request(srv.url + "/nix-cache-info")[0] == 200
        log.rename(rotated)
        os.kill(srv.proc.pid, signal.SIGHUP)
        # every worker (the process itself with one) lets go of the moved file
        deadline = time.monotonic() + 30
        while any(str(rotated) in _open_files(p) or str(log) not in _open_files(p) for p in serving):
            assert srv.proc.poll() is None, srv.proc.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "a worker still writes to the rotated access log"
            time.sleep(0.05)
        for _ in range(8):
            assert request(srv.url + AFTER)[0] == 404
        assert srv.proc.poll() is None
        assert workers == 1 or children(srv.proc.pid) == serving  # no worker was replaced
        status, err = stop(srv)
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
    assert status == 0, err
    assert "terminated" not in err, err
    assert "/nix-cache-info" in rotated.read_text() and AFTER not in rotated.read_text()
    assert log.read_text().count(AFTER) == 8
