"""The sandbox's /proc and /etc, seen from inside a real build: the key lists, what only
host root may read (a build of a kiln run as root is host uid 0) or no build needs is
masked, what is not per-namespace is read-only, and what compilers read still works;
/etc is 0755."""

from __future__ import annotations

import io
import os
import shutil
import stat
from pathlib import Path

import pytest

from kiln.sandbox import SandboxSpec
from kiln.sandbox.bwrapargv import (
    PROC_MASKED,
    PROC_MASKED_AS_ROOT,
    PROC_READONLY,
    proc_flags,
    root_only_proc_files,
)

#: what the audit read from inside builds of a kiln run as root
AUDITED = ("slabinfo", "vmallocinfo", "timer_list", "pagetypeinfo", "keys")


def _host_has(names: tuple[str, ...], kind=os.path.lexists) -> list[str]:
    return [n for n in names if kind("/proc/" + n)]


def _root_only_files() -> list[str]:
    """Top-level /proc files (not per-process) that others may not read on the host."""
    out = []
    for n in os.listdir("/proc"):
        if n.isdigit():
            continue  # (a process's; it may be gone by now)
        st = os.lstat("/proc/" + n)
        if stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IROTH:
            out.append(n)
    return sorted(out)


def test_masked_proc_files_give_a_build_nothing(sh) -> None:
    """Every top-level /proc file only root may read on the host (masked, or guarded by
    capabilities the build lacks) and the key lists give a build nothing, and none can
    be written."""
    names = sorted({*_host_has(PROC_MASKED + PROC_MASKED_AS_ROOT, os.path.isfile), *_root_only_files()})
    assert set(AUDITED) & set(names), "this kernel has none of the audited files"
    # bytes each file yields inside (an error counts as none), then whether a write works
    script = "; ".join(
        f"echo {n}=$(cat /proc/{n} 2>/dev/null | wc -c); (echo 1 > /proc/{n}) 2>/dev/null && echo wrote-{n}"
        for n in names
    )
    r = sh(script + "; true")
    assert r.result.ok, r.log
    assert sorted(r.log.split()) == sorted(f"{n}=0" for n in names), r.log


def test_only_a_root_kiln_pays_for_the_root_only_masks() -> None:
    """An unprivileged kiln's builds cannot read the 0400 files anyway: no mounts for
    them (each costs ~0.1 ms per sandbox). The key lists are 0444: masked for both."""

    def masked(flags: tuple[str, ...]) -> list[str]:
        return [flags[i + 1] for i, a in enumerate(flags) if a == "/dev/null"]

    def have(names: tuple[str, ...]) -> list[str]:
        return [f"/proc/{n}" for n in names if os.path.isfile("/proc/" + n)]

    assert "/proc/keys" in have(PROC_MASKED)
    assert masked(proc_flags(as_root=False)) == have(PROC_MASKED)
    extra = [f"/proc/{n}" for n in _root_only_files() if n not in PROC_MASKED_AS_ROOT]
    assert masked(proc_flags(as_root=True)) == have(PROC_MASKED + PROC_MASKED_AS_ROOT) + extra


def test_a_root_kiln_masks_root_only_files_it_was_not_told_of() -> None:
    """Kernels and hypervisors add /proc files of their own: every top-level file only
    root may read is masked for a root kiln's builds, named in the audit or not."""
    masked = set(proc_flags(as_root=True))
    assert {f"/proc/{n}" for n in _root_only_files()} <= masked
    assert root_only_proc_files() == tuple(_root_only_files())


def test_the_masks_follow_what_proc_has_now(tmp_path: Path) -> None:
    """The mask list is made for each sandbox, not once per process: a root-only file that
    appears while kiln runs (a module loaded) is masked in the next build. Only regular
    top-level files others may not read count (not directories, processes' directories,
    symlinks or readable files); a /proc that cannot be listed is an error, not a build
    with fewer masks."""
    proc = tmp_path / "proc"
    proc.mkdir()
    for name, mode in (("keys", 0o444), ("open", 0o444), ("sys", 0o555)):
        (proc / name).mkdir() if name == "sys" else (proc / name).write_text("")
        (proc / name).chmod(mode)
    (proc / "1234").mkdir(mode=0o500)
    (proc / "link").symlink_to("keys")

    def masked() -> list[str]:
        flags = proc_flags(as_root=True, proc=str(proc))
        return [flags[i + 1] for i, a in enumerate(flags) if a == "/dev/null"]

    assert masked() == ["/proc/keys"]
    (proc / "new_driver").write_text("secret")
    (proc / "new_driver").chmod(0o400)
    assert masked() == ["/proc/keys", "/proc/new_driver"]
    assert root_only_proc_files(str(proc)) == ("new_driver",)
    assert proc_flags(as_root=False, proc=str(proc)).count("/dev/null") == 1
    assert proc_flags(as_root=True, proc=str(proc))[:3] == ("--ro-bind", f"{proc}/sys", "/proc/sys")
    with pytest.raises(FileNotFoundError):
        proc_flags(as_root=True, proc=str(tmp_path / "absent"))


def test_host_wide_proc_entries_are_read_only(sh) -> None:
    names = _host_has(PROC_READONLY)
    assert "sys" in names
    writes = {"sys": "/proc/sys/fs/lease-break-time", "sysrq-trigger": "/proc/sysrq-trigger"}
    script = "; ".join(
        f"(echo 1 > {writes[n]}) 2>/dev/null && echo wrote-{n}; grep -qw /proc/{n} /proc/self/mounts && echo bound-{n}"
        for n in names
        if n in writes
    )
    r = sh(script + "; grep ' /proc/sys ' /proc/self/mounts")
    assert "wrote-" not in r.log, r.log
    for n in names:
        if n in writes:
            assert f"bound-{n}" in r.log, r.log
    assert " ro," in r.log, r.log  # /proc/sys is mounted read-only


def test_what_compilers_read_in_proc_still_works(sh) -> None:
    r = sh(
        "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo; "
        "cat /proc/self/status | grep -c ^Pid; readlink /proc/self/exe; cat /proc/version; nproc"
    )
    assert r.result.ok, r.log
    lines = r.log.splitlines()
    assert int(lines[0]) >= 1 and lines[1].startswith("MemTotal:") and lines[2] == "1", r.log
    assert lines[3].endswith("busybox") and lines[4].startswith("Linux version"), r.log


def test_etc_is_0755_even_with_alternatives_from_the_rootfs(executor, tmp_path: Path) -> None:
    # /etc/alternatives is bound before kiln's /etc; bwrap made its parent 0700 then
    root = tmp_path / "rootfs"
    (root / "usr" / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "usr" / "bin" / "busybox")
    for a in ("sh", "stat", "ls"):
        (root / "usr" / "bin" / a).symlink_to("busybox")
    (root / "bin").symlink_to("usr/bin")
    (root / "etc" / "alternatives").mkdir(parents=True)
    (root / "etc" / "alternatives" / "cc").symlink_to("/usr/bin/busybox")
    build = tmp_path / "build"
    build.mkdir()
    spec = SandboxSpec(
        argv=("/bin/sh", "-c", "stat -c '%a %n' /etc /etc/passwd; ls /etc/alternatives"),
        build_dir=str(build),
        env={"PATH": "/bin"},
        rootfs=str(root),
    )
    log = io.BytesIO()
    result = executor.run(spec, log)
    text = log.getvalue().decode()
    assert result.ok, text
    assert text.splitlines() == ["755 /etc", "644 /etc/passwd", "cc"]
