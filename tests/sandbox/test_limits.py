"""Limits and killing: each breach must kill the *whole* process tree of the build, which
the tests check from the host side through /proc, and report why in the Result."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest


def host_pids(marker: str) -> list[int]:
    """Host pids of live (non-zombie) processes whose argv contains ``marker``."""
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{p}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in argv and state != b"Z":
            pids.append(int(p))
    return pids


def sleepers() -> tuple[str, list[str]]:
    """A script starting three sleepers (plain, setsid'd, double-forked) and the markers."""
    base = random.randrange(700000, 799000)
    marks = [str(base), str(base + 1), str(base + 2)]
    script = f"sleep {marks[0]} & setsid sleep {marks[1]} & (sleep {marks[2]} &); "
    return script, marks


def watcher(marks: list[str], seen: dict[str, list[int]]):
    """on_output callback: on the 'started' line, record the sleepers' host pids."""
    buf = bytearray()

    def on_output(chunk: bytes) -> None:
        buf.extend(chunk)
        if b"started" in buf and not seen:
            deadline = time.monotonic() + 5.0
            found: dict[str, list[int]] = {}
            for m in marks:
                while time.monotonic() < deadline:  # the sleepers may still be exec'ing
                    if pids := host_pids(m):
                        found[m] = pids
                        break
                    time.sleep(0.005)
            seen.update(found)  # all at once: other threads wait for a non-empty dict

    return on_output


def assert_gone(seen: dict[str, list[int]], marks: list[str]) -> None:
    assert sorted(seen) == sorted(marks), "the sleepers were visible on the host while running"
    for m in marks:
        assert host_pids(m) == [], f"sleeper {m} survived the kill"


def test_timeout_kills_whole_tree(sh) -> None:
    script, marks = sleepers()
    assert all(host_pids(m) == [] for m in marks)
    seen: dict[str, list[int]] = {}
    r = sh(script + "echo started; wait; sleep 1000", timeout=2.0, on_output=watcher(marks, seen))
    assert r.result.reason == "timeout" and not r.result.ok
    assert r.result.exit_status is None and r.result.signal == signal.SIGKILL
    assert 2.0 <= r.result.duration < 6.0
    assert_gone(seen, marks)


def test_silence_limit(sh) -> None:
    script, marks = sleepers()
    seen: dict[str, list[int]] = {}
    r = sh(script + "echo started; sleep 1000", max_silent=2.0, timeout=30, on_output=watcher(marks, seen))
    assert r.result.reason == "silent"
    assert 2.0 <= r.result.duration < 8
    assert r.log == "started\n"
    assert_gone(seen, marks)


def test_output_resets_silence_timer(sh) -> None:
    r = sh("for i in 1 2 3 4 5 6; do echo $i; sleep 0.3; done", max_silent=1.2, timeout=20)
    assert r.result.ok, r.result
    assert r.log.split() == ["1", "2", "3", "4", "5", "6"]


def test_log_limit(sh, tmp_path) -> None:
    r = sh("yes kiln-log-line", max_log_bytes=100_000, timeout=20)
    assert r.result.reason == "log-limit"
    assert r.result.log_bytes == 100_000 == len(r.log)
    assert r.log.startswith("kiln-log-line\n")
    assert "log" in r.result.describe()


def test_on_output_sees_exactly_the_log(sh) -> None:
    chunks: list[bytes] = []
    r = sh("for i in $(seq 1 2000); do echo line $i; done; echo tail >&2", on_output=chunks.append)
    assert r.result.ok
    assert b"".join(chunks).decode() == r.log
    assert r.log.endswith("line 2000\ntail\n")


def test_ctrl_c_kills_the_tree(sh) -> None:
    """A real SIGINT to the parent while a build runs: KeyboardInterrupt propagates and
    the build's processes are gone by the time it does."""
    script, marks = sleepers()
    seen: dict[str, list[int]] = {}
    record = watcher(marks, seen)

    def on_output(chunk: bytes) -> None:
        record(chunk)
        if seen:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        sh(script + "echo started; wait", timeout=30, on_output=on_output)
    assert_gone(seen, marks)


def test_exception_in_callback_kills_the_tree(sh) -> None:
    script, marks = sleepers()
    seen: dict[str, list[int]] = {}
    record = watcher(marks, seen)

    def on_output(chunk: bytes) -> None:
        record(chunk)
        if seen:
            raise BrokenPipeError("terminal went away")

    with pytest.raises(BrokenPipeError):
        sh(script + "echo started; wait", timeout=30, on_output=on_output)
    assert_gone(seen, marks)


def test_background_processes_die_with_the_build(sh, build_dir) -> None:
    """A build that exits normally leaves nothing running (the PID namespace goes). It
    ends once the sleepers were seen from the host (it waits for ``/build/go``)."""
    script, marks = sleepers()
    seen: dict[str, list[int]] = {}
    record = watcher(marks, seen)

    def on_output(chunk: bytes) -> None:
        record(chunk)
        if seen:
            (build_dir / "go").touch()

    wait = "i=0; while [ ! -e /build/go ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done"
    r = sh(script + f"echo started; {wait}", timeout=60, on_output=on_output)
    assert r.result.ok and r.result.duration < 30
    assert_gone(seen, marks)


def test_builder_killed_by_signal_inside(sh) -> None:
    r = sh("kill -9 $$")
    assert r.result.reason == "failed" and r.result.exit_status == 128 + 9
    assert "signal 9" in r.result.describe()


def test_timeout_applies_after_the_build_closed_its_output(sh) -> None:
    r = sh("echo bye; exec >/dev/null 2>&1; sleep 1000", timeout=1.5)
    assert r.result.reason == "timeout" and r.log == "bye\n"
    assert 1.5 <= r.result.duration < 6


def test_log_is_a_real_file(executor, rootfs, build_dir, tmp_path) -> None:
    from kiln.sandbox import SandboxSpec

    spec = SandboxSpec(argv=("/bin/sh", "-c", "seq 1 50000"), build_dir=str(build_dir), rootfs=str(rootfs))
    with open(tmp_path / "log", "wb") as f:
        r = executor.run(spec, f)
    data = (tmp_path / "log").read_bytes()
    assert r.ok and r.log_bytes == len(data) and data.splitlines()[-1] == b"50000"


def test_cancel_all_from_another_thread(executor, sh) -> None:
    """Builds running in worker threads are killed by cancel_all() (what the build loop
    does on Ctrl-C, which only the main thread receives)."""
    import threading

    script, marks = sleepers()
    seen: dict[str, list[int]] = {}
    results = []
    t = threading.Thread(
        target=lambda: results.append(
            sh(script + "echo started; wait", timeout=30, on_output=watcher(marks, seen))
        )
    )
    t.start()
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    executor.cancel_all()
    t.join(10)
    assert not t.is_alive()
    (r,) = results
    assert r.result.reason == "killed" and r.result.signal == signal.SIGKILL
    assert_gone(seen, marks)
