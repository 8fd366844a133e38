"""``kiln registry verify --dir DIR``: check every byte a registry directory serves.

Clients verify what they download, so a corrupt blob on a registry or mirror is never
*used*; but nobody notices it either until a substituter falls back to building, and a
mirror sync does not re-read blobs of paths whose narinfo is unchanged (that is what
keeps it cheap). This is the operator's check, like ``kiln store verify`` for a store.

For every published narinfo (``<hash>.narinfo``): it must parse for this registry's
StoreDir and name its own hash part (and, with ``trusted`` keys, carry ``sigs_needed``
valid signatures); its compressed NAR (``blobs/sha256:<hex>`` and/or
``nar/<nix32>.nar.zst``, the URL: without it a static server answers 404, a problem
reported but not deleted; at least one must exist) must hash to FileHash at FileSize and
decompress to NarHash at NarSize, reading no further than the largest sizes claimed.
An object is read once however many narinfos name it (``blobs/`` and ``nar/`` are hard
links when kiln wrote them) and its digests are compared with *each* narinfo's claims.
Hashing runs ``jobs`` objects at a time (hashlib and zstd release the GIL); Ctrl-C
drops the queued ones.

Its ``CA:`` (unsigned) must be true of the object (``admitca.refusal``, the judge
``kiln store verify`` uses): a false one is a content problem of the narinfo, which Nix
clients would refuse ("ca hash mismatch").

``delete_bad`` unpublishes what is wrong in *content*: the narinfo (so clients get a
miss, not a corrupt download) and the object when no narinfo describes its bytes (a
false ``CA:`` is the narinfo's fault: its object stays). The
next ``kiln mirror sync`` (or ``kiln push``) then fetches both again, verified. What it
deletes is what it judged: the deletions run holding ``dirlock.MIRROR_LOCK`` and
``NARINFO_LOCK`` (a mirror sync into the directory, or a signature merge, finishes
first), and a narinfo whose bytes, or an object whose file (device, inode, size, mtime,
ctime), changed since it was read is not deleted but reported ("replaced while being
checked"): a sync or push that put the good file there meanwhile is never undone. A
narinfo judged bad only by such an object is spared with it. (An upload through a
server does not take those locks; the window left is between that last comparison and
the unlink.)
Policy problems (missing trusted signatures, a compression other than zstd) are
reported, never deleted: a mistyped ``--trusted-key`` must not empty a registry.

Object files no narinfo names (``unnamedobjects``: a push killed between an object and
its narinfo, a narinfo refused after its object was stored) are counted with their
bytes, not problems: nothing serves them as a path. ``delete_unnamed`` removes those
written over an hour ago, after the check (and ``delete_bad``), holding ``MIRROR_LOCK``
and ``NARINFO_LOCK``, with the narinfos read again under them (``unnamedobjects.sweep``,
step 4 of ``kiln mirror sync --prune``).

``delete_bad`` may run while ``kiln serve`` serves the directory. What a server keeps
in memory about narinfos and objects is checked against the files on every use, so a
deletion is seen by the next request: a cached narinfo body by one ``stat`` of its file
(``backends.DirSource.narinfo``: a deleted one is a miss, in the fast path too); an
object is looked up on disk for every request (``object_file``: a deleted one is a 404,
and an upload of it is accepted again); the digests remembered for an object are used
only while a file of their size is there (``object_digests``), and so are the verdicts
on which files may be served immutable (``objtrust``: by file stamp); the NAR-hash map
answers through the narinfo lookup, so a deleted path is a miss there too (another path
with the same NAR is then found by NAR hash only after the map's next refresh, as after
a mirror prune). Misses are never cached by the server. (Until that was so the server held ``SERVING_LOCK`` shared
and a deletion refused to run beside it; the deletion still takes the lock
exclusively, so it refuses only beside a server of an older kiln that holds it, which
may be one that cached narinfos without checking them.) What the server cannot take
back is what HTTP caches already hold: a narinfo for its TTL (an hour), and an object
it served as immutable, which it does only for files it knew to be good (``objtrust``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import os
from dataclasses import dataclass

from kiln.store import narinfo as ni
from kiln.store.errors import KilnError
from kiln.store.hashes import Hash
from kiln.store.narinfo import NarInfo
from kiln.store.perms import make_dir
from kiln.store.signing import PublicKey

from . import layout, unnamedobjects
from .admitca import refusal
from .backends import DirSource
from .dirlock import MIRROR_LOCK, NARINFO_LOCK, dir_lock
from .fsckdelete import Stamp, delete_judged, waiting
from .objstamp import fstamp
from .progress import Progress
from .verify import Digests, NarVerifier, check_narinfo, expect, nar_file_hash

CHUNK = 1 << 20
#: held exclusively by a deleting verify; ``kiln serve --dir`` of older kilns held it
#: shared for their lifetime (module docstring), the current one does not
SERVING_LOCK = ".kiln/serving.lock"


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong with one published path (``path`` is the narinfo key when the
    narinfo does not even parse). ``content``: the bytes are wrong or missing (what
    ``delete_bad`` removes); otherwise a policy matter (signatures, an unsupported
    compression) that is reported only."""

    path: str
    what: str
    content: bool = True


@dataclass(frozen=True, slots=True)
class FsckReport:
    checked: int
    problems: tuple[Problem, ...]
    #: storage keys deleted (``delete_bad``, ``delete_unnamed``)
    removed: tuple[str, ...]
    #: object files no narinfo names, and their bytes (each file once): not problems
    unnamed: int = 0
    unnamed_bytes: int = 0
    #: ``delete_unnamed``: unnamed files kept for being written in the last hour, and why
    #: none was deleted ("" if it looked: ``unnamedobjects.Sweep``)
    unnamed_young: int = 0
    unnamed_kept: str = ""


def hold_serving_lock(src: DirSource, exclusive: bool) -> int | None:
    """Take ``SERVING_LOCK``, shared (an older server) or exclusive (a deleting verify),
    failing at once with a ``KilnError`` if the other side holds it; returns the
    descriptor that holds it (None where the storage is not a local directory)."""
    lock = src.storage.local_path(SERVING_LOCK)
    if lock is None:
        return None
    make_dir(lock.parent, exact=True)  # (0755 whatever the umask)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        if exclusive:
            raise KilnError(
                f"a kiln serve of an older kiln is using {src.storage.url} (it holds {SERVING_LOCK}: "
                "such a server may keep narinfos in memory, and go on serving what --delete-bad "
                "removes); restart it with this kiln (which checks them on every request) or stop it "
                "first, or verify without --delete-bad"
            ) from None
        raise KilnError(
            f"kiln registry verify --delete-bad is running on {src.storage.url}; serve it when that is done"
        ) from None
    return fd


#: what identifies the file read: (device, inode, size, mtime, ctime); None where the
#: storage gives no file descriptor
def _digest(
    src: DirSource, key: str, file_hash: Hash, max_nar: int, max_file: int
) -> tuple[Digests | str, Stamp, bool]:
    """The digests of the object at ``key``, which should be the file ``file_hash`` (reading
    no more than the sizes any of its narinfos claims), or what went wrong reading it; and
    the stamp of the file read (taken after reading it: ``fsckdelete.delete_judged`` deletes the file
    only if it is still that one), and whether it was the same before (``steady``: then a
    good file may be vouched for, ``DirSource.vouch``)."""
    f = src.storage.open(key)
    if f is None:
        return f"{key} vanished while being checked", None, False
    ver = NarVerifier(max_nar_size=max_nar, max_file_size=max_file)
    stamp: Stamp = None
    before: Stamp = None
    try:
        with f:
            before = fstamp(f)
            while chunk := f.read(CHUNK):
                ver.update(chunk)
            stamp = fstamp(f)
        return ver.finish(file_hash), stamp, stamp is not None and stamp == before
    except (KilnError, OSError) as e:
        return f"{key}: {e}", stamp, False


def _same_file(src: DirSource, keys: list[str]) -> list[list[str]]:
    """``keys`` grouped by the file they name (``blobs/`` and ``nar/`` are hard links of
    each other when kiln wrote them: read once)."""
    groups: dict[tuple[int, int] | str, list[str]] = {}
    for k in keys:
        p = src.storage.local_path(k)
        try:
            st = os.stat(p) if p is not None else None
        except OSError:
            st = None
        groups.setdefault((st.st_dev, st.st_ino) if st is not None else k, []).append(k)
    return list(groups.values())


def verify_dir(
    src: DirSource,
    *,
    trusted: list[PublicKey] | None = None,
    sigs_needed: int = 0,
    delete_bad: bool = False,
    jobs: int | None = None,
    progress: bool | None = None,
    delete_unnamed: bool = False,
) -> FsckReport:
    """Check the registry directory behind ``src`` (see the module docstring);
    ``progress``: a progress line on stderr (None: when it is a terminal);
    ``delete_unnamed``: then remove the object files no narinfo names that were written
    over an hour ago (``unnamedobjects.sweep``, step 4 of ``kiln mirror sync --prune``),
    holding ``MIRROR_LOCK`` and ``NARINFO_LOCK``."""
    lock = hold_serving_lock(src, exclusive=True) if delete_bad else None
    try:
        rep = _verify(src, trusted or [], sigs_needed, delete_bad, jobs, progress)
    finally:
        if lock is not None:
            os.close(lock)
    if not delete_unnamed:
        return rep
    with dir_lock(src.storage, MIRROR_LOCK, on_wait=waiting(src)), dir_lock(src.storage, NARINFO_LOCK):
        swept = unnamedobjects.sweep(src.storage)
    return dataclasses.replace(
        rep, removed=rep.removed + swept.deleted, unnamed_young=swept.young, unnamed_kept=swept.kept
    )


def _unnamed(src: DirSource, judged: dict[str, bytes | None]) -> tuple[int, int]:
    """How many object files the narinfos ``judged`` (as read) do not name, and their
    bytes; a narinfo that cannot be read names nothing here (it is a problem already)."""
    named: set[str] = set()
    for key, raw in judged.items():
        with contextlib.suppress(KilnError):
            named |= unnamedobjects.names_of(key, raw or b"")
    files = unnamedobjects.unnamed(src.storage, named)
    return len(files), unnamedobjects.total_bytes(files)


def _verify(
    src: DirSource,
    trusted: list[PublicKey],
    sigs_needed: int,
    delete_bad: bool,
    jobs: int | None,
    progress: bool | None,
) -> FsckReport:
    keys = sorted(k for k in src.storage.list() if k.endswith(".narinfo"))
    problems: dict[str, list[Problem]] = {}  # narinfo key -> problems
    # object file hash -> the narinfos (key, info) that name it
    users: dict[str, list[tuple[str, NarInfo]]] = {}
    judged: dict[str, bytes | None] = {}  # narinfo key -> the bytes judged
    for key in keys:
        hash_part = key[: -len(".narinfo")]
        raw = judged[key] = src.storage.read(key)
        try:
            if raw is None:
                raise KilnError("vanished while being checked")
            text = raw.decode()
            info = ni.parse(text, src.store_dir)
        except (KilnError, UnicodeDecodeError) as e:
            problems.setdefault(key, []).append(Problem(key, f"narinfo: {e}"))
            continue
        try:  # the registry's admission rules: its own hash, zstd, signatures
            # (content_proves: a CA claim is judged against the object below, as clients do)
            check_narinfo(text, src.store_dir, trusted, sigs_needed, hash_part, content_proves=True)
        except KilnError as e:
            # a narinfo under another path's name is wrong content; missing signatures or
            # another compression (a Nix-made xz cache) are policy, reported only
            content = info.path.rsplit("/", 1)[1][:32] != hash_part
            problems.setdefault(key, []).append(Problem(info.path, f"narinfo: {e}", content))
            if content or info.compression != "zstd":
                continue
        assert info.file_hash is not None
        users.setdefault(info.file_hash.hex, []).append((key, info))
    # an incomplete closure: clients that substitute the path cannot (reported, not
    # deleted: the content is fine, the reference is what is missing)
    published = {k[: -len(".narinfo")] for k in keys}
    for named in users.values():
        for key, info in named:
            for r in info.references:
                if r != info.path and r.rsplit("/", 1)[1][:32] not in published:
                    problems.setdefault(key, []).append(
                        Problem(info.path, f"its reference {r} is not published", False)
                    )
    bad_blobs: list[tuple[str, Stamp]] = []  # (key, the file judged)
    # narinfo key -> the objects (key, file judged) whose bytes were its problem
    blamed: dict[str, list[tuple[str, Stamp]]] = {}
    checks: list[tuple[list[str], list[tuple[str, NarInfo]]]] = []
    for named in users.values():
        fh = named[0][1].file_hash
        assert fh is not None
        present = [k for k in (layout.blob_key(fh), layout.nar_key(fh)) if src.storage.exists(k)]
        if not present:
            for key, info in named:
                problems.setdefault(key, []).append(Problem(info.path, f"its compressed NAR {fh} is missing"))
        elif (url := layout.nar_key(fh)) not in present:
            # kiln serve answers the URL from blobs/, but a static server (nginx, a file://
            # copy) and Nix clients fetch the URL itself: a 404 there (reported, not deleted)
            why = (
                f"its URL {url} is missing (only {present[0]} is there: a static server answers "
                f"404); link it again, in the registry directory: ln {present[0]} {url}"
            )
            for key, info in named:
                problems.setdefault(key, []).append(Problem(info.path, why, False))
        checks += [(group, named) for group in _same_file(src, present)]
    bar = Progress("verify", len(checks), enabled=progress)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1)
    try:
        futures = {
            pool.submit(
                _digest,
                src,
                group[0],
                nar_file_hash(named[0][1]),
                max(i.nar_size for _, i in named),
                max(i.file_size or 0 for _, i in named),
            ): (group, named)
            for group, named in checks
        }
        for fut in concurrent.futures.as_completed(futures):
            group, named = futures[fut]
            got, stamp, steady = fut.result()
            bar.add(1, named[0][1].file_size or 0)
            fits = 0
            for key, info in named:
                what = got if isinstance(got, str) else _mismatch(group[0], got, info)
                if what is None:
                    fits += 1  # the bytes are what it says: they are kept even if its CA is false
                    assert not isinstance(got, str)
                    what = refusal(src.storage, info, got).removeprefix("error: ") or None
                if what is not None:
                    problems.setdefault(key, []).append(Problem(info.path, what))
                    blamed.setdefault(key, []).extend((k, stamp) for k in group)
            if not fits:  # no narinfo describes these bytes: they are bad, not the claims
                bad_blobs += [(b, stamp) for b in group]
            elif steady and stamp is not None and not isinstance(got, str):
                # good, and read whole unchanged: the server may promise it immutable
                # (``objtrust``; a record of an older kiln vouches for no file)
                with contextlib.suppress(OSError, KilnError):  # (a directory we may not write)
                    src.vouch(got, group, stamp)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: queued checks are dropped
    bar.done()
    removed: list[str] = []
    if delete_bad:
        doomed = sorted(k for k, ps in problems.items() if any(p.content for p in ps))
        removed, spared = delete_judged(src, doomed, judged, blamed, sorted(bad_blobs))
        for key in spared:  # (a narinfo: the path its problems name; an object: its key)
            shown = problems[key][0].path if problems.get(key) else key
            why = "replaced while being checked: not deleted; verify again"
            problems.setdefault(key, []).append(Problem(shown, why, False))
    out = tuple(p for key in sorted(problems) for p in problems[key])
    count, size = _unnamed(src, {k: v for k, v in judged.items() if k not in removed})
    return FsckReport(len(keys), out, tuple(removed), count, size)


def _mismatch(key: str, got: Digests, info: NarInfo) -> str | None:
    try:
        expect(key, got, info.file_hash, info.file_size, info.nar_hash, info.nar_size)
    except KilnError as e:
        return str(e)
    return None
