"""A seccomp-BPF filter that stops builds from creating setuid/setgid files and from
creating user namespaces.

Why setuid: when kiln runs as root, the sandbox's uid 1000 is mapped to host uid 0, so a file a
build marks setuid in its output directory would be a setuid-root binary on the host
until the store ingests (and canonicalises) it. Nix's sandbox blocks the same calls.

What: on x86_64 (native, i386 compat, x32) and aarch64, these fail with EPERM when the
mode argument has S_ISUID or S_ISGID set: chmod, fchmod, fchmodat, fchmodat2, creat,
mknod, mknodat, and open/openat when O_CREAT or O_TMPFILE is set. ``openat2`` (mode in a
struct the filter cannot read) fails with ENOSYS, which callers treat as "use openat".
x32 syscalls are refused (ENOSYS) rather than audited twice. Everything else, and
every other architecture, is allowed.

Why user namespaces: a nested user namespace would give the build capabilities over
mounts of its own (and is kernel attack surface a build never needs). Flatpak's rule:
``unshare`` and ``clone`` fail with EPERM when their flags argument has CLONE_NEWUSER,
and ``clone3`` (flags in a struct the filter cannot read) fails with ENOSYS, which
glibc and musl treat as "use clone". bwrap's ``--disable-userns`` does the same with a
second user namespace, which costs about a millisecond per sandbox. (mkdir ignores S_ISGID in its mode argument, and
a setgid parent directory cannot be made, so mkdir needs no rule.)

Why the kernel keyrings and io_uring (``add_key``, ``request_key``, ``keyctl``,
``io_uring_setup``, ``io_uring_enter``, ``io_uring_register`` fail with ENOSYS, as in
Docker's and Flatpak's default profiles): bwrap does not replace the session keyring, and
keys are reached by possession, not uid, so a build could read the secrets of the login
session that runs kiln (Kerberos tickets, fscrypt keys) and leave keys for later builds
to read, an impure channel between builds. io_uring submits file operations the filter
never sees (an ``openat`` with a setuid mode through a ring would pass), and builds do not
need it.

Format: the raw ``struct sock_filter`` array bwrap's ``--seccomp FD`` expects (bwrap sets
no_new_privs and installs it just before exec).
"""

from __future__ import annotations

import errno
import struct
from functools import cache

# BPF opcodes (linux/bpf_common.h, linux/filter.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20
_JEQ_K = 0x05 | 0x10
_JGE_K = 0x05 | 0x30
_JSET_K = 0x05 | 0x40
_RET_K = 0x06
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
# struct seccomp_data offsets; the low 32 bits of a u64 argument come first (little endian)
_NR, _ARCH = 0, 4


def _arg(i: int) -> int:
    return 16 + 8 * i


_AUDIT_ARCH_X86_64 = 0xC000003E
_AUDIT_ARCH_I386 = 0x40000003
_AUDIT_ARCH_AARCH64 = 0xC00000B7
_X32_BIT = 0x40000000
_SUID_SGID = 0o6000
_CLONE_NEWUSER = 0x10000000
_O_CREAT_OR_TMPFILE = 0o100 | 0o20000000  # same values on x86 and aarch64

# (syscall nr, index of the mode argument, index of the flags argument or None)
_Rule = tuple[int, int, int | None]
_OPENAT2 = 437
_CLONE3 = 435  # same number on every architecture here
#: (syscall nr, index of the flags argument) of calls refused when they ask for CLONE_NEWUSER
_NS_RULES: dict[int, list[tuple[int, int]]] = {
    _AUDIT_ARCH_X86_64: [(272, 0), (56, 0)],  # unshare, clone
    _AUDIT_ARCH_I386: [(310, 0), (120, 0)],
    _AUDIT_ARCH_AARCH64: [(97, 0), (220, 0)],
}
#: syscalls refused outright (ENOSYS): the kernel keyrings and io_uring (see above)
_DENY: dict[int, tuple[int, ...]] = {
    _AUDIT_ARCH_X86_64: (248, 249, 250, 425, 426, 427),  # add_key request_key keyctl io_uring_*
    _AUDIT_ARCH_I386: (286, 287, 288, 425, 426, 427),
    _AUDIT_ARCH_AARCH64: (217, 218, 219, 425, 426, 427),
}
_RULES: dict[int, list[_Rule]] = {
    _AUDIT_ARCH_X86_64: [
        (90, 1, None),  # chmod
        (91, 1, None),  # fchmod
        (268, 2, None),  # fchmodat
        (452, 2, None),  # fchmodat2
        (85, 1, None),  # creat
        (133, 1, None),  # mknod
        (259, 2, None),  # mknodat
        (2, 2, 1),  # open
        (257, 3, 2),  # openat
    ],
    _AUDIT_ARCH_I386: [
        (15, 1, None),  # chmod
        (94, 1, None),  # fchmod
        (306, 2, None),  # fchmodat
        (452, 2, None),  # fchmodat2
        (8, 1, None),  # creat
        (14, 1, None),  # mknod
        (297, 2, None),  # mknodat
        (5, 2, 1),  # open
        (295, 3, 2),  # openat
    ],
    _AUDIT_ARCH_AARCH64: [
        (52, 1, None),  # fchmod
        (53, 2, None),  # fchmodat
        (452, 2, None),  # fchmodat2
        (33, 2, None),  # mknodat
        (56, 3, 2),  # openat
    ],
}


class _Asm:
    """Tiny BPF assembler with forward labels for conditional jumps."""

    def __init__(self) -> None:
        self.ins: list[tuple[int, int | str, int | str, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.ins)

    def op(self, code: int, k: int, jt: int | str = 0, jf: int | str = 0) -> None:
        self.ins.append((code, jt, jf, k))

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, (code, jt, jf, k) in enumerate(self.ins):
            t = self.labels[jt] - pc - 1 if isinstance(jt, str) else jt
            f = self.labels[jf] - pc - 1 if isinstance(jf, str) else jf
            assert 0 <= t < 256 and 0 <= f < 256, "jump out of range"
            out += struct.pack("=HBBI", code, t, f, k)
        return bytes(out)


@cache
def build_filter() -> bytes:
    """The compiled filter (see module docstring); ``len // 8`` instructions."""
    a = _Asm()
    a.op(_LD_W_ABS, _ARCH)
    for arch in _RULES:
        a.op(_JEQ_K, arch, f"arch{arch}", 0)
    a.op(_RET_K, _ALLOW)  # an architecture we have no table for
    for arch, rules in _RULES.items():
        a.label(f"arch{arch}")
        a.op(_LD_W_ABS, _NR)
        if arch == _AUDIT_ARCH_X86_64:
            a.op(_JGE_K, _X32_BIT, "enosys", 0)
        a.op(_JEQ_K, _OPENAT2, "enosys", 0)
        a.op(_JEQ_K, _CLONE3, "enosys", 0)
        for nr in _DENY[arch]:
            a.op(_JEQ_K, nr, "enosys", 0)
        for nr, flags_arg in _NS_RULES[arch]:
            a.op(_JEQ_K, nr, f"ns{flags_arg}", 0)
        for nr, mode, flags in rules:
            target = f"mode{mode}" if flags is None else f"flags{flags}mode{mode}"
            a.op(_JEQ_K, nr, target, 0)
        a.op(_RET_K, _ALLOW)
    for flags, mode in sorted({(f, m) for rules in _RULES.values() for _, m, f in rules if f is not None}):
        a.label(f"flags{flags}mode{mode}")
        a.op(_LD_W_ABS, _arg(flags))
        a.op(_JSET_K, _O_CREAT_OR_TMPFILE, f"mode{mode}", "allow")
    for mode in sorted({m for rules in _RULES.values() for _, m, _ in rules}):
        a.label(f"mode{mode}")
        a.op(_LD_W_ABS, _arg(mode))
        a.op(_JSET_K, _SUID_SGID, "eperm", "allow")
    for flags_arg in sorted({f for rules in _NS_RULES.values() for _, f in rules}):
        a.label(f"ns{flags_arg}")
        a.op(_LD_W_ABS, _arg(flags_arg))
        a.op(_JSET_K, _CLONE_NEWUSER, "eperm", "allow")
    a.label("allow")
    a.op(_RET_K, _ALLOW)
    a.label("eperm")
    a.op(_RET_K, _ERRNO | errno.EPERM)
    a.label("enosys")
    a.op(_RET_K, _ERRNO | errno.ENOSYS)
    return a.assemble()
