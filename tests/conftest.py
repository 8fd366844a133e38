"""Shared by every test directory: ``tests/`` on ``sys.path`` for ``import clikit``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
