"""How the ``kiln`` process ends (``kiln.main.cli`` / ``exit_now``): without the
interpreter's teardown, but with the exit status, every byte of output and the exit
handlers of a normal exit. The console script and ``python -m kiln`` both end this way,
so every CLI test in the suite runs through it; these pin down its edges."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from clikit import kiln

#: without PYTHONUNBUFFERED (which some environments set): stdout must be a real buffer
#: here, or a missing flush would go unnoticed
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def _run(code: str, *args: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], stdout=stdout, stderr=subprocess.PIPE, timeout=60, env=ENV
    )


def test_status_and_output_survive(tmp_path: Path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"0123456789abcdef\n" * 200_000)  # 3.4 MB: far more than a pipe buffer
    r = kiln("store", "add", "--store", str(tmp_path / "s"), str(big))
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip()
    dumped = subprocess.run(
        [sys.executable, "-m", "kiln", "store", "cat", "--store", str(tmp_path / "s"), path],
        capture_output=True,
        timeout=60,
    )
    assert dumped.returncode == 0 and dumped.stdout == big.read_bytes()
    r = kiln("store", "info", "--store", str(tmp_path / "s"), "/kiln/store/nonsense")
    assert r.returncode == 1 and r.stderr.startswith("error: ")
    assert kiln("no-such-command").returncode == 2


def test_exit_handlers_run_and_buffered_output_is_flushed():
    code = """
import atexit, sys
from kiln import main
atexit.register(lambda: print("handler ran"))  # buffered: exit_now's flush writes it
main.main = lambda **_: (sys.stdout.write("unflushed" * 1000), 3)[1]
main.cli()
"""
    r = _run(code)
    assert r.returncode == 3
    assert r.stdout == b"unflushed" * 1000 + b"handler ran\n"


def test_a_running_non_daemon_thread_is_waited_for():
    code = """
import threading, time
from kiln import main
def late():
    time.sleep(0.3)
    print("thread finished", flush=True)
threading.Thread(target=late).start()
main.main = lambda **_: 0
main.cli()
"""
    r = _run(code)
    assert r.returncode == 0 and r.stdout == b"thread finished\n"


def test_a_failed_flush_is_an_error_not_silence():
    """Output that cannot be written (here: to /dev/full) is reported the way the
    interpreter reports it, with a non-zero status, instead of vanishing."""
    code = """
import sys
from kiln import main
main.main = lambda **_: (sys.stdout.write("x" * 100), 0)[1]
main.cli()
"""
    with open("/dev/full", "wb") as full:
        r = _run(code, stdout=full)
    assert r.returncode != 0
    assert b"No space left on device" in r.stderr


def test_a_closed_stdout_or_stderr_is_no_crash():
    """Started with fd 1 or 2 closed, Python has no sys.stdout / sys.stderr (None): no
    traceback; with stdout closed the command fails, its output would be lost
    (``main.open_closed_std_fds``, tests/cli/test_closed_std_fds.py)."""
    for fd, status in ((1, 1), (2, 0)):
        r = subprocess.run(
            [sys.executable, "-m", "kiln", "--version"],
            stdout=subprocess.DEVNULL if fd == 2 else None,
            stderr=subprocess.DEVNULL if fd == 1 else None,
            preexec_fn=lambda fd=fd: os.close(fd),
            timeout=60,
            env=ENV,
        )
        assert r.returncode == status


def test_a_store_left_open_is_closed_at_exit(tmp_path: Path):
    """Exit handlers close what a command left open: no SQLite WAL stays behind."""
    code = f"""
from pathlib import Path
from kiln import main
from kiln.store.localstore import LocalStore
s = LocalStore.open(Path({str(tmp_path / "s")!r}))
s.add_text("x", b"x", [])
main.main = lambda **_: 0
main.cli()
"""
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "s").glob("db.sqlite*")) == ["db.sqlite"]


def test_ctrl_c_during_evaluation_leaves_no_half_added_source(tmp_path: Path):
    """The evaluation runs on a thread of its own; Ctrl-C while it adds a ``path``
    source to the store must unwind that thread, so the half-written tree and object it
    stages under ``tmp/`` are removed rather than left for the next GC."""
    import signal
    import time

    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):  # 160 MiB: the ingest takes long enough to be interrupted
        (src / f"f{i}").write_bytes(os.urandom(4 << 20))
    (tmp_path / "r.recipe").write_text('package p {\n  src = path "./src"\n  build = "${src}"\n}\n')
    store = tmp_path / "s"
    assert kiln("store", "init", "--store", str(store)).returncode == 0
    p = subprocess.Popen(
        [sys.executable, "-m", "kiln", "eval", "--store", str(store), "--no-cache", "r.recipe"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    deadline = time.monotonic() + 60
    while not any((store / "tmp").iterdir()):  # the source's staging dir: it is adding
        assert p.poll() is None and time.monotonic() < deadline, "the source was never staged"
        time.sleep(0.002)
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert not list((store / "tmp").iterdir())


def test_ctrl_c_while_the_command_module_is_imported_is_one_line(tmp_path: Path):
    """A ^C before the command runs, while its modules are imported (tens of ms of
    start-up), ends the command like one during it: status 130 and one line, no
    traceback. The probe module interrupts its own import."""
    (tmp_path / "kiln_probe_cmd.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n")
    code = (
        "import sys\n"
        "from kiln import main as m\n"
        "m.COMMANDS['probe'] = ('kiln_probe_cmd', 'interrupts its own import')\n"
        "sys.argv = ['kiln', 'probe']\n"
        "m.cli()\n"
    )
    env = {**ENV, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert (r.returncode, r.stderr) == (130, "kiln: interrupted\n")


def test_a_closed_stderr_pipe_does_not_end_the_command(tmp_path: Path):
    """``kiln build -L 2>&1 | head``: once the pipe's reader is gone, messages on stderr
    are dropped, but the command's work goes on and its exit status is its own (a
    BrokenPipeError on stderr used to end the command at once with status 0)."""
    code = (
        "import sys\n"
        "from kiln.common import run_command\n"
        "def work(argv):\n"
        "    for i in range(2000):\n"
        "        print('progress line', i, file=sys.stderr)\n"
        "        sys.stderr.buffer.write(b'log bytes\\n')\n"
        "    open(sys.argv[1], 'w').write('done')\n"
        "    return 3\n"
        "raise SystemExit(run_command(work, []))\n"
    )
    r = subprocess.run(
        f"{sys.executable} -c {shlex.quote(code)} {tmp_path / 'marker'} 2>&1 | head -c 10 >/dev/null; "
        'echo "${PIPESTATUS[0]}"',
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert r.stdout.strip() == "3", r.stderr
    assert (tmp_path / "marker").read_text() == "done"


def test_error_text_reaches_the_terminal_escaped(tmp_path: Path):
    """Whatever an error quotes (a file name here; a server's reason phrase, an archive
    member elsewhere), its control characters are shown, not sent to the terminal."""
    name = str(tmp_path / "missing\x1b]0;OWNED\x07\x1b[2K\rall good\u202e")
    r = kiln("store", "add", "--store", str(tmp_path / "s"), name)
    assert r.returncode == 1, r.stderr
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr and "\r" not in r.stderr, repr(r.stderr)
    assert "\u202e" not in r.stderr and "missing\\x1b]0;OWNED\\x07\\x1b[2K\\rall good\\u202e" in r.stderr, (
        r.stderr
    )


def test_kiln_alone_is_a_usage_error_and_help_is_not():
    """``kiln`` with no command exits 2 with the usage on stderr, as ``kiln store`` alone
    does (it exited 0, usage on stdout: a script whose variable holding the command was
    empty went on as if it had run); ``kiln --help`` prints it on stdout, status 0."""
    r = subprocess.run([sys.executable, "-m", "kiln"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith("usage: kiln COMMAND"), r
    r = subprocess.run([sys.executable, "-m", "kiln", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("usage: kiln COMMAND"), r
