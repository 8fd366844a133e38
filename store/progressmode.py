"""Whether kiln draws progress lines: the one rule every meter follows.

A progress line redraws itself with ``\\r`` and ``ESC[K``, which only a terminal that
understands them shows well: a CI log keeps every redraw. So a meter draws only when
its stream (stderr) is a terminal, ``TERM`` is not ``dumb``, and ``KILN_PROGRESS`` is not
``0``; ``KILN_PROGRESS=1`` asks for it on any terminal, ``TERM=dumb`` included (never on a
pipe or file). Reads the environment at each call: cheap, and a test can change it.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO


def wants_progress(stream: TextIO | None = None) -> bool:
    """True if a progress meter may draw on ``stream`` (default: ``sys.stderr``)."""
    stream = sys.stderr if stream is None else stream
    try:
        if stream is None or not stream.isatty():
            return False
    except (AttributeError, ValueError, OSError):  # closed, or not a real stream
        return False
    wanted = os.environ.get("KILN_PROGRESS", "")
    if wanted == "0":
        return False
    return wanted == "1" or os.environ.get("TERM", "") != "dumb"
