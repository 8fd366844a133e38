"""``kiln serve --workers N`` keeps its workers running (``registry/workers.py``): a worker
that dies is logged (slot, pid, signal) and forked again, the new worker 0 runs the
background tasks (the index timestamp's re-signing), a crash loop stops the server with
exit status 1 (so a service manager's ``Restart=on-failure`` applies), and SIGTERM still
stops everything with exit status 0. Real servers, real signals."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from regkit import Server, kiln, request, start_kiln


def children(pid: int) -> list[int]:
    """The processes ``pid`` forked and has not reaped (its workers)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def workers_of(
    srv: Server, n: int, not_in: frozenset[int] | set[int] = frozenset(), within: float = 30
) -> list[int]:
    """The ``n`` worker pids of ``srv`` once all are running and none is in ``not_in``."""
    deadline = time.monotonic() + within
    while True:
        pids = children(srv.proc.pid)
        if len(pids) == n and not set(pids) & not_in:
            return pids
        assert srv.proc.poll() is None, f"kiln serve exited {srv.proc.returncode}: {srv.proc.stderr.read()}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"workers now {pids}, not {n} new ones"
        time.sleep(0.05)


def stop(srv: Server) -> tuple[int, str]:
    """SIGTERM the parent; its exit status and its stderr."""
    os.kill(srv.proc.pid, signal.SIGTERM)
    _out, err = srv.proc.communicate(timeout=30)
    return srv.proc.returncode, err


def _timestamp_version(reg: Path) -> int:
    return json.loads((reg / "index/timestamp.json").read_text())["signed"]["version"]


def test_killed_workers_are_logged_and_restarted_and_worker_0_signs_again(tmp_path: Path, keys) -> None:
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    assert kiln("registry", "publish-index", "--dir", str(reg), "--key", str(keys.sk_file)).returncode == 0
    # the timestamp re-signed every 1.8 s, by worker 0 only
    srv = start_kiln(
        ["--dir", str(reg), "--workers", "2", "--index-key", str(keys.sk_file), "--index-refresh", "0.0005"]
    )
    try:
        first = workers_of(srv, 2)
        for pid in first:  # both: whichever was worker 0 is gone
            os.kill(pid, signal.SIGKILL)
        second = workers_of(srv, 2, not_in=set(first))
        assert request(srv.url + "/nix-cache-info")[0] == 200
        # only the new workers are alive now: a newer timestamp is the new worker 0's
        seen = _timestamp_version(reg)
        deadline = time.monotonic() + 30
        while _timestamp_version(reg) <= seen:
            assert time.monotonic() < deadline, "no worker re-signs the index timestamp any more"
            time.sleep(0.2)
        status, err = stop(srv)
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
    assert status == 0, err  # SIGTERM: every worker stopped, exit 0 as before
    for pid in first:
        assert f"(pid {pid}) was killed by SIGKILL; restarting it in" in err, err
    assert "worker 0 restarted (pid" in err and "worker 1 restarted (pid" in err, err
    assert not [p for p in second if Path(f"/proc/{p}").exists()]  # all stopped with it


def test_a_crash_loop_stops_every_worker_and_exits_1(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    srv = start_kiln(["--dir", str(reg), "--workers", "2"])
    killed: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while srv.proc.poll() is None:
            assert time.monotonic() < deadline, "kiln serve went on restarting workers"
            for pid in children(srv.proc.pid):
                if pid not in killed:
                    killed.add(pid)
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        err = srv.proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
    assert srv.proc.returncode == 1, err
    assert "deaths within 60 s: stopping every worker" in err and err.rstrip().splitlines()[-1].startswith(
        "error: worker "
    ), err
    # it backed off: 0.1 s, then 0.2 s, ... before forking a slot again
    assert "restarting it in 0.1 s" in err and "restarting it in 1.6 s" in err, err
    # every worker is gone with it (none holds the port)
    assert not [p for p in killed if Path(f"/proc/{p}").exists()]


def test_a_worker_ended_by_someone_else_is_restarted(tmp_path: Path) -> None:
    """A worker that exits without the parent asking (here a SIGTERM sent to it alone) is
    not a shutdown: logged with its exit status and forked again."""
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    srv = start_kiln(["--dir", str(reg), "--workers", "2"])
    try:
        first = workers_of(srv, 2)
        os.kill(first[1], signal.SIGTERM)
        workers_of(srv, 2, not_in={first[1]})
        assert request(srv.url + "/nix-cache-info")[0] == 200
        status, err = stop(srv)
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
    assert status == 0, err
    assert f"(pid {first[1]}) exited with status 0; restarting it in 0.1 s" in err, err
