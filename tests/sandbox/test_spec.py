"""Spec validation, availability errors (no unsandboxed fallback), and the bwrap command line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from kiln.sandbox import (
    BwrapExecutor,
    SandboxError,
    SandboxSpec,
    SandboxUnavailable,
    build_env,
    bwrap_argv,
)


def test_missing_bwrap_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable) as e:
        BwrapExecutor(tmp_path / "no-such-bwrap")
    assert e.value.kiln_user_error is True
    assert "not found" in str(e.value) and "no-such-bwrap" in str(e.value)


def test_broken_bwrap_fails_the_probe(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/busybox sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(SandboxUnavailable) as e:
        BwrapExecutor(fake)
    assert "No permissions to create new namespace" in str(e.value)
    assert "only inside a sandbox" in str(e.value)


def test_an_old_bwrap_is_named_too_old(tmp_path: Path) -> None:
    """bubblewrap < 0.5 has no --size (the tmpfs caps): said as such, not as a
    user-namespace problem (bwrap 0.4's own words)."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/busybox sh\necho 'bwrap: Unknown option --size' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(SandboxUnavailable) as e:
        BwrapExecutor(fake)
    assert "Unknown option --size" in str(e.value) and "0.5 or later" in str(e.value)
    assert "user.max_user_namespaces" not in str(e.value)


def test_probe_reports_version(executor: BwrapExecutor) -> None:
    assert executor.version.startswith("bubblewrap ")


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"argv": ()}, "argv"),
        ({"build_dir": "relative"}, "build_dir"),
        ({"ro_mounts": (("/x", "relative"),)}, "absolute"),
        ({"ro_mounts": (("x", "/kiln/store/a"),)}, "host path"),
        ({"ro_mounts": (("/x", "/proc/foo"),)}, "reserved"),
        ({"rw_mounts": (("/x", "/build"),)}, "reserved"),
        ({"ro_mounts": (("/x", "/etc"),)}, "reserved"),
        ({"ro_mounts": (("/x", "/tmp/a"),)}, "reserved"),
        ({"rw_mounts": (("/x", "/"),)}, "root"),
        ({"ro_mounts": (("/x", "/a/../b"),)}, "normalised"),
        ({"ro_mounts": (("/x", "/a"),), "rw_mounts": (("/y", "/a"),)}, "twice"),
        ({"env": {"A=B": "c"}}, "env"),
        ({"env": {"A": "c\0"}}, "NUL"),
        ({"cores": 0}, "cores"),
        ({"timeout": 0}, "timeout"),
        ({"max_log_bytes": -1}, "max_log_bytes"),
        ({"umask": 0o1000}, "umask"),
        ({"outputs": ("/kiln/store/x",)}, "not a path under a rw_mounts destination"),
        ({"rw_mounts": (("/x", "/kiln/store"),), "outputs": ("/kiln/store",)}, "not a path under"),
        ({"rw_mounts": (("/x", "/kiln/store"),), "outputs": ("/kiln/storex/a",)}, "not a path under"),
        ({"rw_mounts": (("/x", "/kiln/store"),), "outputs": ("/kiln/store/a/../b",)}, "normalised"),
    ],
)
def test_spec_validation(kw: dict, msg: str) -> None:
    base = {"argv": ("/bin/sh",), "build_dir": "/tmp"}
    with pytest.raises(ValueError, match=msg):
        SandboxSpec(**{**base, **kw})


def test_spec_is_a_frozen_value() -> None:
    s = SandboxSpec(argv=["/bin/sh", "-c", "true"], build_dir=Path("/tmp"), env={"A": "1"})
    assert s.argv == ("/bin/sh", "-c", "true") and s.build_dir == "/tmp"
    with pytest.raises(AttributeError):
        s.cores = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.env["B"] = "2"  # type: ignore[index]
    assert build_env(s)["A"] == "1" and build_env(s)["KILN_CORES"] == "1"
    assert s.outputs == () and s.cacheable is True  # (bubblewrap needs neither)


def test_missing_host_paths_are_clear_errors(executor: BwrapExecutor, tmp_path: Path) -> None:
    b = tmp_path / "b"
    b.mkdir()
    spec = SandboxSpec(
        argv=("/bin/sh",), build_dir=str(b), ro_mounts=((str(tmp_path / "gone"), "/kiln/store/x"),)
    )
    with pytest.raises(SandboxError, match="does not exist"):
        executor.run(spec, io.BytesIO())
    with pytest.raises(SandboxError, match="build directory"):
        executor.run(SandboxSpec(argv=("/bin/sh",), build_dir=str(tmp_path / "nob")), io.BytesIO())


def test_argv_shape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    spec = SandboxSpec(
        argv=("/bin/sh", "-c", "x"),
        build_dir="/b",
        rootfs=str(root),
        ro_mounts=(("/h/in", "/kiln/store/a-in"),),
        rw_mounts=(("/h/out", "/kiln/store/b-out"),),
    )
    a = bwrap_argv("/usr/bin/bwrap", spec, {"passwd": 7, "group": 8, "hosts": 9}, 6)
    s = " ".join(a)
    for frag in (
        "--unshare-all --unshare-user --die-with-parent --new-session --cap-drop ALL",
        "--perms 0755 --size 536870912 --tmpfs /dev --dev-bind /dev/null /dev/null",
        "--size 1073741824 --tmpfs /tmp",
        "--uid 1000 --gid 1000 --hostname localhost --clearenv",
        f"--ro-bind {root}/usr /usr --symlink usr/bin /bin",
        "--clearenv --seccomp 6",
        "--perms 0644 --file 7 /etc/passwd --perms 0644 --file 8 /etc/group",
        "--bind /b /build",
        "--perms 0755 --dir /kiln --perms 0755 --dir /kiln/store",
        "--ro-bind /h/in /kiln/store/a-in --bind /h/out /kiln/store/b-out",
        "--chdir /build --remount-ro / -- /bin/sh -c x",
    ):
        assert frag in s, frag
    assert "--disable-userns" not in a and "--dev" not in a  # one user namespace (seccomp blocks more)
    assert "--share-net" not in a
    assert "/lib64" not in a  # absent rootfs dirs are not mounted


def test_isolation_settings_for_provenance(executor: BwrapExecutor) -> None:
    import json

    iso = executor.isolation()
    assert iso["executor"] == "bubblewrap" and iso["version"] == executor.version.split()[1]
    assert "net" in iso["namespaces"] and iso["seccomp"] == "no-setuid-setgid"
    json.dumps(iso)
