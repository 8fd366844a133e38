"""Cross-process locks on a registry directory: an exclusive ``flock`` on a file under
``.kiln/``, so read-modify-write steps (publishing the signed index, rewriting an
attestation listing, merging a narinfo's signatures) are serialised across every process
that writes the directory: ``kiln serve --workers N``'s workers, and ``kiln registry
...`` commands run beside a server. An ``asyncio.Lock`` or ``threading.Lock`` covers one
process only.

Storages without a local path (object stores) cannot be locked here, and ``dir_lock``
refuses them (``StorageError``) rather than run the step unserialised (two mirror syncs
could then roll the mirror back): such a backend needs a conditional write of its own
(S3's ``If-Match`` on the ETag) before it can take these steps (docs/registry.md,
"Storage backends").
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator

from kiln.store.perms import make_dir

from .storage import Storage, StorageError

#: the signed index (publish-index, root rotation)
INDEX_LOCK = ".kiln/index.lock"
#: narinfo signature merges
NARINFO_LOCK = ".kiln/narinfo.lock"
#: a whole ``kiln mirror sync`` into the directory
MIRROR_LOCK = ".kiln/mirror.lock"


@contextlib.contextmanager
def dir_lock(storage: Storage, key: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock named ``key`` in ``storage`` (blocking) for the block;
    ``on_wait()`` is called first if another process holds it."""
    path = storage.local_path(key)
    if path is None:
        raise StorageError(
            f"{storage.url} cannot be locked for {key} (no local file system): this step needs a "
            "backend with a conditional write, which kiln does not have yet"
        )
    make_dir(path.parent, exact=True)  # (0755 whatever the umask: ``.kiln/`` is not for others to write)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (closing releases the lock)
