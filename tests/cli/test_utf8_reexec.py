"""Under a locale that does not decode file names as UTF-8, ``kiln`` re-executes Python in
its UTF-8 mode (``main.utf8_file_names``; tests/lang/test_lang_determinism.py shows why).
The re-executed process is the same command: same pid, standard input still readable
(``--key /dev/stdin``), exit status kept, and named ``kiln`` as the console script was
(``ps``, ``pgrep``, a lock holder's description), not ``python3``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from kiln.store.keyfiles import write_secret_key
from kiln.store.signing import SecretKey

#: file names decode as ASCII here: no UTF-8 mode, no locale coercion
ASCII_NAMES = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


def _script(tmp_path: Path) -> Path:
    """A console script as pip writes one (the kernel names the process after it)."""
    s = tmp_path / "bin" / "kiln"
    s.parent.mkdir()
    s.write_text(f"#!{sys.executable}\nimport sys\nfrom kiln.main import cli\nsys.exit(cli())\n")
    s.chmod(0o755)
    return s


def test_the_reexecuted_kiln_is_the_same_command(tmp_path: Path) -> None:
    kiln = _script(tmp_path)
    env = {**os.environ, **ASCII_NAMES}
    sk = SecretKey.generate("k-1")
    key = tmp_path / "k.sec"
    write_secret_key(key, sk)
    p = subprocess.Popen(
        [str(kiln), "key", "public", "/dev/stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # reading standard input, after the re-exec: the same pid, named kiln
            cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")
            if b"utf8" in cmdline or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert cmdline[1:3] == [b"-X", b"utf8"], cmdline
        comm = ""
        while comm != "kiln" and time.monotonic() < deadline:  # (set as the re-executed kiln starts)
            time.sleep(0.05)
            comm = Path(f"/proc/{p.pid}/comm").read_text().strip()
        assert comm == "kiln"
        out, err = p.communicate(key.read_bytes(), timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert out.decode().strip() == sk.public().to_text()
    r = subprocess.run([str(kiln), "build", "--vary", "x.recipe"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "--vary goes with --check" in r.stderr, r.stderr
