"""^C under ``-jN``: every running build's temp directory goes (``tmp/build-*``, with a
partial download in it), as under ``-j1``. The scheduler used to stop waiting for its
workers at once, so a worker handed its directory back only after the command had ended
(never). Now killed sandboxes get a few seconds to unwind, and ``realise`` removes what
is still held (a worker that cannot be stopped: an in-process download)."""

from __future__ import annotations

import _thread
import shutil
import threading
import time

import pytest

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store import buildsched
from kiln.store.build import Builder, BuildOptions

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]


class Lingering(BwrapExecutor):
    """A killed run returns only after ``linger`` seconds (or once ``go`` is set): a
    build slow to unwind, or (long) one that cannot be cancelled."""

    def __init__(self, linger: float) -> None:
        super().__init__()
        self.linger = linger
        self.go = threading.Event()
        self.started = 0
        self.lock = threading.Lock()

    def run(self, spec, log, **kw):  # noqa: ANN001, ANN201 - the executor's
        with self.lock:
            self.started += 1
        r = super().run(spec, log, **kw)
        if r.reason == "killed":
            self.go.wait(self.linger)
        return r


def _interrupt_when_running(store, ex: Lingering, n: int) -> threading.Thread:
    """^C (as the terminal's: in the main thread) once ``n`` sandboxes run."""

    def go() -> None:
        deadline = time.monotonic() + 30
        while ex.started < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # (inside the sandboxes)
        _thread.interrupt_main()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def _build_dirs(store) -> list:
    return sorted((store.root / "tmp").glob("build-*"))


def test_interrupted_parallel_builds_leave_no_temp_dirs(store, graph):
    a, _ = graph.drv("slow-a", "sleep 30; echo a > $out")
    b, _ = graph.drv("slow-b", "sleep 30; echo b > $out")
    ex = Lingering(0.5)  # a killed sandbox normally unwinds in ms; 0.5 s makes the race certain
    t = _interrupt_when_running(store, ex, 2)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        Builder(store, ex, BuildOptions(jobs=2), say=lambda m: None).realise([a, b])
    assert time.monotonic() - t0 < 30
    t.join()
    assert _build_dirs(store) == []


def test_a_build_that_does_not_stop_has_its_dir_removed_all_the_same(store, graph, monkeypatch):
    monkeypatch.setattr(buildsched, "UNWIND_WAIT", 0.3, raising=False)
    a, _ = graph.drv("stuck-a", "sleep 30; echo a > $out")
    b, _ = graph.drv("stuck-b", "sleep 30; echo b > $out")
    ex = Lingering(60)  # as an in-process download: ^C does not stop it
    t = _interrupt_when_running(store, ex, 2)
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            Builder(store, ex, BuildOptions(jobs=2), say=lambda m: None).realise([a, b])
        took = time.monotonic() - t0
        t.join()
        assert _build_dirs(store) == []
        assert took < 30, took  # the stuck workers were not waited for
    finally:
        ex.go.set()  # (the workers end; handing back a directory already gone is no error)
    time.sleep(0.5)
    assert _build_dirs(store) == []
