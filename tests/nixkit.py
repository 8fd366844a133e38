"""Real Nix for tests: a path added to a throwaway Nix store (``nix-store --store ROOT
--add``), which ``nix copy --from local?root=ROOT`` then takes anywhere."""

from __future__ import annotations

import subprocess
from pathlib import Path


def nix_store_path(root: Path, src: Path, text: str) -> str:
    """Write ``text`` to ``src`` and add it to the Nix store rooted at ``root``; its path."""
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(text)
    r = subprocess.run(["nix-store", "--store", str(root), "--add", str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()
