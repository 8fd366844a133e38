"""``kiln run`` / ``kiln build`` end to end on recipes, offline: the toolchain is a one-
package ``.deb`` (a static busybox as ``/usr/bin``) served from a hashed source mirror,
so ``debian_rootfs`` works without a network or an apt archive.

Pins down: ``run -f FILE ATTR`` builds then runs; ``./NAME`` is a path, not a root
name; the default command is ``bin/<package name>`` (Nix's split of name and version);
a variant attribute gets its own GC root; a package being run is rooted for a GC
running meanwhile."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "toolchain"))
from clikit import line_within  # noqa: E402
from debs import Entry, make_deb  # noqa: E402

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]

RECIPE = """\
let toolchain = debian_rootfs {{ lock = [
  {{ name = "bbtool", version = "1.0", arch = "amd64", sha256 = "{sha}", filename = "pool/main/b/bbtool/bbtool_1.0_amd64.deb", size = {size} }},
] }}
package hello(greeting = "hello") {{
  version = "1.0"
  deps = [toolchain]
  build = ''
    mkdir -p $out/bin
    printf '#!/bin/sh\\necho %s "$@"\\n' "${{greeting}}" > $out/bin/hello
    chmod +x $out/bin/hello
  ''
}}
package gnu_tool {{
  name = "gnu-tool-2.0"
  deps = [toolchain]
  build = ''
    mkdir -p $out/bin
    printf '#!/bin/sh\\necho gnu-tool "$@"\\n' > $out/bin/gnu-tool
    chmod +x $out/bin/gnu-tool
  ''
}}
package nobin {{
  version = "1.0"
  deps = [toolchain]
  build = "mkdir -p $out/share"
}}
"""


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        busybox = shutil.which("busybox") or "/bin/busybox"
        entries = [Entry("./usr/", "d", mode=0o755), Entry("./usr/bin/", "d", mode=0o755)]
        entries.append(Entry("./usr/bin/busybox", data=Path(busybox).read_bytes(), mode=0o755))
        for applet in ("sh", "mkdir", "printf", "chmod", "echo", "cat", "sleep", "ls"):
            entries.append(Entry(f"./usr/bin/{applet}", "l", link="busybox"))
        # builds run /bin/bash; busybox has no bash applet
        entries.append(Entry("./usr/bin/bash", data=b'#!/usr/bin/sh\nexec /usr/bin/sh "$@"\n', mode=0o755))
        entries.append(Entry("./bin", "l", link="usr/bin"))
        deb = make_deb(root / "bbtool_1.0_amd64.deb", entries, name="bbtool")
        data = deb.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        mirror = root / "mirror" / "sha256"
        mirror.mkdir(parents=True)
        (mirror / sha).write_bytes(data)
        self.env = dict(os.environ, KILN_HOME=str(self.home), KILN_SOURCE_MIRRORS=str(root / "mirror"))
        self.recipe = root / "pkgs.recipe"
        self.recipe.write_text(RECIPE.format(sha=sha, size=len(data)))

    def kiln(self, *args: str, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "kiln", *args],
            env=kw.pop("env", self.env),
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=300,
            **kw,
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("runcli"))


def test_run_f_builds_then_runs(world: World) -> None:
    r = world.kiln("run", "-f", str(world.recipe), "hello", "--", "hello", "world")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello world\n"  # nothing but the program's output on stdout
    assert (world.home / "gcroots" / "hello").is_symlink()


def test_the_default_command_is_bin_of_the_package_name(world: World) -> None:
    r = world.kiln("run", "-f", str(world.recipe), "gnu_tool")  # output gnu-tool-2.0
    assert r.returncode == 0, r.stderr
    assert r.stdout == "gnu-tool\n"
    r = world.kiln("run", "-f", str(world.recipe), "nobin")
    assert r.returncode == 1 and "has no bin/nobin to run: give the command after --" in r.stderr


def test_a_variant_gets_its_own_gc_root(world: World) -> None:
    r = world.kiln("build", str(world.recipe), 'hello(greeting = "hi")')
    assert r.returncode == 0, r.stderr
    (out,) = r.stdout.split()
    roots = {p.name: os.readlink(p) for p in (world.home / "gcroots").iterdir()}
    (name,) = [n for n in roots if n.startswith("hello-greeting-hi-")]
    assert roots[name].endswith(out.rsplit("/", 1)[1])
    r = world.kiln("store", "gc")
    assert r.returncode == 0, r.stderr
    assert out not in r.stdout
    r = world.kiln("run", out, "--", "hello", "there")
    assert r.returncode == 0 and r.stdout == "hi there\n", r.stderr
    # named as it was built (it said "no package named ...: build it first")
    r = world.kiln("run", 'hello(greeting = "hi")', "--", "hello", "again")
    assert r.returncode == 0 and r.stdout == "hi again\n", r.stderr
    r = world.kiln("run", 'hello(greeting = "bye")')
    assert r.returncode == 1 and "(no GC root hello-greeting-bye-" in r.stderr, r.stderr


def test_a_root_made_with_add_root_is_found_by_its_name(world: World, tmp_path: Path) -> None:
    """A root name that is not a plain attribute (``store add --add-root hi@1``) is looked
    up as given first, then as ``kiln build`` names a variant's root."""
    pkg = tmp_path / "pkg"
    (pkg / "bin").mkdir(parents=True)
    (pkg / "bin" / "hi").write_text("#!/bin/sh\necho hi there\n")
    (pkg / "bin" / "hi").chmod(0o755)
    assert world.kiln("store", "add", str(pkg), "--add-root", "hi@1").returncode == 0
    r = world.kiln("run", "hi@1", "--", "hi")
    assert r.returncode == 0 and r.stdout == "hi there\n", r.stderr


def test_a_hash_part_or_base_name_names_a_valid_path(world: World) -> None:
    """As every other command takes them (it said "no package named ...: build it first")."""
    r = world.kiln("build", str(world.recipe), "hello", "--no-root")
    assert r.returncode == 0, r.stderr
    base = r.stdout.split()[0].rsplit("/", 1)[1]
    for spec in (base[:32], base):
        r = world.kiln("run", spec, "--", "hello", "x")
        assert r.returncode == 0 and r.stdout == "hello x\n", (spec, r.stderr)
    r = world.kiln("run", base[:32] + "-other", "--", "hello")  # (the hash part, another name)
    assert r.returncode == 1 and "no package named" in r.stderr, r.stderr


def test_kiln_run_uses_kiln_bwrap(world: World) -> None:
    assert world.kiln("build", str(world.recipe), "hello").returncode == 0
    env = dict(world.env, KILN_BWRAP="/nonexistent/bwrap")
    r = world.kiln("run", "hello", "--", "hello", env=env)
    assert r.returncode == 1 and "needs bubblewrap" in r.stderr, r.stderr


def test_a_relative_path_is_a_path_not_a_root_name(world: World, tmp_path: Path) -> None:
    r = world.kiln("build", str(world.recipe), 'hello(greeting = "howdy")', "hello")
    assert r.returncode == 0, r.stderr
    howdy = r.stdout.split()[0]
    real = world.home / howdy.lstrip("/")
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "hello").symlink_to(real)  # ./hello names this variant; the root "hello" another
    r = world.kiln("run", "./hello", "--", "hello", "x", cwd=cwd)
    assert r.returncode == 0 and r.stdout == "howdy x\n", r.stderr
    r = world.kiln("run", "hello", "--", "hello", "x", cwd=cwd)
    assert r.returncode == 0 and r.stdout == "hello x\n", r.stderr


def test_a_package_being_run_survives_a_gc(world: World) -> None:
    r = world.kiln("build", str(world.recipe), 'hello(greeting = "still here")')
    assert r.returncode == 0, r.stderr
    out = r.stdout.split()[0]
    for root in (world.home / "gcroots").iterdir():
        if os.readlink(root).endswith(out.rsplit("/", 1)[1]):
            root.unlink()  # only the running command keeps it now
    flag = world.home.parent / "gc-done"  # the command waits for it: GC runs while it runs
    script = f"echo started >&2; while [ ! -e {flag} ]; do sleep 0.05; done; hello"
    run = subprocess.Popen(
        [sys.executable, "-m", "kiln", "run", out, "--", "sh", "-c", script],
        env=world.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert line_within(run.stderr, 60) == "started\n"  # running, so its temp root is held
        gc = world.kiln("store", "gc")
        flag.touch()
        assert gc.returncode == 0, gc.stderr
        assert out not in gc.stdout
        stdout, stderr = run.communicate(timeout=60)
    finally:
        flag.touch()  # (the command's loop ends even if the test failed before)
        run.kill()
    assert run.returncode == 0 and stdout == "still here\n", stderr
    gc = world.kiln("store", "gc")  # once it has ended, the path is garbage
    assert out in gc.stdout


def test_check_refuses_an_output_that_is_not_built_yet(world: World) -> None:
    """As Nix: --check compares with an existing output. Building it the first time under
    --check left it unsigned and without provenance for good."""
    r = world.kiln("build", "--check", str(world.recipe), 'hello(greeting = "unbuilt")')
    assert r.returncode == 1 and "is not built yet: build it first (without --check)" in r.stderr, r.stderr
    r = world.kiln("build", str(world.recipe), 'hello(greeting = "unbuilt")')
    assert r.returncode == 0, r.stderr
    r = world.kiln("build", "--check", str(world.recipe), 'hello(greeting = "unbuilt")')
    assert r.returncode == 0 and "bit-for-bit identical" in r.stderr, r.stderr


def test_build_and_log_name_what_they_were_given(world: World) -> None:
    r = world.kiln("build", str(world.recipe), 'hello(greeting = "logged")')  # built here: .drv written
    assert r.returncode == 0, r.stderr
    out = r.stdout.split()[0]
    drv = world.kiln("store", "info", "--json", out).stdout

    deriver = json.loads(drv)["deriver"]
    # a .drv under the store root (its physical path) is built like the logical one
    r = world.kiln("build", str(world.home / deriver.lstrip("/")))
    assert r.returncode == 0 and r.stdout.split() == [out], r.stderr
    # an output path is not a recipe file
    r = world.kiln("build", out)
    assert r.returncode == 1 and "is a store path, not a recipe file or a .drv" in r.stderr, r.stderr
    # kiln log: by output, by root name; a missing path and a missing root say so
    assert world.kiln("log", out).returncode == 0
    assert (
        world.kiln(
            "log", "hello-greeting-logged-" + hashlib.sha256(b'hello(greeting = "logged")').hexdigest()[:8]
        ).returncode
        == 0
    )
    r = world.kiln("log", "/kiln/store/" + "a" * 32 + "-nothing")
    assert r.returncode == 1 and "is not a valid path in the store" in r.stderr, r.stderr
    r = world.kiln("log", "nosuch")
    assert r.returncode == 1 and "no GC root named 'nosuch'" in r.stderr and "-f" not in r.stderr, r.stderr


def _trapper(world: World, tmp_path: Path) -> None:
    """A package whose ``trap`` counts the SIGINTs and SIGTERMs it gets, then cleans up."""
    pkg = tmp_path / "trapper"
    (pkg / "bin").mkdir(parents=True)
    (pkg / "bin" / "trap").write_text(
        "#!/bin/sh\n"
        "n=0\n"
        "trap 'n=$((n+1)); echo got $n' INT TERM\n"
        "echo ready\n"
        "while [ $n -lt 1 ]; do sleep 0.1; done\n"
        "sleep 1\n"  # a second signal would show as "got 2" meanwhile
        "echo cleaned up; exit 7\n"
    )
    (pkg / "bin" / "trap").chmod(0o755)
    assert world.kiln("store", "add", str(pkg), "--add-root", "trapper2").returncode == 0


def _run_trapper(world: World, tmp_path: Path) -> subprocess.Popen:
    """``kiln run`` of ``_trapper``'s package in a session of its own, output piped."""
    _trapper(world, tmp_path)
    return subprocess.Popen(
        [sys.executable, "-m", "kiln", "run", "trapper2", "--", "trap"],
        env=world.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _kiln_run_on_a_pty(world: World, root: str, program: str) -> tuple[int, int]:
    """``kiln run ROOT -- PROGRAM`` on a new pseudo-terminal (the terminal's foreground
    group); (its pid, the terminal's master side)."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: kiln on the pty's terminal
        os.execvpe(sys.executable, [sys.executable, "-m", "kiln", "run", root, "--", program], world.env)
    return pid, fd


def _read_until_closed(
    fd: int, seconds: float, react: Callable[[bytes], None] | None = None
) -> tuple[bytes, bool]:
    """What the terminal ``fd`` shows until its other side closes or ``seconds`` pass
    (a program that lost a signal sleeps on); ``react(output so far)`` after each read.
    Returns (output, whether it closed)."""
    import select
    import time

    out, end = b"", time.monotonic() + seconds
    while time.monotonic() < end:
        if not select.select([fd], [], [], 1)[0]:
            continue
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # EIO: the terminal's other side closed
            return out, True
        if not chunk:
            return out, True
        out += chunk
        if react is not None:
            react(out)
    return out, False


def _ctrl_c_once_ready(fd: int) -> Callable[[bytes], None]:
    """A ``react`` for ``_read_until_closed``: type ^C on terminal ``fd`` once the
    program has printed "ready" (the kernel signals the terminal's foreground group)."""
    sent: list[bool] = []

    def react(out: bytes) -> None:
        if b"ready" in out and not sent:
            os.write(fd, b"\x03")
            sent.append(True)

    return react


def test_a_terminal_s_ctrl_c_reaches_the_program_once(world: World, tmp_path: Path) -> None:
    """^C on a terminal goes to the whole foreground group, bwrap included: bwrap, which
    would die of it and take the program down, ignores it, and kiln does not pass it on
    a second time."""
    _trapper(world, tmp_path)
    pid, fd = _kiln_run_on_a_pty(world, "trapper2", "trap")
    out, _ = _read_until_closed(fd, 60, _ctrl_c_once_ready(fd))
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert "got 1" in text and "got 2" not in text and "cleaned up" in text, text
    assert os.waitstatus_to_exitcode(status) == 7, text


@pytest.mark.parametrize("to", ["kiln", "group"])
def test_a_sigterm_lets_the_program_clean_up_and_kiln_exits_with_its_status(
    world: World, tmp_path: Path, to: str
) -> None:
    """SIGTERM to kiln alone (``kill PID``, ``timeout``) is passed on; one to the whole
    group (a service manager's stop) reaches the program directly, and bwrap, which
    ignores it, no longer dies of it and SIGKILLs the program mid-cleanup. Either way kiln
    exits with the program's status (it exited 143)."""
    import signal

    p = _run_trapper(world, tmp_path)
    assert line_within(p.stdout, 60) == "ready\n"
    if to == "kiln":
        p.send_signal(signal.SIGTERM)
    else:
        os.killpg(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert "got 1" in out and "cleaned up" in out and p.returncode == 7, (out, err, p.returncode)


def test_a_sigterm_while_bwrap_is_starting_is_held_for_the_program(world: World, tmp_path: Path) -> None:
    """A SIGTERM to kiln right after it has started bwrap, before the program runs: it
    went to bwrap (which ignores it) or to ``env`` before ``env`` reset it, and was
    lost, so the program ran on. kiln holds it until the program can take it."""
    import signal
    import time

    p = _run_trapper(world, tmp_path)
    children = Path(f"/proc/{p.pid}/task/{p.pid}/children")

    def bwrap_started() -> bool:  # (kiln runs other children first: probes of env and bwrap)
        for c in children.read_text().split():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{c}/comm").read_text().strip() == "bwrap":
                    return True
        return False

    deadline = time.monotonic() + 60
    while not bwrap_started():
        assert time.monotonic() < deadline and p.poll() is None, p.stderr.read() if p.stderr else ""
        time.sleep(0.0005)
    p.send_signal(signal.SIGTERM)
    try:
        out, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise AssertionError(f"the program never got the SIGTERM: {out!r} {err!r}") from None
    # the program got it: before its trap (ended by it: 128 + 15, from kiln) or after
    # (cleaned up: 7); never lost, so that the program ran on
    assert p.returncode in (7, 143), (out, err, p.returncode)
    if p.returncode == 7:
        assert "ready" in out and "got 1" in out and "cleaned up" in out, (out, err)


def test_a_terminal_s_ctrl_c_while_bwrap_is_starting_is_not_lost(world: World, tmp_path: Path) -> None:
    """^C as soon as bwrap exists: the kernel signalled the terminal's group, but the
    program was not running yet (bwrap and ``env`` ignore it), so kiln, which leaves a
    terminal's signals to the program, must hold it for the program: it ran on."""
    import time

    _trapper(world, tmp_path)
    pid, fd = _kiln_run_on_a_pty(world, "trapper2", "trap")

    def comms() -> list[str]:
        """The command names of kiln's children ([] once they are gone)."""
        out = []
        with contextlib.suppress(OSError):  # (a process may end while being looked at)
            for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                with contextlib.suppress(OSError):
                    out.append(Path(f"/proc/{c}/comm").read_text().strip())
        return out

    deadline = time.monotonic() + 60
    while "bwrap" not in comms():
        assert time.monotonic() < deadline
    os.write(fd, b"\x03")
    out, closed = _read_until_closed(fd, 30)
    if not closed:
        os.killpg(os.getpgid(pid), 9)
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    # before its trap or after: the ^C ended it (130) or it cleaned up (7), never ran on
    assert os.waitstatus_to_exitcode(status) in (7, 130), text


def test_a_ctrl_c_the_program_ignored_on_purpose_is_not_sent_again(world: World, tmp_path: Path) -> None:
    """A program that ignores SIGINT for a while (``system()``, ``git commit`` around its
    editor) got a terminal's ^C and ignored it; kiln, which held ^Cs for programs that
    seemed not to have started (judged by what they ignored), sent it again once the
    program restored its handler."""
    pkg = tmp_path / "ignorer"
    (pkg / "bin").mkdir(parents=True)
    (pkg / "bin" / "ign").write_text(
        "#!/bin/sh\ntrap '' INT\necho ready\nsleep 2\ntrap 'echo got INT; exit 9' INT\n"
        "echo restored\nsleep 2\necho survived\n"
    )
    (pkg / "bin" / "ign").chmod(0o755)
    assert world.kiln("store", "add", str(pkg), "--add-root", "ignorer").returncode == 0
    pid, fd = _kiln_run_on_a_pty(world, "ignorer", "ign")
    out, _ = _read_until_closed(fd, 60, _ctrl_c_once_ready(fd))
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert "survived" in text and "got INT" not in text, text
    assert os.waitstatus_to_exitcode(status) == 0, text


def test_a_package_s_own_env_does_not_stand_in_for_the_host_s(world: World, tmp_path: Path) -> None:
    """kiln run resets signals with the host's ``env --default-signal``; a package that
    ships a ``bin/env`` (busybox-style) came first on PATH and failed every run."""
    pkg = tmp_path / "envpkg"
    (pkg / "bin").mkdir(parents=True)
    (pkg / "bin" / "env").write_text("#!/bin/sh\necho 'env: unrecognized option' >&2; exit 1\n")
    (pkg / "bin" / "env").chmod(0o755)
    (pkg / "bin" / "hello").write_text("#!/bin/sh\necho hello from envpkg\n")
    (pkg / "bin" / "hello").chmod(0o755)
    assert world.kiln("store", "add", str(pkg), "--add-root", "envpkg").returncode == 0
    r = world.kiln("run", "envpkg", "--", "hello")
    assert r.returncode == 0 and r.stdout == "hello from envpkg\n", r.stderr


@pytest.mark.parametrize("name", ["env", "bwrap"])
def test_a_program_named_like_a_starter_gets_a_signal_at_once(
    world: World, tmp_path: Path, name: str
) -> None:
    """Whether the program has started is judged by the file that runs, not its name: a
    program called ``env`` or ``bwrap`` passed for kiln's own starters, so a SIGTERM sent
    to kiln was held for it ``HOLD`` (10) seconds."""
    import signal

    pkg = tmp_path / f"named-{name}"
    (pkg / "bin").mkdir(parents=True)
    (pkg / "bin" / name).write_text(
        "#!/bin/sh\ntrap 'echo got TERM; exit 7' TERM\necho ready\nwhile :; do sleep 0.1; done\n"
    )
    (pkg / "bin" / name).chmod(0o755)
    assert world.kiln("store", "add", str(pkg), "--add-root", f"named-{name}").returncode == 0
    p = subprocess.Popen(
        [sys.executable, "-m", "kiln", "run", f"named-{name}", "--", name],
        env=world.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert line_within(p.stdout, 60) == "ready\n"
        sent = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
        assert out == "got TERM\n" and p.returncode == 7, (out, err, p.returncode)
        assert time.monotonic() - sent < 5, "the signal was held as if the program were still starting"
    finally:  # a failure must not leave the looping program behind, even if kiln is gone
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def test_a_starter_kiln_may_not_inspect_is_judged_by_its_name(tmp_path: Path, monkeypatch) -> None:
    """A setuid bwrap's processes are not the user's to inspect (``/proc/PID/exe`` is
    EACCES): judged by the file they run, they passed for the program, and a signal
    sent while bwrap was setting up went to bwrap. Then the name decides."""
    from kiln import cmd_run

    real_stat = os.stat

    def setuid_like(path, *a, **kw):  # noqa: ANN001, ANN202 - os.stat's signature
        if str(path).startswith("/proc/") and str(path).endswith("/exe"):
            raise PermissionError(13, "Permission denied", path)
        return real_stat(path, *a, **kw)

    for name, starting in (("bwrap", True), ("program", False)):
        exe = tmp_path / name
        shutil.copy("/bin/sleep", exe)
        parent = subprocess.Popen(["/bin/sh", "-c", f"{exe} 30; :"])  # (so the child is not exec'd in place)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the child forked and exec'd (not still "sh")
                kids = cmd_run._program_pids(parent.pid)
                if kids != [parent.pid] and cmd_run._comm(kids[0]) == name:
                    break
                time.sleep(0.01)
            monkeypatch.setattr(cmd_run.os, "stat", setuid_like)
            assert cmd_run._starting(parent.pid, frozenset(), frozenset({"bwrap", "env"})) is starting
            monkeypatch.undo()
        finally:
            parent.kill()
            subprocess.run(["pkill", "-f", str(exe)], check=False)
            parent.wait()


def test_the_program_gets_the_umask_kiln_was_started_with(world: World, tmp_path: Path) -> None:
    """kiln narrows its own umask by 022 (its store's files); a program it runs creates
    its files as the user's umask says, as it would run outside kiln."""
    pkg = tmp_path / "umasker"
    (pkg / "bin").mkdir(parents=True)
    (pkg / "bin" / "umasker").write_text("#!/bin/sh\numask\n")
    (pkg / "bin" / "umasker").chmod(0o755)
    assert world.kiln("store", "add", str(pkg), "--add-root", "umasker").returncode == 0
    for mask, shown in ((0o002, "0002"), (0o077, "0077"), (0o000, "0000")):
        r = world.kiln("run", "umasker", "--", "umasker", umask=mask)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == shown


def test_words_that_start_with_a_dash_are_the_default_program_s_arguments(world: World) -> None:
    """``kiln run hello --version`` (and after ``--``) ran the host's ``env --version``:
    the words went to the ``env`` that starts the program."""
    assert world.kiln("build", str(world.recipe), "hello").returncode == 0
    for args in (["--", "-n", "x"], ["-n", "x"]):
        r = world.kiln("run", "-f", str(world.recipe), "hello", *args)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "hello -n x\n", r.stdout  # (its echo got them)
        assert "coreutils" not in r.stdout + r.stderr


def test_require_clean_is_checked_when_every_output_is_built_already(world: World) -> None:
    """A CI gate on ``--require-clean`` passed on outputs that were valid already (the
    check ran only when something was to be built)."""
    assert world.kiln("build", str(world.recipe), "hello").returncode == 0
    r = world.kiln("build", "--require-clean", str(world.recipe), "hello")
    assert r.returncode == 1 and "--require-clean" in r.stderr and "not in a git repository" in r.stderr
    assert r.stdout == ""
