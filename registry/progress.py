"""A minimal progress line for terminals (stderr); silent unless ``wants_progress``
(stderr a terminal, not ``TERM=dumb`` nor ``KILN_PROGRESS=0``).

Redraws at most 10 times a second so it never costs measurable time."""

from __future__ import annotations

import sys
import time

from kiln.store.progressmode import wants_progress


class Progress:
    def __init__(
        self, label: str, total_items: int, total_bytes: int = 0, enabled: bool | None = None
    ) -> None:
        self.label, self.total_items, self.total_bytes = label, total_items, total_bytes
        self.items = self.bytes = 0
        self.enabled = wants_progress() if enabled is None else enabled
        self._last = 0.0
        self._t0 = time.monotonic()

    def add(self, items: int = 0, nbytes: int = 0) -> None:
        self.items += items
        self.bytes += nbytes
        if self.enabled:
            now = time.monotonic()
            if now - self._last >= 0.1:
                self._last = now
                self._draw()

    def _draw(self) -> None:
        rate = self.bytes / max(time.monotonic() - self._t0, 1e-6) / 2**20
        tb = f"/{self.total_bytes / 2**20:.1f}" if self.total_bytes else ""
        sys.stderr.write(
            f"\r{self.label}: {self.items}/{self.total_items} paths, {self.bytes / 2**20:.1f}{tb} MiB, {rate:.1f} MiB/s\x1b[K"
        )
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()
