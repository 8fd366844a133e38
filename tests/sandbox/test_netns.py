"""Pooled network namespaces (``kiln.sandbox.netns``): builds reuse an empty namespace
only when the previous build left nothing in it, never share one at a time, cannot
reconfigure it, and the launching thread always gets its own network back."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest

from kiln.sandbox import BwrapExecutor, SandboxSpec
from kiln.sandbox.netns import NetnsPool

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="kiln pools network namespaces only as root")

NS_ID = "echo ns=$(readlink /proc/self/ns/net)"


def _ns(log: str) -> str:
    return next(ln for ln in log.splitlines() if ln.startswith("ns=")).removeprefix("ns=")


def _lo_line(log: str) -> list[str]:
    return next(ln for ln in log.splitlines() if ln.strip().startswith("lo:")).split(":")[1].split()


def _here() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def test_executor_pools_namespaces_as_root(executor) -> None:
    assert isinstance(executor.netns, NetnsPool)


def test_quiet_builds_reuse_one_empty_namespace(sh, executor) -> None:
    a = sh(f"{NS_ID}; cat /proc/net/dev")
    made = executor.netns.created
    b = sh(f"{NS_ID}; cat /proc/net/dev")
    assert a.result.ok and b.result.ok, a.log + b.log
    assert _ns(a.log) == _ns(b.log) != _here()
    assert executor.netns.created == made  # nothing new was made for the second build
    interfaces = [ln.split(":")[0].strip() for ln in b.log.splitlines() if ":" in ln and "|" not in ln]
    assert interfaces == ["ns=net", "lo"]
    assert set(_lo_line(b.log)) == {"0"}  # no traffic seen, ever


def test_loopback_works_inside_and_traffic_retires_the_namespace(sh, executor) -> None:
    a = sh(
        f"{NS_ID}; (nc -l -p 4321 > got &) ; sleep 0.2; echo hi | nc 127.0.0.1 4321; "
        "sleep 0.2; echo got=$(cat got)"
    )
    assert a.result.ok and "got=hi" in a.log, a.log  # lo is up, as in a fresh bwrap namespace
    b = sh(f"{NS_ID}; cat /proc/net/dev")
    assert _ns(b.log) != _ns(a.log)  # the used namespace was dropped...
    assert set(_lo_line(b.log)) == {"0"}  # ...so the next build sees no trace of the traffic


def test_builds_cannot_reconfigure_the_namespace(sh) -> None:
    a = sh(
        f"{NS_ID}; ip link set lo down; echo down-rc=$?; ip addr add 10.9.9.9/8 dev lo; echo add-rc=$?; "
        "ip link add dummy0 type dummy; echo dummy-rc=$?"
    )
    assert "down-rc=0" not in a.log and "add-rc=0" not in a.log and "dummy-rc=0" not in a.log, a.log
    assert "Operation not permitted" in a.log
    b = sh(f"{NS_ID}; ip addr; cat /proc/net/dev")
    assert "10.9.9.9" not in b.log and "dummy0" not in b.log and "127.0.0.1/8" in b.log, b.log
    assert "LOOPBACK,UP" in b.log


def test_concurrent_builds_get_different_namespaces(executor, rootfs: Path, tmp_path: Path) -> None:
    logs: list[str] = []

    def one(i: int) -> None:
        d = tmp_path / f"b{i}"
        d.mkdir()
        spec = SandboxSpec(
            argv=("/bin/sh", "-c", f"{NS_ID}; sleep 0.5"),
            build_dir=str(d),
            env={"PATH": "/bin"},
            rootfs=str(rootfs),
        )
        buf = io.BytesIO()
        assert executor.run(spec, buf).ok
        logs.append(buf.getvalue().decode())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(logs) == 3 and len({_ns(x) for x in logs}) == 3


def test_the_thread_gets_its_network_back() -> None:
    pool = NetnsPool.create()
    assert pool is not None
    home = _here()
    with pool.lease() as lease:
        with lease.entered():
            inside = _here()
            assert inside != home
        assert _here() == home
    with pytest.raises(RuntimeError), pool.lease() as lease, lease.entered():
        assert _here() == inside  # the clean namespace came back to the pool
        raise RuntimeError("boom")
    assert _here() == home
    with pool.lease() as lease, lease.entered():
        assert _here() != inside  # a lease that raised is not trusted again
    pool.close()


def test_without_the_pool_every_build_gets_a_fresh_namespace(rootfs: Path, build_dir: Path) -> None:
    ex = BwrapExecutor(reuse_netns=False)
    assert ex.netns is None
    seen = []
    for _ in range(2):
        spec = SandboxSpec(
            argv=("/bin/sh", "-c", f"{NS_ID}; nc 127.0.0.1 9 </dev/null; cat /proc/net/dev"),
            build_dir=str(build_dir),
            env={"PATH": "/bin"},
            rootfs=str(rootfs),
        )
        buf = io.BytesIO()
        ex.run(spec, buf)
        log = buf.getvalue().decode()
        assert "Connection refused" in log
        seen.append(_ns(log))
    assert len(set(seen)) == 2 and _here() not in seen
