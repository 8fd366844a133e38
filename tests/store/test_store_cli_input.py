"""``kiln store`` refuses bad input with a clear message: a source that contains the
store, a missing source, an empty ``--name``; file names in errors are text."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from clikit import kiln
from storekit import make_tree

from kiln.store.errors import StoreError
from kiln.store.localstore import LocalStore


def _entries(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, ds, fs in os.walk(root) for n in ds + fs)


def test_adding_a_directory_that_contains_the_store_is_refused(tmp_path):
    project = make_tree(tmp_path / "project", {"src/main.c": "int main;\n"})
    st = project / ".kiln"
    kiln("store", "init", "--store", str(st))
    before = _entries(st)
    for arg in (str(project), str(st), str(project / "src" / ".."), str(tmp_path)):
        r = kiln("store", "add", "--store", str(st), arg)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith(f"error: cannot add {arg}: it contains the store root {st}"), r.stderr
    assert _entries(st) == before  # nothing was copied
    # through a symlinked parent the root is still found
    os.symlink(tmp_path, tmp_path / "alias")
    r = kiln("store", "add", "--store", str(st), str(tmp_path / "alias" / "project"))
    assert r.returncode == 1 and "contains the store root" in r.stderr
    # a directory beside the store, and a symlink to the project, are fine
    assert kiln("store", "add", "--store", str(st), str(project / "src")).returncode == 0
    os.symlink(project, tmp_path / "link")
    r = kiln("store", "add", "--store", str(st), str(tmp_path / "link"))
    assert r.returncode == 0 and r.stdout.strip().endswith("-link"), r.stderr


def test_add_path_refuses_its_own_root(tmp_path):
    with LocalStore.open(tmp_path / "st") as s:
        with pytest.raises(StoreError, match="contains the store root"):
            s.add_path(tmp_path)
        assert s.all_paths() == []


def test_the_store_root_itself_is_refused_whatever_its_filter_leaves_out(tmp_path):
    """The filter never judges the top of a walk: a ``.kilnignore`` of ``.*`` in the
    store root used to match the root's own ``.`` and let the store copy itself into its
    tmp/ until the names grew too long."""
    from kiln.lang.sources import make_filter

    root = tmp_path / "st"
    with LocalStore.open(root, create=True) as s:
        (root / ".kilnignore").write_text(".*\nkeys\n")
        with pytest.raises(StoreError, match="contains the store root"):
            s.add_path(root, name="x", filter=make_filter(root))
        assert s.all_paths() == []


def test_a_missing_source_is_named_as_text(tmp_path):
    missing = tmp_path / "missing"
    r = kiln("store", "add", "--store", str(tmp_path / "st"), str(missing))
    assert r.returncode == 1 and r.stderr == f"error: cannot add {missing}: no such file or directory\n"


def test_os_errors_name_files_as_text(tmp_path):
    st = tmp_path / "st"
    f = make_tree(tmp_path / "src", {"a": "x\n"}) / "a"
    path = kiln("store", "add", "--store", str(st), str(f)).stdout.strip()
    nar = kiln("store", "dump", "--store", str(st), path).stdout
    target = tmp_path / "nodir" / "x"
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "store", "restore", str(target)],
        input=nar.encode(),
        capture_output=True,
    )
    err = r.stderr.decode()
    assert r.returncode == 1 and "b'" not in err and str(tmp_path / "nodir") in err, err


def test_an_empty_name_is_refused(tmp_path):
    src = make_tree(tmp_path / "src", {"a": "x\n"})
    r = kiln("store", "add", "--store", str(tmp_path / "st"), "--name", "", str(src))
    assert r.returncode == 1 and r.stderr == "error: store path name is empty\n"
    r = kiln("store", "add", "--store", str(tmp_path / "st"), "--name", "ok", str(src))
    assert r.returncode == 0 and r.stdout.strip().endswith("-ok")


def test_a_filter_that_skips_the_store_makes_the_project_addable(tmp_path):
    from kiln.lang.sources import make_filter

    project = make_tree(tmp_path / "project", {"main.c": "int main;\n", ".kilnignore": ".kiln/\n"})
    with LocalStore.open(project / ".kiln" / "st") as s:
        info = s.add_path(project, filter=make_filter(project))
        assert sorted(os.listdir(s.real_path(info.path))) == [".kilnignore", "main.c"]
        (project / ".kilnignore").write_text("other/\n")  # now the walk would reach the store
        with pytest.raises(StoreError, match="contains the store root"):
            s.add_path(project, filter=make_filter(project))


def test_restore_cleans_up_when_terminated_and_after_a_kill(tmp_path):
    """SIGTERM mid-restore unwinds (exit 143) and removes the hidden half-made tree; one
    a ``kill -9`` left is removed by the next restore beside it once its process is
    gone and it is an hour old (a live restore's, or a fresh one, is left alone)."""
    import signal
    import time

    dead = subprocess.Popen(["true"])
    dead.wait()
    old = time.time() - 7200
    left = {}
    cases = (  # name, pid, mtime, mode: only a dead, old, 0700 one of ours is swept
        ("killed", dead.pid, old, 0o700),
        ("live", os.getpid(), old, 0o700),
        ("fresh", dead.pid, None, 0o700),
        ("not-ours", dead.pid, old, 0o755),
    )
    for i, (name, pid, mtime, mode) in enumerate(cases):
        d = tmp_path / f".out.restore-{pid}-{i:012x}"
        (d / "root").mkdir(parents=True)
        os.chmod(d, mode)
        if mtime is not None:
            os.utime(d, (mtime, mtime))
        left[name] = d
    (tmp_path / f".out.restore-{dead.pid}-mine").mkdir()  # not a name restore makes
    os.utime(tmp_path / f".out.restore-{dead.pid}-mine", (old, old))
    p = subprocess.Popen(
        [sys.executable, "-m", "kiln", "store", "restore", str(tmp_path / "out")],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    header = b"".join(
        len(s).to_bytes(8, "little") + s + b"\0" * (-len(s) % 8)
        for s in (b"nix-archive-1", b"(", b"type", b"regular", b"contents")
    )
    p.stdin.write(
        header + (1 << 30).to_bytes(8, "little") + b"x" * 4096
    )  # 1 GiB announced; within the pipe buffer
    p.stdin.flush()
    deadline = time.monotonic() + 20
    while not any(n.name.startswith(f".out.restore-{p.pid}-") for n in tmp_path.iterdir()):
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.02)
    assert not left["killed"].exists()  # swept before this restore began
    assert all(left[n].exists() for n in ("live", "fresh", "not-ours"))
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 143, p.stderr.read()
    p.stdin.close()
    p.stderr.close()
    kept = [left[n].name for n in ("live", "fresh", "not-ours")] + [f".out.restore-{dead.pid}-mine"]
    assert sorted(n.name for n in tmp_path.iterdir()) == sorted(kept)


def _limited(limit: int):
    import resource

    def pre() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


def test_cat_and_dump_fail_loudly_when_stdout_cannot_take_it_all(tmp_path):
    """Under a file size limit (a full disk behaves the same) ``store cat`` wrote what fit
    and exited 0; ``dump`` was an "internal error". Both are now a plain error, exit 1.
    A file past the in-memory spool goes to the store's tmp/ while it is verified (a
    limit there is named as such), and is cat whole and byte for byte."""
    src = tmp_path / "one"
    src.mkdir()
    small = os.urandom(3 << 20)  # held in memory while it is verified
    big = os.urandom(43 << 20)  # past the in-memory part of the spool
    (src / "small").write_bytes(small)
    (src / "big").write_bytes(big)
    st = str(tmp_path / "st")
    path = kiln("store", "add", "--store", st, str(src)).stdout.strip()

    def run(*cmd: str, limit: int | None = 1 << 20) -> subprocess.CompletedProcess:
        with open(tmp_path / "out", "wb") as out:
            return subprocess.run(
                [sys.executable, "-m", "kiln", "store", *cmd, "--store", st],
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=_limited(limit) if limit else None,
            )

    # (Python ignores SIGXFSZ, so the write fails with EFBIG instead of killing it)
    for cmd in (["cat", path, "small"], ["dump", path]):
        r = run(*cmd)
        assert r.returncode == 1 and r.stderr == "error: File too large\n", (cmd, r.stderr)
    r = run("cat", path, "big")
    assert r.returncode == 1 and r.stderr.startswith(
        f"error: cannot hold {path} in {st}/tmp while it is verified"
    )
    assert run("cat", path, "big", limit=None).returncode == 0 and (tmp_path / "out").read_bytes() == big


def test_adding_the_stores_temp_directory_is_refused(tmp_path):
    """``tmp/`` inside the store holds the copy being made: adding it recursed into its
    own copy until a name was too long. It is refused up front like the root is."""
    st = tmp_path / "st"
    kiln("store", "init", "--store", str(st))
    r = kiln("store", "add", "--store", str(st), str(st / "tmp"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"error: cannot add {st / 'tmp'}: it contains the store's temp directory"), (
        r.stderr
    )
    assert os.listdir(st / "tmp") == []
    # a store path's tree (inside the root, beside tmp/) can be added again
    src = make_tree(tmp_path / "src", {"a": "x\n"})
    path = kiln("store", "add", "--store", str(st), str(src)).stdout.strip()
    real = st / path.lstrip("/")
    r = kiln("store", "add", "--store", str(st), "--name", "again", str(real))
    assert r.returncode == 0 and r.stdout.strip().endswith("-again"), r.stderr


def test_a_damaged_database_is_named(tmp_path):
    st = tmp_path / "st"
    src = make_tree(tmp_path / "src", {"a": "x\n"})
    assert kiln("store", "add", "--store", str(st), str(src)).returncode == 0
    for f in st.glob("db.sqlite-*"):
        f.unlink()
    db = st / "db.sqlite"
    for damage in (lambda: db.write_bytes(b"garbage\n"), lambda: os.truncate(db, 4096)):
        damage()
        r = kiln("store", "verify", "--store", str(st))
        assert r.returncode == 1 and "internal error" not in r.stderr, r.stderr
        assert r.stderr.startswith(f"error: the store database {db} is damaged"), r.stderr


def test_a_name_that_cannot_be_a_store_name_suggests_name(tmp_path):
    for base, says in ((b"n\xffu", "its name 'n\\xffu' has bytes that are not UTF-8"), (b"bad name", "' '")):
        src = os.path.join(os.fsencode(tmp_path), base)
        os.mkdir(src)
        r = subprocess.run(
            [sys.executable, "-m", "kiln", "store", "add", "--store", str(tmp_path / "st"), src],
            capture_output=True,
        )
        err = r.stderr.decode()
        assert r.returncode == 1 and says in err and err.endswith("(give the path a name: --name NAME)\n"), (
            err
        )
        assert "\\udc" not in err


def test_ls_prints_one_line_per_entry_whatever_the_names(tmp_path):
    """Names with line breaks, tabs, backslashes or bytes that are not UTF-8 are shown
    with backslash escapes (as ``ls -b``), so each entry is one line."""
    src = os.fsencode(tmp_path / "src")
    os.mkdir(src)
    for n in (b"new\nline", b"b\xffx", b"back\\slash", b"plain", b"u\xc2\x85", b"u\x85"):
        open(os.path.join(src, n), "wb").close()
    os.symlink(b"tar\tget", os.path.join(src, b"ln"))
    st = str(tmp_path / "st")
    path = kiln("store", "add", "--store", st, os.fsdecode(src)).stdout.strip()
    r = kiln("store", "ls", "--store", st, path)
    assert r.returncode == 0 and r.stdout.splitlines() == [
        "regular    back\\\\slash 0",
        "regular    b\\xffx 0",
        "symlink    ln -> tar\\tget",
        "regular    new\\nline 0",
        "regular    plain 0",
        "regular    u\\x85 0",  # a byte that is not UTF-8 ...
        "regular    u\\xc2\\x85 0",  # ... and U+0085 (NEL), whose UTF-8 bytes these are
    ], r.stdout


def test_a_store_dir_that_refuses_entries_is_named(tmp_path):
    """When the tree cannot be moved into the store dir, the error names the store dir
    (it named the temp tree), and the store still verifies."""
    st = tmp_path / "st"
    src = make_tree(tmp_path / "src", {"a": "x\n"})
    kiln("store", "init", "--store", str(st))
    real_store = st / "kiln" / "store"
    # immutable (stops root too); a mode of 0555 where that is not possible
    immutable = subprocess.run(["chattr", "+i", str(real_store)], capture_output=True).returncode == 0
    if not immutable:
        os.chmod(real_store, 0o555)
        if os.access(real_store, os.W_OK):
            pytest.skip("root without chattr: nothing here makes a directory refuse entries")
    try:
        r = kiln("store", "add", "--store", str(st), str(src))
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(real_store)], check=True)
        os.chmod(real_store, 0o755)
    says = "Operation not permitted" if immutable else "Permission denied"
    assert r.returncode == 1 and r.stderr.startswith(f"error: {says} (placing /kiln/store/"), r.stderr
    assert r.stderr.endswith(f"-src): {real_store}\n"), r.stderr
    assert ".tree" not in r.stderr
    assert kiln("store", "verify", "--store", str(st)).returncode == 0


def test_dump_of_a_corrupt_object_never_gives_restore_a_whole_nar(tmp_path):
    """An object that decompresses to a well-formed but altered NAR (its hash checked
    only at the end): dump fails and holds back its last piece, so ``dump | restore``
    leaves nothing, rather than restore writing the altered tree and exiting 0."""
    import zstandard

    st = tmp_path / "st"
    src = make_tree(tmp_path / "src", {"f": "hello world\n" * 2000})
    path = kiln("store", "add", "--store", str(st), str(src)).stdout.strip()
    with LocalStore.open(st) as s:
        obj = s.object_path(path)
    nar = kiln_bytes("store", "dump", "--store", str(st), path)
    bad = zstandard.ZstdCompressor(level=19, write_content_size=False).compress(
        nar.replace(b"hello", b"HELLO", 1)
    )
    size = obj.stat().st_size
    assert len(bad) + 8 <= size
    pad = size - len(bad) - 8  # a skippable frame keeps the object's size
    bad += (0x184D2A50).to_bytes(4, "little") + pad.to_bytes(4, "little") + b"\0" * pad
    os.chmod(obj, 0o644)
    obj.write_bytes(bad)
    dump = subprocess.Popen(
        [sys.executable, "-m", "kiln", "store", "dump", "--store", str(st), path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    restore = subprocess.run(
        [sys.executable, "-m", "kiln", "store", "restore", str(tmp_path / "out")],
        stdin=dump.stdout,
        capture_output=True,
    )
    dump.stdout.close()
    assert dump.wait() == 1 and b"hash mismatch" in dump.stderr.read().lower()
    dump.stderr.close()
    assert restore.returncode == 1 and not (tmp_path / "out").exists(), restore.stderr


def kiln_bytes(*args: str) -> bytes:
    r = subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, check=True)
    return r.stdout


def test_a_bad_root_name_is_refused_before_the_copy(tmp_path):
    st = tmp_path / "st"
    src = make_tree(tmp_path / "src", {"a": "x\n"})
    for bad in (".x", "a/b", ""):
        r = kiln("store", "add", "--store", str(st), "--add-root", bad, str(src))
        assert r.returncode == 1 and "invalid GC root name" in r.stderr, r.stderr
    assert not st.exists()  # nothing was copied (not even a store made)


def test_a_full_store_disk_names_the_store(tmp_path):
    """A write that hits a size limit (a full disk's stand-in) during add names the
    store it was writing into, and leaves nothing valid or half-written behind."""
    st = tmp_path / "st"
    src = tmp_path / "big"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(4 << 20))
    kiln("store", "init", "--store", str(st))
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "store", "add", "--store", str(st), str(src)],
        capture_output=True,
        text=True,
        preexec_fn=_limited(1 << 20),
    )
    assert (
        r.returncode == 1 and r.stderr == f"error: cannot write into the store at {st}: File too large\n"
    ), r.stderr
    assert os.listdir(st / "tmp") == [] or all(n.endswith(".lock") for n in os.listdir(st / "tmp"))
    assert kiln("store", "verify", "--store", str(st)).returncode == 0


def test_messages_name_what_the_user_gave(tmp_path):
    """``store restore nodir/x`` named the hidden scratch dir beside x, and ``store cat``
    of a directory path said "'' is a directory"."""
    import subprocess
    import sys

    env = {**os.environ, "KILN_HOME": str(tmp_path / "home")}

    def k(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "kiln", *args], input=stdin, capture_output=True, env=env
        )

    r = k("store", "restore", str(tmp_path / "nodir" / "x"), stdin=b"")
    assert r.returncode == 1 and b"restore destination's directory does not exist" in r.stderr, r.stderr
    assert b".restore-" not in r.stderr
    # a directory where nothing can be made (procfs): named by what was given too
    r = k("store", "restore", "/proc/x", stdin=b"")
    assert r.returncode == 1 and b"cannot restore there" in r.stderr and b"/proc/x" in r.stderr, r.stderr
    assert b".restore-" not in r.stderr
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    assert k("store", "init").returncode == 0
    p = k("store", "add", str(tmp_path / "d")).stdout.decode().strip()
    r = k("store", "cat", p)
    assert r.returncode == 1 and b"the path itself is a directory, not a file (name a file in it" in r.stderr
