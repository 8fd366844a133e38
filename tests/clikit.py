"""Running the real ``kiln`` command from tests: a fresh ``python -m kiln`` process with
this interpreter (so the checkout under test), output captured as text."""

from __future__ import annotations

import os
import subprocess
import sys


def kiln(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``kiln ARGS...``; ``env`` adds to (does not replace) the environment."""
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
