"""``Sink``: where a download's bytes go, for a download that may have to start over.

``Client.download(key, write)`` hands the body to ``write(chunk)``, each byte once and in
order. An HTTP download cut mid-body is resumed where the server can continue the same
object, and otherwise started over (``httpdownload``); starting over needs the caller to
discard what it took: a ``Sink`` is a ``write`` that can (``restart``), and is still a
plain callable to every client and wrapper that only streams (``dirclient``,
``indexcheck``). A plain function as ``write`` gets resumption only.

No aiohttp here: local-only commands import the callers without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sink:
    """``write(chunk)`` takes the next bytes of the body; ``restart()`` discards all
    taken so far (files truncated, digests and counters reset): the next ``write`` is
    byte 0 again."""

    write: Callable[[bytes], Any]
    restart: Callable[[], Any]

    def __call__(self, chunk: bytes) -> Any:
        return self.write(chunk)
