"""Build logs, kept zstd-compressed under ``<root>/logs/<drv base name>.zst``.

Written once per build (temp file + rename, so a reader never sees half a log); the
latest build of a derivation wins. A check or rebuild saves under its own name
(``buildproduce.check_log_key``), so the log of the build behind the registered output
is never replaced by a later comparison's. ``read`` accepts the ``.drv`` path or any of its
outputs' paths when the caller resolves them (see ``LocalStore.query``'s deriver).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import zstandard

from .errors import StoreError


class LogStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _file(self, drv_path: str) -> Path:
        return self.dir / (drv_path.rsplit("/", 1)[-1] + ".zst")

    def save(self, drv_path: str, log_file: Path) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        dest = self._file(drv_path)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        with (
            open(log_file, "rb") as src,
            open(tmp, "wb") as out,
            zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as w,
        ):
            shutil.copyfileobj(src, w, 1 << 20)
        os.replace(tmp, dest)
        return dest

    def open(self, drv_path: str) -> zstandard.ZstdDecompressionReader:
        """A binary stream of the decompressed log."""
        f = self._file(drv_path)
        if not f.exists():
            raise StoreError(f"no build log for {drv_path}")
        return zstandard.ZstdDecompressor().stream_reader(open(f, "rb"), closefd=True)
