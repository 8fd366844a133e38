"""A pool of empty network namespaces that sandboxes run in, one sandbox at a time.

Why: bwrap's ``--unshare-net`` makes a new network namespace for every sandbox and
brings its ``lo`` up over netlink; the kernel tears the namespace down afterwards in a
worker thread (``cleanup_net``). Together that is about a millisecond per build here,
a fifth of a bare bwrap run. When kiln may create network namespaces itself (it holds
CAP_SYS_ADMIN in its own user namespace: root), it keeps empty ones and starts bwrap
inside one with ``--share-net`` instead.

Theory of operation. Namespaces are per thread on Linux, and a forked child starts in
the namespaces of the thread that forked it. ``NetnsPool.lease()`` takes an idle
namespace (or makes one: ``unshare(CLONE_NEWNET)`` on the calling thread, ``lo`` up,
fds kept, then ``setns`` back) for one sandbox's whole run. Inside
``Lease.entered()`` the calling thread is in that namespace, and forks bwrap there;
then it goes back to the namespace it came from. When the run is over the namespace
returns to the pool if the sandbox left no trace in it, else it is dropped.

Invariants
----------
- A pooled namespace holds only ``lo`` (up; 127.0.0.1 and ::1), as a fresh bwrap one
  does. Sandboxes cannot change that: bwrap gives each its own user namespace, which
  does not own the network namespace, so a build has no CAP_NET_ADMIN over it (no
  interfaces, addresses, routes, firewall rules or net sysctls).
- One sandbox at a time: a leased namespace is out of the pool until its lease ends,
  and concurrent leases get different namespaces.
- Nothing of a sandbox is visible to the next one: a namespace goes back to the pool
  only if ``lo``'s packet counters did not move during the lease (nothing sent or
  received, so no connection, no TIME_WAIT, nothing in ``/proc/net`` counters) and no
  socket is in use in it. Sockets die with the sandbox's processes (the executor
  returns only when none is left). Otherwise the namespace is closed and the next
  lease makes a fresh one.
- The leasing thread is back in its own namespace when the ``with`` block ends, also
  when the block raises; if that ``setns`` fails the lease raises ``OSError`` rather
  than leave a thread without the host's network.
- ``NetnsPool.create()`` returns ``None`` where namespaces cannot be made (not root, a
  container without CAP_SYS_ADMIN); bwrap then makes a fresh namespace per sandbox, as
  it always could.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = struct.Struct("16sH14x")  # struct ifreq: name, ifr_flags, padding to 40 bytes


def _libc():  # -> ctypes.CDLL; ctypes is imported only where a pool is made (1-2 ms)
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


class _Namespace:
    """One namespace: an fd on it and fds on its ``/proc/net`` files (opened while
    inside, so they keep reading this namespace's counters from any thread)."""

    __slots__ = ("fd", "dev_fd", "sockstat_fds")

    def __init__(self, fd: int, dev_fd: int, sockstat_fds: tuple[int, ...]) -> None:
        self.fd, self.dev_fd, self.sockstat_fds = fd, dev_fd, sockstat_fds

    def close(self) -> None:
        for fd in (self.fd, self.dev_fd, *self.sockstat_fds):
            os.close(fd)

    def lo_counters(self) -> bytes:
        """``lo``'s line of ``/proc/net/dev`` (byte and packet counters both ways)."""
        os.lseek(self.dev_fd, 0, os.SEEK_SET)
        text = os.read(self.dev_fd, 65536)
        for line in text.splitlines():
            if line.strip().startswith(b"lo:"):
                return line
        return b""

    def sockets_in_use(self) -> int:
        """Sockets of this namespace still open (``inuse`` of every protocol in
        ``sockstat``/``sockstat6``; TCP's ``tw`` too)."""
        n = 0
        for fd in self.sockstat_fds:
            os.lseek(fd, 0, os.SEEK_SET)
            for line in os.read(fd, 65536).decode().splitlines():
                words = line.split()
                for key in ("inuse", "tw"):
                    if key in words:
                        n += int(words[words.index(key) + 1])
        return n


class NetnsPool:
    """Idle empty network namespaces; see the module docstring. Thread-safe."""

    def __init__(self, libc, home_fd: int) -> None:
        self._libc = libc
        self._home = home_fd  # the process's own namespace, where threads return to
        self._idle: list[_Namespace] = []
        self._lock = threading.Lock()
        self.created = 0  # namespaces made so far (for tests and benchmarks)

    @classmethod
    def create(cls) -> NetnsPool | None:
        """A pool, after making one namespace to prove it works; ``None`` if this process
        cannot make network namespaces (EPERM and the like)."""
        try:
            libc = _libc()
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        pool = cls(libc, home)
        try:
            pool._idle.append(pool._make())
        except OSError:
            os.close(home)
            return None
        return pool

    def _setns(self, fd: int) -> None:
        if self._libc.setns(fd, CLONE_NEWNET) != 0:
            err = _errno()
            raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")

    def _make(self) -> _Namespace:
        """Make a namespace with ``lo`` up, on the calling thread, and come back."""
        if self._libc.unshare(CLONE_NEWNET) != 0:
            err = _errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        fds: list[int] = []
        try:
            for p in ("ns/net", "net/dev", "net/sockstat", "net/sockstat6"):
                fds.append(os.open("/proc/thread-self/" + p, os.O_RDONLY | os.O_CLOEXEC))
            import fcntl
            import socket

            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                flags = _IFREQ.unpack(fcntl.ioctl(s, _SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0)))[1]
                fcntl.ioctl(s, _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        finally:
            self._setns(self._home)
        self.created += 1
        return _Namespace(fds[0], fds[1], (fds[2], fds[3]))

    @contextmanager
    def lease(self) -> Iterator[Lease]:
        """Hold an empty namespace of its own for one sandbox for the ``with`` block (from
        before it is forked until nothing of it is left running); fork it inside
        ``Lease.entered()``. See the module's invariants."""
        with self._lock:
            ns = self._idle.pop() if self._idle else None
        if ns is None:
            ns = self._make()
        before = ns.lo_counters()
        clean = False
        try:
            yield Lease(self, ns)
            clean = ns.lo_counters() == before and ns.sockets_in_use() == 0
        finally:
            if clean:
                with self._lock:
                    self._idle.append(ns)
            else:
                ns.close()

    def close(self) -> None:
        """Drop the idle namespaces (leased ones are dropped when their lease ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for ns in idle:
            ns.close()


class Lease:
    """One sandbox's hold on a namespace (from ``NetnsPool.lease``)."""

    __slots__ = ("_pool", "_ns")

    def __init__(self, pool: NetnsPool, ns: _Namespace) -> None:
        self._pool, self._ns = pool, ns

    @contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread is inside the namespace for the ``with`` block (fork the
        sandbox there) and back in its own afterwards, also if the block raises."""
        self._pool._setns(self._ns.fd)
        try:
            yield
        finally:
            self._pool._setns(self._pool._home)
