"""Start one sandbox build and SIGKILL ourselves at a chosen step (for test_kiln_killed.py).

Usage: python3 die_at.py POINT BUILD_DIR
POINT: after-start (bwrap started), info-read (before the init is held), before-write
(the init held, the seccomp filter not yet written). The build writes BUILD_DIR/started
once it runs, then sleeps.
"""

import io
import os
import signal
import sys

from kiln.sandbox import BwrapExecutor, SandboxSpec, bwrap, bwrapstart

point, build_dir = sys.argv[1], sys.argv[2]


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


real_start, real_adopt = bwrapstart.start, bwrapstart.Bwrap.adopt_init


def start(*a, **k):
    proc = real_start(*a, **k)
    if point == "after-start":
        die()
    return proc


def adopt_init(self, pid, ns):
    if point == "info-read":
        die()
    real_adopt(self, pid, ns)
    if point == "before-write":
        die()


bwrapstart.start = start
bwrapstart.Bwrap.adopt_init = adopt_init
ex = BwrapExecutor()
spec = SandboxSpec(
    argv=("/bin/sh", "-c", f"echo > /build/started; exec sleep 1000  # {build_dir}"),
    build_dir=build_dir,
    rootfs="/",
    env={"PATH": "/bin:/usr/bin"},
)
ex.run(spec, io.BytesIO())
print("not killed", bwrap.__name__)
