"""A process holding a secret key writes no core dump: a crash would hand the key, in its
memory, to the host's core_pattern handler (systemd-coredump keeps dumps on disk). kiln
sets its soft RLIMIT_CORE to 0 once it has loaded one (``keyfiles.load_secret_key``,
which ``kiln serve --sign-key/--index-key`` uses too: it runs for days with the key in
memory)."""

from __future__ import annotations

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
