"""Threads of one process opening and closing stores on one root share the temp-roots
file safely: the last user's release never leaves a flocked file for the next opener."""

from __future__ import annotations

import os
import sys
import threading

from kiln.store.localstore import LocalStore


def test_open_keep_close_in_two_threads_never_finds_the_file_locked(tmp_path):
    root = tmp_path / "st"
    LocalStore.open(root).close()
    errors: list[str] = []

    def worker(k: int) -> None:
        for _ in range(1000):
            try:
                with LocalStore.open(root) as s:
                    s.keep([f"/kiln/store/{'a' * 32}-x{k}"])  # creates temproots/<pid>
            except Exception as e:  # noqa: BLE001 - every failure is collected and shown
                errors.append(f"{type(e).__name__}: {e}")

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: widens any window between steps
    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == [], sorted(set(errors))[:3]
    assert list((root / "temproots").iterdir()) == []  # the last user removed the file


def test_an_open_while_the_last_user_releases_gets_a_fresh_file(tmp_path):
    """Deterministic form of the race: thread A, the last user, is stopped just before it
    unlinks the temp-roots file (a profile hook on its ``os.unlink`` call) while thread B
    opens the store and adds a temp root. B must either wait for A's release to finish
    or get a new file; it must never open A's still-flocked one."""
    root = tmp_path / "st"
    LocalStore.open(root).close()
    at_unlink, b_done = threading.Event(), threading.Event()
    errors: list[str] = []

    def hook(frame, event, arg):  # noqa: ANN001 - sys.setprofile's signature
        if event == "c_call" and arg is os.unlink and frame.f_code.co_name == "release":
            at_unlink.set()
            b_done.wait(1.0)  # B blocks on A's lock if the release is atomic: then time out

    def a() -> None:
        with LocalStore.open(root) as s:
            s.keep([f"/kiln/store/{'a' * 32}-a"])
            sys.setprofile(hook)
        sys.setprofile(None)

    def b() -> None:
        at_unlink.wait(10)
        try:
            with LocalStore.open(root) as s:
                s.keep([f"/kiln/store/{'b' * 32}-b"])
                assert f"{'b' * 32}-b" in (root / "temproots" / str(os.getpid())).read_text()
        except Exception as e:  # noqa: BLE001 - shown by the assertion below
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            b_done.set()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert at_unlink.is_set() and b_done.is_set()
    assert errors == []
    assert list((root / "temproots").iterdir()) == []
