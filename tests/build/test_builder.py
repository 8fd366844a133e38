"""The build loop against real bubblewrap sandboxes and a real local store."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store.build import Builder, BuildError, BuildFailures, BuildOptions, NotDeterministic
from kiln.store.errors import StoreError

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]


def builder(store, **kw) -> Builder:
    return Builder(store, BwrapExecutor(), BuildOptions(**kw), say=lambda m: None)


def test_file_and_directory_outputs(store, graph):
    f, fd = graph.drv("file-out", "echo hi > $out")
    d, dd = graph.drv(
        "dir-out", "mkdir -p $out/bin $dev; echo x > $out/bin/x; echo y > $dev/y", outputs=("out", "dev")
    )
    builder(store).realise([f, d])
    assert store.real_path(fd.output_path()).read_text() == "hi\n"
    assert (store.real_path(dd.output_path()) / "bin" / "x").read_text() == "x\n"
    assert (store.real_path(dd.output_path("dev")) / "y").read_text() == "y\n"
    info = store.query(fd.output_path())
    assert info.deriver == f and info.references == ()


def test_runtime_references_found_and_only_those(store, graph):
    a, ad = graph.drv("a", "echo a > $out")
    b, bd = graph.drv("b", "echo a > $out")  # an input that is not referenced
    c, cd = graph.drv("c", "mkdir $out; echo $in0 > $out/ref; cat $in1 > $out/copy", inputs=[a, b])
    builder(store).realise([c])
    assert store.query(cd.output_path()).references == (ad.output_path(),)
    assert store.closure([cd.output_path()])[-1] == cd.output_path()


def test_an_output_may_refer_to_a_sibling_output_but_not_in_a_cycle(store, graph):
    # `dev` naming `out` is the usual layout, and `dev` sorts before `out`.
    d, dd = graph.drv(
        "lib",
        'mkdir -p $out/lib $dev/lib; echo x > $out/lib/l.so; echo "libdir=$out/lib" > $dev/lib/l.pc',
        outputs=("out", "dev"),
    )
    builder(store).realise([d])
    assert store.query(dd.output_path("dev")).references == (dd.output_path("out"),)
    c, cd = graph.drv(
        "cyc", "mkdir $out $dev; echo $out > $dev/r; echo $dev > $out/r", outputs=("out", "dev")
    )
    with pytest.raises(BuildError, match="cycle in the references between its outputs dev, out"):
        builder(store).realise([c])
    assert not store.is_valid(cd.output_path()) and not store.is_valid(cd.output_path("dev"))


def test_outputs_hard_linked_to_each_other_register(store, graph):
    h, hd = graph.drv("hl", "echo x > $out; ln $out $dev", outputs=("out", "dev"))
    builder(store).realise([h])
    a, b = store.real_path(hd.output_path()), store.real_path(hd.output_path("dev"))
    assert a.read_text() == b.read_text() == "x\n" and a.stat().st_ino != b.stat().st_ino


def test_references_are_found_as_nix_finds_them(tmp_path):
    """Any 32-character window counts, whatever surrounds it, and entry names are scanned
    (they are in the NAR): a hash glued to letters, URL-encoded or z-encoded, or in a
    file name is a runtime reference, as for Nix."""
    from kiln.store.refscan import scan

    h = "0" * 31 + "1"
    store_dir = "/kiln/store"
    cases = {
        "glued": f"abc{h}-dep".encode(),
        "url": f"%2fkiln%2fstore%2f{h}-dep".encode(),
        "z": f"zskilnzsstorezs{h}zmdep".encode(),
    }
    for name, data in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_bytes(data)
        assert scan(tmp_path / name, [h], store_dir).found == {h}, name
    (tmp_path / "named" / f"{h}-dep").mkdir(parents=True)
    assert scan(tmp_path / "named", [h], store_dir).found == {h}
    # a path outside the candidates is a stray reference however it is spelled
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "f").write_bytes(f"/kiln/store//{h}-x /kiln/./store/{h}-y".encode())
    assert [f for f, _ in scan(tmp_path / "odd", [], store_dir).stray] == ["f"]
    # ... and a long run of '/' stays linear (a pattern allowing extra separators
    # everywhere backtracked quadratically: 32,000 slashes took 10 s)
    import time

    (tmp_path / "slashes").mkdir()
    (tmp_path / "slashes" / "f").write_bytes(b"/" * 200_000 + b"./" * 50_000)
    t = time.perf_counter()
    scan(tmp_path / "slashes", [h], store_dir)
    assert time.perf_counter() - t < 2.0
    # a window inside a longer run, across the 1 MiB chunk boundary
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "f").write_bytes(b"x" * ((1 << 20) - 20) + b"abcd" + h.encode() + b"wxyz")
    assert scan(tmp_path / "big", [h], store_dir).found == {h}


def test_reference_outside_the_inputs_is_an_error(store, graph):
    a, ad = graph.drv("a", "echo a > $out")
    builder(store).realise([a])
    stray = ad.output_path()
    b, bd = graph.drv("b", f"echo {stray} > $out")  # mentions a path it was not given
    with pytest.raises(BuildError, match="not among the derivation's inputs"):
        builder(store).realise([b])
    assert not store.is_valid(bd.output_path())


def test_valid_outputs_are_skipped(store, graph):
    a, _ = graph.drv("a", "echo a > $out")
    b, _ = graph.drv("b", "cat $in0 > $out", inputs=[a])
    first = builder(store).realise([b])
    assert first[0].built
    again = builder(store).realise([b])
    assert not again[0].built


def test_parallel_jobs_build_a_fan_in(store, graph):
    """With -j 4 the four leaves run at the same time: each notes the host's uptime when
    it starts and ends, and every start comes before every end (one at a time, none
    would). A wall-clock bound did not tell: four sandboxes one after another fit in it."""
    script = "read a _ < /proc/uptime; sleep 2; read b _ < /proc/uptime; echo {i} $a $b > $out"
    leaves = [graph.drv(f"leaf{i}", script.format(i=i))[0] for i in range(4)]
    top, td = graph.drv("top", "cat $in0 $in1 $in2 $in3 > $out", inputs=leaves)
    builder(store, jobs=4).realise([top])
    rows = [line.split() for line in store.real_path(td.output_path()).read_text().splitlines()]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"]
    starts, ends = [float(r[1]) for r in rows], [float(r[2]) for r in rows]
    assert max(starts) < min(ends), rows


def test_with_jobs_the_first_failure_stops_the_other_builds_at_once(store, graph):
    """As Nix without --keep-going: a failure kills the builds running beside it and is
    reported at once (not after they finish), and their outputs are not registered."""
    slow, sd = graph.drv("slow", "sleep 30; echo late > $out")
    boom, _ = graph.drv("boom", "sleep 0.5; echo failing; exit 3")
    top, _ = graph.drv("top", "cat $in0 $in1 > $out", inputs=[slow, boom])
    t0 = time.monotonic()
    with pytest.raises(BuildError, match="exit status 3"):
        builder(store, jobs=2).realise([top])
    assert time.monotonic() - t0 < 15
    assert not store.is_valid(sd.output_path())


@pytest.mark.parametrize("jobs", [1, 2])
def test_keep_going_builds_what_does_not_depend_on_a_failure(store, graph, jobs):
    """-k: a failure is reported when it happens; the builds beside it still run (and
    register), what depends on it is not attempted, and the error at the end names both
    kinds. The roots that were realised are in the error's results."""
    boom, _ = graph.drv("boom", "echo failing; exit 3")
    above, _ = graph.drv("above", "cat $in0 > $out", inputs=[boom])
    top, _ = graph.drv("top", "cat $in0 > $out", inputs=[above])
    ok, okd = graph.drv("fine", "sleep 0.5; echo fine > $out")
    said: list[str] = []
    b = Builder(store, BwrapExecutor(), BuildOptions(jobs=jobs, keep_going=True), say=said.append)
    with pytest.raises(BuildFailures) as e:
        b.realise([top, ok])
    assert list(e.value.failed) == [boom] and sorted(e.value.skipped) == sorted([above, top])
    msg = str(e.value)
    assert (
        f"1 derivation failed (reported above): {boom}" in msg
        and "2 not attempted because an input failed" in msg
    )
    assert any("exit status 3" in m and boom in m for m in said if m.startswith("error: "))
    assert store.real_path(okd.output_path()).read_text() == "fine\n"
    assert store.is_valid(okd.output_path())
    assert [r.drv_path for r in e.value.results] == [ok]


def test_keep_going_checks_every_root_and_survives_a_failing_hook(store, graph):
    """-k with --check: a root that is not deterministic fails, the others are still
    checked; a signing/provenance hook that fails is reported, not put in place of the
    build failures (whose list, and the realised roots, were lost)."""
    nd1, _ = graph.drv("nd1", "cat /proc/sys/kernel/random/uuid > $out")
    det, detd = graph.drv("det", "echo same > $out")
    nd2, _ = graph.drv("nd2", "cat /proc/sys/kernel/random/uuid > $out")
    builder(store).realise([nd1, det, nd2])
    said: list[str] = []
    b = Builder(store, BwrapExecutor(), BuildOptions(check=True, keep_going=True), say=said.append)
    with pytest.raises(BuildFailures) as e:
        b.realise([nd1, det, nd2])
    assert sorted(e.value.failed) == sorted([nd1, nd2]) and [r.drv_path for r in e.value.results] == [det]
    assert sum(m.startswith("checking ") for m in said) == 3

    def broken_hook(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("signing broke")

    boom, _ = graph.drv("boom2", "exit 3")
    ok, okd = graph.drv("fine2", "echo fine > $out")
    said.clear()
    b = Builder(
        store, BwrapExecutor(), BuildOptions(keep_going=True), after_build=broken_hook, say=said.append
    )
    with pytest.raises(BuildFailures) as e:
        b.realise([boom, ok])
    assert list(e.value.failed) == [boom] and [r.drv_path for r in e.value.results] == [ok]
    assert "error: signing broke" in said and store.is_valid(okd.output_path())


def test_without_keep_going_jobs_1_stops_at_the_first_failure(store, graph):
    boom, _ = graph.drv("boom", "exit 3")
    oks: list = []
    while not any(p > boom for p, _ in oks):  # at least one planned after the failure
        oks.append(graph.drv(f"ok{len(oks)}", "echo fine > $out"))
    with pytest.raises(BuildError) as e:
        builder(store).realise([boom, *(p for p, _ in oks)])
    assert not isinstance(e.value, BuildFailures)
    # independent derivations are built in path order: none after the failure was
    later = [d for p, d in oks if p > boom]
    assert not any(store.is_valid(d.output_path()) for d in later)


def test_limits_far_in_the_future_are_no_internal_error(store, graph):
    """``--timeout 1e308`` or ``--max-silent-time`` of weeks: poll takes a C int of
    milliseconds, so the wait goes in steps; the build just runs."""
    a, ad = graph.drv("patient", "echo ok > $out")
    builder(store, timeout=1e308, max_silent=2_200_000.0).realise([a])
    assert store.real_path(ad.output_path()).read_text() == "ok\n"


def test_failure_names_the_derivation_and_shows_the_log(store, graph):
    a, _ = graph.drv("boom", "echo about to fail; echo on stderr >&2; exit 3")
    with pytest.raises(BuildError) as e:
        builder(store).realise([a])
    msg = str(e.value)
    assert a in msg and "exit status 3" in msg and "about to fail" in msg and "on stderr" in msg


def test_keep_failed_keeps_the_build_dir(store, graph):
    """``-K`` keeps the build dir, and the error still shows the log's last lines (it
    said "(no log)": the log had moved with the dir) and ``kiln log`` still has it."""
    a, _ = graph.drv("keep", "echo partial > /build/left-behind; echo the reason; exit 1")
    with pytest.raises(BuildError) as e:
        builder(store, keep_failed=True).realise([a])
    kept = str(e.value).split("kept build directory: ")[1].split("\n")[0]
    with open(os.path.join(kept, "build", "left-behind")) as f:
        assert f.read() == "partial\n"
    assert "last lines of the log" in str(e.value) and "  the reason" in str(e.value), str(e.value)
    from kiln.store.buildlogs import LogStore

    assert LogStore(store.root / "logs").open(a).read() == b"the reason\n"


def test_a_log_that_cannot_be_saved_does_not_hide_the_build_error(store, graph, monkeypatch):
    """A full disk is when builds fail: saving the failed build's log must not replace
    its error, nor stop -K from keeping the directory."""
    import errno

    from kiln.store.buildlogs import LogStore

    def full(self, drv_path, log_file):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LogStore, "save", full)
    a, _ = graph.drv("nospace", "echo the reason; exit 1")
    with pytest.raises(BuildError) as e:
        builder(store, keep_failed=True).realise([a])
    assert "  the reason" in str(e.value) and "not saved: No space left on device" in str(e.value)
    assert "kept build directory: " in str(e.value)


@pytest.mark.parametrize(
    ("script", "says"),
    [
        ("echo made nothing", "did not create output"),
        ("mkdir $out; mkfifo $out/pipe", "pipe"),
    ],
)
def test_keep_failed_keeps_a_build_whose_output_is_refused(store, graph, script, says):
    """The builder exits 0 but its output is refused (missing, or holding a FIFO): with
    ``-K`` the directory is kept too, output included, and the error names the
    derivation."""
    a, _ = graph.drv("refused", f"echo note > /build/note; {script}")
    with pytest.raises(BuildError) as e:
        builder(store, keep_failed=True).realise([a])
    msg = str(e.value)
    assert says in msg and a in msg and "kept build directory: " in msg, msg
    kept = msg.split("kept build directory: ")[1].split("\n")[0]
    with open(os.path.join(kept, "build", "note")) as f:
        assert f.read() == "note\n"


def test_a_refused_output_takes_its_placed_sibling_with_it(store, graph, monkeypatch):
    """``dev`` comes first (references-first order), then ``out`` is refused (a FIFO):
    the build fails and ``dev``'s tree is not left, unregistered, at its real path until
    a GC. Every output is checked before any is placed, so ``dev`` is never placed."""
    from kiln.store import stagedbuild

    placed = []
    real_place = stagedbuild.place
    monkeypatch.setattr(stagedbuild, "place", lambda *a, **kw: placed.append(a[1]) or real_place(*a, **kw))
    a, ad = graph.drv("half", "mkdir $out $dev; echo x > $dev/f; mkfifo $out/p", outputs=("out", "dev"))
    with pytest.raises(BuildError, match="is a fifo") as e:
        builder(store).realise([a])
    # named as the author knows it, not under the build's scratch dir
    assert f"{ad.output_path('out')}/p: is a fifo" in str(e.value) and "/tmp/build-" not in str(e.value)
    assert placed == []
    for o in ("out", "dev"):
        assert not store.is_valid(ad.output_path(o))
        assert not os.path.lexists(store.real_path(ad.output_path(o))), o


def test_a_hook_its_builder_left_undone_is_run_by_the_next_build(store, graph):
    """Signing runs after the commit: a builder killed in between (here: its hook fails)
    leaves a valid unsigned path and a marker (``hookmarks``). The next build that
    reaches the path runs the hook, unless a live process holds the marker; a path
    without a marker (a substitute) is never signed by it."""
    from kiln.store.locks import FileLock
    from kiln.store.signing import SecretKey, sign_info

    key = SecretKey.generate("builder-1")
    calls, fail = [], [True]

    def hook(drv_path, drv, outputs, started, finished, store=None):  # noqa: ANN001
        if fail[0]:
            raise KeyboardInterrupt  # as a kill at this point: nothing after it runs
        for out in outputs.values():
            calls.append(out)
            store.add_signatures(out, [sign_info(store.query(out), key)])

    def build(drv: str, say=lambda m: None) -> None:  # noqa: ANN001
        Builder(store, BwrapExecutor(), BuildOptions(), after_build=hook, say=say).realise([drv])

    a, ad = graph.drv("a", "echo a > $out")
    b, bd = graph.drv("b", "cat $in0 > $out", inputs=[a])
    out = ad.output_path()
    marker = store.root / "locks" / f"{out.split('/')[-1][:32]}.hook"
    with pytest.raises(KeyboardInterrupt):
        build(a)
    assert store.is_valid(out) and not store.query(out).sigs and marker.exists()
    fail[0] = False
    with FileLock(marker):  # a live builder's hook is still to come: not ours to run
        build(b)
    assert calls == [bd.output_path()] and not store.query(out).sigs
    said = []
    build(a, said.append)  # the builder is gone now (its lock is free); a is a root here
    assert calls[1:] == [out] and store.query(out).sigs and not marker.exists()
    assert any("its build stopped before that" in m for m in said)
    calls.clear()
    build(a)
    assert calls == [] and not list((store.root / "locks").glob("*.hook"))
    # a valid, unsigned path without a marker (a substitute under --sigs-needed 0)
    with store.conn:
        store.conn.execute("DELETE FROM sigs WHERE path = ?", (out,))
    build(a)
    assert calls == [] and not store.query(out).sigs
    # a free marker on a signed path: a hook that failed after signing, before writing
    # the provenance; the hook is run again in full (a substitute leaves no free marker
    # on the path it makes valid: hookmarks.drop_free, tests/store/test_hookmarks.py)
    store.add_signatures(out, [sign_info(store.query(out), SecretKey.generate("elsewhere-1"))])
    marker.touch()
    build(a)
    assert calls == [out] and not marker.exists()
    # a marker that cannot be made: a warning, and the build goes on
    c, cd = graph.drv("c", "echo c > $out")
    (store.root / "locks" / f"{cd.output_path().split('/')[-1][:32]}.hook").mkdir()
    said = []
    build(c, said.append)
    assert store.query(cd.output_path()).sigs and any("cannot mark the signing hook" in m for m in said)


def test_a_build_that_waited_on_a_dead_builder_runs_its_hook(store, graph, monkeypatch):
    """A build that waited on another builder's lock, which committed and died before
    its hook, finds the outputs valid and builds nothing: it still runs the dead
    builder's hook (the derivation was in its plan), once."""
    import contextlib

    from kiln.store import buildlocks
    from kiln.store.signing import SecretKey, sign_info

    key = SecretKey.generate("builder-1")
    calls: list[str] = []

    def dying_hook(drv_path, drv, outputs, started, finished, store=None):  # noqa: ANN001
        raise KeyboardInterrupt  # as a kill between the commit and the hook

    def hook(drv_path, drv, outputs, started, finished, store=None):  # noqa: ANN001
        for out in outputs.values():
            calls.append(out)
            store.add_signatures(out, [sign_info(store.query(out), key)])

    a, ad = graph.drv("a", "echo a > $out")
    out = ad.output_path()
    real_lock = buildlocks.output_lock

    @contextlib.contextmanager
    def lock_after_the_other_builder(store_, paths, say=None):  # noqa: ANN001
        # what happened while this build waited for the lock: the other one built
        # the outputs, committed them and was killed before its hook
        monkeypatch.setattr(buildlocks, "output_lock", real_lock)
        with pytest.raises(KeyboardInterrupt):
            Builder(
                store, BwrapExecutor(), BuildOptions(), after_build=dying_hook, say=lambda m: None
            ).realise([a])
        with real_lock(store_, paths, say):
            yield

    monkeypatch.setattr(buildlocks, "output_lock", lock_after_the_other_builder)
    said: list[str] = []
    r = Builder(store, BwrapExecutor(), BuildOptions(), after_build=hook, say=said.append).realise([a])
    assert r[0].outputs["out"] == out
    assert calls == [out] and store.query(out).sigs
    assert not any(m.startswith("[1/1] building") for m in said), said  # it built nothing itself
    assert not list((store.root / "locks").glob("*.hook"))


def test_missing_output_is_an_error(store, graph):
    a, _ = graph.drv("lazy", "true")
    with pytest.raises(BuildError, match="did not create output"):
        builder(store).realise([a])


def test_setuid_output_is_rejected(store, graph):
    # Either the sandbox refuses the chmod or registration rejects the file: never valid.
    a, ad = graph.drv("suid", "mkdir $out; echo x > $out/f; chmod 4755 $out/f; chmod 2755 $out")
    with pytest.raises(Exception, match="(?i)setuid|setgid|Operation not permitted"):
        builder(store).realise([a])
    assert not store.is_valid(ad.output_path())


def test_check_passes_for_a_deterministic_build(store, graph):
    a, _ = graph.drv("det", "mkdir $out; echo same > $out/f")
    builder(store).realise([a])
    builder(store, check=True).realise([a])


def test_check_realises_inputs_a_gc_collected(store, graph):
    """Only the output is rooted; its build-time input is collected. --check must
    rebuild the input before it can rebuild the output (it used to fail: "not valid")."""
    a, ad = graph.drv("input", "echo from-a > $out")
    b, bd = graph.drv("user", "cat $in0 > $out", inputs=[a])  # copies, keeps no reference
    builder(store).realise([b])
    store.add_root("user", bd.output_path())
    store.add_root("user-drv", b)  # the derivations stay (as a recipe's evaluation keeps them)
    store.close()  # drops this process's temp roots, as the end of `kiln build` does
    store = type(store).open(store.root)
    try:
        store.gc(keep_outputs=False)  # (the store's default keeps build inputs)
        assert not store.is_valid(ad.output_path()) and store.is_valid(bd.output_path())
        builder(store, check=True).realise([b])
        assert store.is_valid(ad.output_path())
        builder(store, rounds=2).realise([b])
    finally:
        store.close()


def test_check_does_not_rebuild_an_input_for_an_unused_output(store, graph):
    """B uses (and references) only A.out; a GC collected A.doc. --check B needs A.out
    only, which is valid: A must not be rebuilt."""
    a, ad = graph.drv("a", "echo big > $out; echo docs > $doc", outputs=("out", "doc"))
    b, bd = graph.drv("b", "echo $in0 > $out", inputs=[a])  # graph.drv inputs use "out"
    builder(store).realise([b])
    store.add_root("b", bd.output_path())
    store.add_root("b-drv", b)
    store.close()
    store = type(store).open(store.root)
    try:
        store.gc(keep_outputs=False)  # (the store's default keeps build inputs)
        assert store.is_valid(ad.output_path()) and not store.is_valid(ad.output_path("doc"))
        said: list[str] = []
        Builder(store, BwrapExecutor(), BuildOptions(check=True), say=said.append).realise([b])
        assert not any("building" in m and "-a.drv" in m for m in said), said
    finally:
        store.close()


def test_check_names_the_differing_file(store, graph):
    a, _ = graph.drv(
        "nondet", "mkdir $out; echo same > $out/stable; cat /proc/sys/kernel/random/uuid > $out/random"
    )
    builder(store).realise([a])
    with pytest.raises(NotDeterministic) as e:
        builder(store, check=True).realise([a])
    files = str(e.value).split("diffoscope:")[0]  # diffoscope's explanation follows when installed
    assert "random: contents differ" in files and "stable" not in files


def test_check_keep_failed_keeps_the_differing_rebuild(store, graph):
    """--check -K: the rebuild that differs is kept and its place named (as Nix keeps
    ``<path>.check``); without -K the message says it is gone and names no temp dir."""
    a, ad = graph.drv("nondet2", "mkdir $out; cat /proc/sys/kernel/random/uuid > $out/random")
    builder(store).realise([a])
    with pytest.raises(NotDeterministic) as e:
        builder(store, check=True).realise([a])
    msg = str(e.value)
    assert "the rebuild was removed (--keep-failed keeps it)" in msg and "check-nondet2-" not in msg
    # ``kiln rebuild`` (Builder.rebuild, no -K of its own) is not told about --keep-failed
    [c] = builder(store).rebuild(a)
    assert c.differences.endswith("\nthe rebuild was removed") and "--keep-failed" not in c.differences
    with pytest.raises(NotDeterministic) as e:
        builder(store, check=True, keep_failed=True).realise([a])
    where = str(e.value).split("rebuilt output kept at ")[1].split("\n")[0]
    assert os.path.basename(where) == os.path.basename(ad.output_path())
    registered = (store.real_path(ad.output_path()) / "random").read_text()
    rebuilt = Path(where, "random").read_text()
    assert len(rebuilt) == len(registered) and rebuilt != registered


def test_timeout_kills_the_build(store, graph):
    a, _ = graph.drv("hang", "sleep 60")
    t0 = time.monotonic()
    with pytest.raises(BuildError, match="time limit"):
        builder(store, timeout=1).realise([a])
    assert time.monotonic() - t0 < 10


def _kiln(store, *args, **kw):
    env = dict(os.environ, KILN_HOME=str(store.root))
    return subprocess.Popen(
        [sys.executable, "-m", "kiln", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_two_processes_build_each_derivation_once(store, graph):
    from clikit import said_until

    # the build lasts until the test lets it end (touches /build/go): the second process
    # is sure to find it running however slowly it starts on a loaded machine
    script = (
        "i=0; while [ ! -e /build/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; echo done > $out"
    )
    a, ad = graph.drv("slow", script)
    p1 = _kiln(store, "build", a)
    first = said_until(p1.stderr, "building", 30)  # it holds the build lock once it says so
    p2 = _kiln(store, "build", a)
    second = said_until(p2.stderr, "waiting for another kiln process", 60)
    for d in (store.root / "tmp").glob("build-*/build"):
        (d / "go").touch()
    outs = [p.communicate(timeout=60) for p in (p1, p2)]
    outs = [(outs[0][0], first + outs[0][1]), (outs[1][0], second + outs[1][1])]
    assert [p.returncode for p in (p1, p2)] == [0, 0], outs
    assert sum("building" in err for _, err in outs) == 1, outs
    # the one that waited said so (a stopped builder would otherwise hold it in silence)
    assert (
        sum(f"waiting for another kiln process to finish with {ad.output_path()}" in e for _, e in outs) == 1
    )
    assert all(out.strip() == ad.output_path() for out, _ in outs)


def test_kill_leaves_no_half_path_and_no_stray_process(store, graph):
    # a number no other test's process has on its command line (another pytest worker may
    # be running builds): matches the sandbox's script and the sleep it becomes
    secs = random.randrange(10**6, 10**7)
    a, ad = graph.drv("killed", f"mkdir $out; echo partial > $out/f; exec sleep {secs}")
    p = _kiln(store, "build", a, start_new_session=True)
    deadline = time.monotonic() + 30

    def running() -> bool:  # (the build's sleep, inside the sandbox)
        return subprocess.run(["pgrep", "-f", f"^sleep {secs}$"], capture_output=True).returncode == 0

    while not running():
        assert time.monotonic() < deadline, "the build's sleep never started"
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    gone = time.monotonic() + 10  # (the sandbox dies with kiln: promptly, if not at once when loaded)
    while running() and time.monotonic() < gone:
        time.sleep(0.05)
    leftovers = subprocess.run(["pgrep", "-af", f"sleep {secs}"], capture_output=True, text=True).stdout
    assert leftovers.strip() == ""
    assert not store.is_valid(ad.output_path())
    assert not store.real_path(ad.output_path()).exists()
    report = store.verify()
    assert report.ok, report


@pytest.mark.parametrize("bwrap", ["/nonexistent/bwrap", "/bin/false"])
def test_build_refused_without_a_working_sandbox(store, graph, bwrap):
    a, ad = graph.drv("x", "echo > $out")
    env = dict(os.environ, KILN_HOME=str(store.root), KILN_BWRAP=bwrap)
    r = subprocess.run([sys.executable, "-m", "kiln", "build", a], env=env, capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    assert ("sandbox" in r.stderr or "bubblewrap" in r.stderr) and bwrap in r.stderr
    assert "Traceback" not in r.stderr
    assert not store.is_valid(ad.output_path())


def test_check_vary_passes_for_a_hermetic_build(store, graph):
    a, _ = graph.drv("hermetic", "mkdir $out; echo same > $out/f; mkdir $out/d; touch $out/d/a $out/d/b")
    builder(store).realise([a])
    builder(store, check=True, vary=True).realise([a])


def test_check_vary_catches_dependence_on_cores(store, graph):
    a, _ = graph.drv("cores", "echo $KILN_CORES > $out")
    builder(store, cores=4).realise([a])
    builder(store, cores=4, check=True).realise([a])  # a plain rebuild does not see it
    with pytest.raises(NotDeterministic, match="contents differ"):
        builder(store, cores=4, check=True, vary=True).realise([a])


@pytest.mark.skipif(
    shutil.which("disorderfs") is None or not os.path.exists("/dev/fuse"), reason="disorderfs not usable"
)
def test_check_vary_catches_dependence_on_directory_order(store, graph):
    script = "mkdir /build/d; for i in 1 2 3 4 5 6 7 8 9; do touch /build/d/f$i; done; find /build/d > $out"
    a, _ = graph.drv("order", script)
    builder(store).realise([a])
    builder(store, check=True).realise([a])  # same file system, same order: not seen
    with pytest.raises(NotDeterministic, match="contents differ"):
        builder(store, check=True, vary=True).realise([a])


def test_check_vary_catches_dependence_on_umask(store, graph):
    a, _ = graph.drv("umask", "umask > $out")
    builder(store).realise([a])
    builder(store, check=True).realise([a])
    with pytest.raises(NotDeterministic, match="contents differ"):
        builder(store, check=True, vary=True).realise([a])


def test_check_vary_only_varies_what_it_names_and_a_mismatch_says_what_varied(store, graph):
    """``--vary-only``: the rebuild changes only the named conditions, so one at a time
    finds the one a build depends on; a varied mismatch names what it varied and, when
    several, says to try them one at a time (it named none: the user had to guess)."""
    a, _ = graph.drv("umask-only", "umask > $out")
    builder(store).realise([a])
    with pytest.raises(NotDeterministic) as e:
        builder(store, check=True, vary=True).realise([a])
    said = str(e.value)
    assert "the rebuild varied: dirs, cores" in said and "umask" in said, said
    assert "--vary-only dirs / --vary-only cores" in said and "--vary-only umask" in said, said
    for names in ({"dirs"}, {"cores"}, {"clock", "order"}):
        builder(store, check=True, vary=True, vary_only=frozenset(names)).realise([a])  # not the cause
    with pytest.raises(NotDeterministic) as e:
        builder(store, check=True, vary=True, vary_only=frozenset({"umask"})).realise([a])
    assert str(e.value).splitlines()[-1] == "the rebuild varied: umask", str(e.value)


def test_vary_only_says_what_it_left_alone():
    from kiln.store.vary import Variation, only, parse_names

    v = only(
        Variation(cores=2, umask=0o077, faketime="/x/libfaketime.so.1", cpus=1, cpus_seen=2),
        parse_names("umask"),
    )
    assert v.names() == ["umask"]
    assert v.describe() == ["umask 077", "not asked for (--vary-only): dirs, cores, cpus, order, clock"]
    with pytest.raises(
        ValueError, match="bogus: expected one or more of dirs, cores, cpus, umask, order, clock"
    ):
        parse_names("umask,bogus")


def test_a_stopped_reference_scan_raises(tmp_path):
    """The build loop's stop event reaches the reference scan: a cancelled build does
    not go on scanning (possibly gigabytes of) output, nor get placed afterwards."""
    from kiln.store.refscan import ScanStopped, scan

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f").write_bytes(b"x" * (3 << 20))
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 1  # after the first 1 MiB

    with pytest.raises(ScanStopped):
        scan(tmp_path / "out", [], "/kiln/store", stop)
    assert scan(tmp_path / "out", [], "/kiln/store", lambda: False).found == frozenset()


def test_check_right_after_the_build_sees_another_second(store, graph):
    """--check (or --rounds 2) right after a build would run in the same second and read
    the same `date +%s`; the rebuild waits for the next second, so a clock-second output
    is caught every time."""
    a, _ = graph.drv("clock", "date +%s > $out")
    builder(store).realise([a])
    with pytest.raises(NotDeterministic):
        builder(store, check=True).realise([a])


def test_check_vary_refuses_a_clock_shift_that_did_not_take(store, graph, tmp_path, monkeypatch):
    """A libfaketime the toolchain's loader cannot preload leaves the rebuild on the real
    clock: the check says so instead of passing under a shift it never made (a
    dynamically linked program, run by the host's loader copied into the store, with a
    garbage file as libfaketime)."""
    from kiln.store import vary

    if not (os.path.exists("/lib64/ld-linux-x86-64.so.2") and os.path.exists("/usr/bin/true")):
        pytest.skip("needs the host's x86_64 loader, libc and /usr/bin/true")
    rt = tmp_path / "rt"
    (rt / "lib").mkdir(parents=True)
    (rt / "bin").mkdir()
    for lib in ("/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6"):
        shutil.copy(os.path.realpath(lib), rt / "lib" / os.path.basename(lib))
    shutil.copy("/usr/bin/true", rt / "bin" / "true")
    p = store.add_path(rt, "host-runtime").path
    garbage = tmp_path / "libfaketime.so.1"
    garbage.write_bytes(b"not an ELF file\n")
    monkeypatch.setattr(vary, "FAKETIME_LIBS", (str(garbage),))
    a, _ = graph.drv(
        "dyn", f"{p}/lib/ld-linux-x86-64.so.2 --library-path {p}/lib {p}/bin/true; echo > $out", srcs=[p]
    )
    builder(store).realise([a])
    with pytest.raises(StoreError, match="could not load libfaketime"):
        builder(store, check=True, vary=True).realise([a])
