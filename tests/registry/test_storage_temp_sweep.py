"""``FileStorage.sweep_temp``: a temp file is a dead writer's leftover exactly when its
writer lock (``.kiln/writers/<id>.lock``, held by the writing process for its lifetime)
is free; pid and age do not matter on a local file system. Real writer processes, killed
with SIGKILL mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from kiln.registry import tempwriters as storage_mod
from kiln.registry.storage import FileStorage
from kiln.registry.tempwriters import flock_is_exact

#: a writer that stages a file, writes 1 MiB of it, says where, and waits for a line on
#: stdin before publishing it (or is killed first)
WRITER = textwrap.dedent(
    """
    import sys
    from kiln.registry.storage import FileStorage

    st = FileStorage(sys.argv[1])
    with st.staged() as (f, path):
        f.write(b"x" * (1 << 20))
        f.flush()
        print(path, flush=True)
        sys.stdin.readline()
        st.commit_staged(f, ["blobs/done"])
    print("published", flush=True)
    """
)


def start_writer(reg: Path) -> tuple[subprocess.Popen, Path]:
    p = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(reg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    line = p.stdout.readline().strip()  # type: ignore[union-attr]
    assert line, "the writer died before staging"
    return p, Path(line)


def kill(p: subprocess.Popen) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.wait()


def temp_files(reg: Path) -> list[str]:
    return sorted(os.listdir(reg / ".kiln" / "tmp"))


@pytest.fixture
def reg(tmp_path: Path) -> Path:
    if not flock_is_exact(tmp_path):
        pytest.skip(f"{tmp_path} is not on a local file system (flock_is_exact)")
    FileStorage(tmp_path / "reg")
    return tmp_path / "reg"


def test_a_killed_writers_temp_file_is_swept_at_once(reg: Path) -> None:
    """The audit's case: kill -9 mid-upload, then a sweep (a restart's) removes the file
    straight away, not an hour later, and the dead writer's lock file with it."""
    p, tmp = start_writer(reg)
    kill(p)
    assert tmp.exists() and tmp.stat().st_size == 1 << 20
    assert FileStorage(reg).sweep_temp() == 1
    assert temp_files(reg) == [] and os.listdir(reg / ".kiln" / "writers") == []


def test_the_server_start_sweeps_a_killed_writers_file(reg: Path) -> None:
    """``kiln serve --dir`` sweeps when it opens the directory (``server.open_source``)."""
    from kiln.registry.server import open_source

    p, tmp = start_writer(reg)
    kill(p)
    open_source(store=None, directory=reg, sign_key=None, store_dir=None)
    assert not tmp.exists()


def test_a_live_writers_temp_file_is_never_swept(reg: Path) -> None:
    """Even made to look like the old guess's leftover (a dead pid in its name, hours
    old): its writer holds the lock, so it stays, and the writer then publishes it."""
    p, tmp = start_writer(reg)
    try:
        gone = subprocess.Popen(["true"])
        gone.wait()
        disguised = tmp.with_name(tmp.name.replace(f"up-{p.pid}-", f"up-{gone.pid}-", 1))
        os.rename(tmp, disguised)
        os.link(disguised, tmp)  # (the writer publishes from its own name)
        old = time.time() - 7200
        os.utime(disguised, (old, old))
        os.utime(tmp, (old, old))
        st = FileStorage(reg)
        assert st.sweep_temp() == 0
        assert disguised.exists() and tmp.exists()
        p.stdin.write("go\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
        assert p.stdout.readline().strip() == "published"  # type: ignore[union-attr]
        assert p.wait() == 0
        assert st.read("blobs/done") == b"x" * (1 << 20)
        assert st.sweep_temp() == 1  # now the writer is gone: the disguised copy goes
        assert temp_files(reg) == []
    finally:
        if p.poll() is None:
            kill(p)


def test_a_reused_pid_does_not_keep_a_dead_writers_file(reg: Path) -> None:
    """The pid in the name is alive again (a container's PID 1, a reused pid; simulated by
    this test process's own pid and by pid 1): the lock is free, so the file goes."""
    files = []
    for pid in (os.getpid(), 1):
        p, tmp = start_writer(reg)
        kill(p)
        reused = tmp.with_name(tmp.name.replace(f"up-{p.pid}-", f"up-{pid}-", 1))
        os.rename(tmp, reused)
        files.append(reused)
    assert FileStorage(reg).sweep_temp() == 2
    assert not any(f.exists() for f in files)


def test_this_processs_files_in_use_stay(reg: Path) -> None:
    """A sweep in a process that is itself writing (a server's periodic sweep) keeps
    its own temp files in use, and they are published as usual."""
    st = FileStorage(reg)
    with st.staged() as (f, path):
        f.write(b"blob")
        with st.writer("x.narinfo") as g:
            g.write(b"StorePath: x\n")
            assert st.sweep_temp() == 0
        assert path.exists()
        st.commit_staged(f, ["blobs/b"])
    assert st.read("blobs/b") == b"blob" and st.read("x.narinfo") == b"StorePath: x\n"


def test_a_forked_childs_files_die_with_the_child(reg: Path) -> None:
    """``kiln serve --workers``: a worker forked from a process that already writes the
    directory takes a writer lock of its own, so when it is killed its temp file goes
    while the still-living parent's stays."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        from kiln.registry.storage import FileStorage

        st = FileStorage(sys.argv[1])
        with st.staged() as (f, path):
            f.write(b"parent")
            pid = os.fork()
            if pid == 0:
                with st.staged() as (g, child_path):
                    g.write(b"child")
                    g.flush()
                    print(child_path, flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
            os.waitpid(pid, 0)
            print(path, flush=True)
            sys.stdin.readline()
        """
    )
    p = subprocess.Popen(
        [sys.executable, "-c", script, str(reg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        child_file = Path(p.stdout.readline().strip())  # type: ignore[union-attr]
        parent_file = Path(p.stdout.readline().strip())  # type: ignore[union-attr]
        assert child_file.exists() and parent_file.exists()
        assert FileStorage(reg).sweep_temp() == 1
        assert not child_file.exists() and parent_file.exists()
    finally:
        kill(p)


def test_where_locks_are_not_exact_the_old_guess_applies_too(reg: Path, monkeypatch) -> None:
    """On NFS, SMB or FUSE a free lock may be one held on another host: a dead writer's
    file must then also be an hour old with its pid gone; a held lock still keeps one."""
    monkeypatch.setattr(storage_mod, "flock_is_exact", lambda d: False)
    p, tmp = start_writer(reg)
    kill(p)
    st = FileStorage(reg)
    assert st.sweep_temp() == 0 and tmp.exists()  # fresh
    old = time.time() - 7200
    os.utime(tmp, (old, old))
    live, live_tmp = start_writer(reg)
    try:
        os.utime(live_tmp, (old, old))
        assert st.sweep_temp() == 1
        assert not tmp.exists() and live_tmp.exists()
    finally:
        kill(live)


def test_a_normal_exit_leaves_no_lock_file(reg: Path) -> None:
    """A ``kiln push --to file://`` that finishes removes its writer lock file itself."""
    code = "import sys; from kiln.registry.storage import FileStorage; FileStorage(sys.argv[1]).put_bytes('a', b'a')"
    subprocess.run([sys.executable, "-c", code, str(reg)], check=True)
    assert os.listdir(reg / ".kiln" / "writers") == [] and temp_files(reg) == []


def test_sweeps_beside_busy_writers_lose_nothing(reg: Path) -> None:
    """Sweeps running all the time beside writer processes starting, writing and exiting
    never take a live write's file, nor a writer lock being created
    (``_take_writer_lock``), nor fail a write."""
    code = textwrap.dedent(
        """
        import sys
        from kiln.registry.storage import FileStorage

        st = FileStorage(sys.argv[1])
        for i in range(30):
            assert st.put_bytes(f"k{sys.argv[2]}-{i}", b"v" * 1000)
        """
    )
    stop = threading.Event()

    def sweep() -> None:
        while not stop.is_set():
            FileStorage(reg).sweep_temp()

    sweepers = [threading.Thread(target=sweep) for _ in range(2)]
    for t in sweepers:
        t.start()
    try:
        procs = [subprocess.Popen([sys.executable, "-c", code, str(reg), str(n)]) for n in range(12)]
        assert [p.wait() for p in procs] == [0] * 12
    finally:
        stop.set()
        for t in sweepers:
            t.join()
    st = FileStorage(reg)
    assert all(st.read(f"k{n}-{i}") == b"v" * 1000 for n in range(12) for i in range(30))
    assert temp_files(reg) == [] and os.listdir(reg / ".kiln" / "writers") == []


def test_a_writer_lock_swept_before_it_is_taken_is_replaced(reg: Path, monkeypatch) -> None:
    """A sweep may find a writer's new lock file in the instant before the writer locks
    it, take it for a dead writer's and remove it: the writer notices and takes another,
    so its temp files are never left under a lock file nobody holds."""
    import fcntl

    real, raced = fcntl.flock, []

    def flock(fd: int, op: int) -> None:
        if not raced:
            raced.append(fd)
            assert FileStorage(reg).sweep_temp() == 0  # removes the new, unlocked file
            assert os.listdir(reg / ".kiln" / "writers") == []
        real(fd, op)

    monkeypatch.setattr(storage_mod.fcntl, "flock", flock)
    st = FileStorage(reg)
    with st.staged() as (_f, path):
        locks = os.listdir(reg / ".kiln" / "writers")
        assert raced and len(locks) == 1 and locks[0].removesuffix(".lock") in path.name
        assert FileStorage(reg).sweep_temp() == 0 and path.exists()


def test_a_forked_child_does_not_keep_its_dead_parents_files(reg: Path) -> None:
    """The other way round: a child forked while its parent was writing does not hold
    the parent's lock, so when the parent is killed its temp file goes though the child
    lives on."""
    script = textwrap.dedent(
        """
        import os, sys, time
        from kiln.registry.storage import FileStorage

        st = FileStorage(sys.argv[1])
        with st.staged() as (f, path):
            f.write(b"parent")
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                # (the at-fork handler has run: the parent's lock is let go of by now)
                os.write(w, b"x")
                time.sleep(60)
                os._exit(0)
            os.read(r, 1)  # without this, a loaded machine let the test sweep first
            print(path, pid, flush=True)
            time.sleep(60)
        """
    )
    p = subprocess.Popen([sys.executable, "-c", script, str(reg)], stdout=subprocess.PIPE, text=True)
    path, child = p.stdout.readline().split()  # type: ignore[union-attr]
    try:
        kill(p)
        assert Path(path).exists()
        assert FileStorage(reg).sweep_temp() == 1
        assert not Path(path).exists()
    finally:
        os.kill(int(child), signal.SIGKILL)


def test_many_dead_writers_are_swept_with_few_descriptors(reg: Path) -> None:
    """What 60 killed writers leave (a lock file nobody holds, a temp file named for it)
    is swept by a process allowed 24 descriptors: one writer lock is held at a time."""
    import secrets

    for _ in range(60):
        wid = secrets.token_hex(8)
        (reg / ".kiln" / "writers").mkdir(exist_ok=True)
        (reg / ".kiln" / "writers" / f"{wid}.lock").touch()
        (reg / ".kiln" / "tmp" / f"up-{os.getpid()}-{wid}-abcd1234").write_bytes(b"x")
    code = textwrap.dedent(
        """
        import resource, sys
        from kiln.registry.storage import FileStorage

        resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))
        print(FileStorage(sys.argv[1]).sweep_temp())
        """
    )
    r = subprocess.run([sys.executable, "-c", code, str(reg)], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "60"
    assert temp_files(reg) == [] and os.listdir(reg / ".kiln" / "writers") == []


def test_a_temp_file_begun_as_the_process_exits_is_swept(reg: Path) -> None:
    """An interrupted ``mirror sync``: a worker thread creates a temp file just as the exit
    handler removes the writer's lock file. The file is counted before it exists, so the
    lock file naming it stays and a sweep removes the file once the process is gone
    (before, the lock went and the file waited for the hour-old fallback rule)."""
    script = textwrap.dedent(
        """
        import os, sys, tempfile, threading, time
        from kiln.registry import tempwriters
        from kiln.registry.storage import FileStorage

        created = threading.Event()
        real = tempfile.NamedTemporaryFile

        def slow(*a, **kw):  # the file exists; the thread is cut off before it goes on
            f = real(*a, **kw)
            created.set()
            time.sleep(30)
            return f

        tempfile.NamedTemporaryFile = slow
        st = FileStorage(sys.argv[1])

        def worker():
            with st.staged() as (f, path):
                pass

        threading.Thread(target=worker, daemon=True).start()
        created.wait()
        tempwriters._release_at_exit()  # what atexit runs
        try:  # and no temp file is begun after it
            with st.staged():
                pass
        except OSError as e:
            print("refused", e.errno, flush=True)
        os._exit(0)
        """
    )
    out = subprocess.run([sys.executable, "-c", script, str(reg)], capture_output=True, text=True, timeout=60)
    assert "refused" in out.stdout, out.stdout + out.stderr
    assert len(temp_files(reg)) == 1
    assert FileStorage(reg).sweep_temp() == 1
    assert temp_files(reg) == []


#: a writer whose file size limit (a full disk's stand-in: writes fail with EFBIG) is hit
#: by the flush at close, after its block has failed for another reason
FULL_DISK_WRITER = textwrap.dedent(
    """
    import os, resource, signal, sys
    from kiln.registry.storage import FileStorage

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    st = FileStorage(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
    try:
        with st.staged() as (f, path):
            f.write(b"x" * 5000)  # (buffered: the close writes it)
            raise ValueError("the upload broke off")
    except ValueError as e:
        print("raised", e, flush=True)
    print("left", sorted(os.listdir(st._tmp)), flush=True)
    """
)


def test_a_temp_file_whose_close_fails_is_removed_and_the_first_error_kept(reg: Path) -> None:
    """On a full disk the close's flush failed, which skipped the unlink (and kept the
    writer counted): each failed upload left a file that ``kiln serve`` never swept."""
    r = subprocess.run(
        [sys.executable, "-c", FULL_DISK_WRITER, str(reg)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["raised the upload broke off", "left []"], r.stdout


def test_a_push_to_the_directory_sweeps_a_killed_writers_file(reg: Path) -> None:
    """A directory only ever pushed to (served by nginx, say) is swept by the pushes:
    ``DirClient``, opened to write, sweeps as a server's start does."""
    from kiln.registry.client import open_client

    p, tmp = start_writer(reg)
    kill(p)
    assert tmp.exists()
    open_client(f"file://{reg}")  # what kiln push / kiln copy --to file:// open
    assert temp_files(reg) == []
    p, tmp = start_writer(reg)  # ... but never a live writer's
    try:
        open_client(f"file://{reg}")
        assert tmp.exists()
    finally:
        kill(p)
    open_client(f"file://{reg}", create=False)  # a reader changes nothing
    assert tmp.exists()
