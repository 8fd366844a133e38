"""A registry directory made under a umask of 000: its private ``.kiln/`` (token hashes,
locks, temp files that become published objects) and the published directories came
out world-writable, so another local user could plant or swap what it serves. Every
directory kiln makes there now has an explicit mode (``kiln.store.perms``)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kiln.registry.dirlock import INDEX_LOCK, dir_lock
from kiln.registry.storage import FileStorage


def test_a_registry_made_under_umask_000_is_not_writable_by_others(tmp_path):
    root = tmp_path / "reg"
    old = os.umask(0)
    try:
        st = FileStorage(root)
        st.put_bytes("nar/abc.nar.zst", b"nar")
        st.put_bytes(".kiln/nars/abc", b"record")  # a directory made on the way (``_place``)
        with dir_lock(st, INDEX_LOCK):
            pass
    finally:
        os.umask(old)
    open_to_others = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath, name)
            if os.lstat(p).st_mode & 0o022:
                open_to_others.append(f"{oct(stat.S_IMODE(os.lstat(p).st_mode))} {p.relative_to(root)}")
    assert open_to_others == [] and not os.stat(root).st_mode & 0o022
    assert stat.S_IMODE(os.stat(root / ".kiln").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(root / "nar" / "abc.nar.zst").st_mode) == 0o644  # (served)
