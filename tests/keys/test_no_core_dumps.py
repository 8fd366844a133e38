"""A process holding a secret key writes no core dump: a crash would hand the key, in its
memory, to the host's core_pattern handler (systemd-coredump keeps dumps on disk). kiln
sets its soft RLIMIT_CORE to 0 once it has loaded one (``keyfiles.load_secret_key``,
which ``kiln serve --sign-key/--index-key`` uses too: it runs for days with the key in
memory)."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

from kiln.store.keyfiles import write_secret_key
from kiln.store.signing import SecretKey


def test_loading_a_secret_key_turns_core_dumps_off(tmp_path: Path) -> None:
    sk = tmp_path / "k.sec"
    write_secret_key(sk, SecretKey.generate("k"))
    probe = (
        "import resource, sys\n"
        "from kiln.store.keyfiles import load_secret_key\n"
        "resource.setrlimit(resource.RLIMIT_CORE, (1 << 20, resource.RLIM_INFINITY))\n"
        "before = resource.getrlimit(resource.RLIMIT_CORE)[0]\n"
        "load_secret_key(sys.argv[1])\n"
        "print(before, *resource.getrlimit(resource.RLIMIT_CORE))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe, str(sk)], capture_output=True, text=True, check=True)
    before, soft, hard = r.stdout.split()
    assert (int(before), int(soft)) == (1 << 20, 0)
    assert int(hard) != 0  # (the hard limit is left: lowering it would be for good)


#: in a user namespace as uid 1234 (no capabilities, like any unprivileged user): a child
#: loads the key (or not: argv[2] == "-") and the parent, the same user, opens its memory
SAME_USER = """
import ctypes, os, sys, time
from kiln.store.keyfiles import load_secret_key
from kiln.store.lockwait import describe_process
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    if sys.argv[1] != "-":
        load_secret_key(sys.argv[1])
    os.write(w, str(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)).encode())  # PR_GET_DUMPABLE
    time.sleep(60)
    os._exit(0)
dumpable = os.read(r, 10).decode()
try:
    open(f"/proc/{pid}/mem", "rb").close()
    mem = "read"
except OSError as e:
    mem = str(e.errno)
print(os.getuid(), dumpable, mem, describe_process(pid))
os.kill(pid, 9)
"""


def test_a_key_holder_is_not_dumpable_so_its_user_cannot_read_its_memory(tmp_path: Path) -> None:
    """After ``load_secret_key`` the process is non-dumpable: another process of the same
    unprivileged user can no longer open its ``/proc/PID/mem`` (nor attach to it); one that
    never loaded a key stays readable (the control). A lock holder's description still
    names its real user, not the root that now owns its ``/proc/PID``."""
    sk = tmp_path / "k.sec"
    write_secret_key(sk, SecretKey.generate("k"))
    unshare = ["unshare", "--user", "--map-user=1234", "--map-group=1234", sys.executable, "-c", SAME_USER]
    for key, want in ((str(sk), f"0 {errno.EACCES}"), ("-", "1 read")):
        r = subprocess.run([*unshare, key], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        uid, dumpable, mem, described = r.stdout.split(" ", 3)
        assert (uid, f"{dumpable} {mem}") == ("1234", want), r.stdout
        assert "uid 1234" in described, described
