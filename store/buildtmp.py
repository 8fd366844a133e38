"""Fresh temp directories for builds, made ahead of time.

Each build runs in its own ``<store root>/tmp/build-<random>/`` holding an empty
``build/`` (the sandbox's ``/build``) and an empty ``store/`` (the scratch store dir).
Making them is three mkdirs on the build's critical path, and on ext4 under a busy
journal a mkdir can wait milliseconds; so while one build runs, the bookkeeping thread
makes the next one's (``prepare``). A directory is handed out once (``take``); ready
ones nobody took are removed by ``discard``. GC leaves ``tmp/build-*`` alone (they are
their owner's business; see ``store.gc``).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path


class BuildDirs:
    """Hands out fresh build temp dirs under ``tmp_root`` (thread-safe)."""

    def __init__(self, tmp_root: Path) -> None:
        self.tmp_root = tmp_root
        self._ready: list[Path] = []
        self._lock = threading.Lock()

    def _make(self) -> Path:
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        d = Path(tempfile.mkdtemp(prefix="build-", dir=self.tmp_root))
        (d / "build").mkdir()
        (d / "store").mkdir()
        return d

    def take(self) -> Path:
        """A fresh directory with empty ``build/`` and ``store/``: a prepared one if
        there is one, else made now."""
        with self._lock:
            if self._ready:
                return self._ready.pop()
        return self._make()

    def prepare(self) -> None:
        """Make one directory for a later ``take``."""
        d = self._make()
        with self._lock:
            self._ready.append(d)

    def discard(self) -> None:
        """Remove the prepared directories nobody took."""
        with self._lock:
            ready, self._ready = self._ready, []
        for d in ready:
            shutil.rmtree(d, ignore_errors=True)
