"""What GC deletes beside store paths: build logs, failed builds' kept directories,
evaluation-cache entries and quarantine records (``gc`` plans it under the exclusive GC
lock, after deciding which paths live, and renames what goes into its trash with the
rest).

- **Build logs** (``logs/<drv base>.zst``, and the latest check's or rebuild's
  ``logs/<drv base>.check.zst``: ``buildlogs``) are keyed by derivation, and ``kiln log``
  reaches one through the ``.drv`` path, through an output's recorded deriver, or through
  a GC root naming either. So a derivation's logs stay while, after this collection, its
  ``.drv`` is live, or is the recorded deriver of a live path (the ``.drv`` itself may be
  missing: imported without it), or a GC root or a live process's temp root names it (a
  build in progress temp-roots its derivations, so the log it is about to save is never
  in question). Every other log is of a derivation the store no longer has and no root
  asks for: it goes.
- **Failed build dirs** (``tmp/kiln-failed-<name>-<8 chars>``, ``kiln build -K``:
  ``buildproduce.keep_dir``) go once their modification time (when the failed build's
  entries were moved in) is ``keep_failed_days`` days old (0: any age), except those a
  running build may still be filling. ``keep_dir`` moves a build's entries into a new
  dir while that build's process holds its ``build-*``/``check-*`` dir (``buildtmp``;
  ``--check --vary``'s under a held ``vary-*``), so a kept dir last changed after such a
  holder started (``/proc/<pid>/stat``, give or take ``START_MARGIN_S``) is left, and
  every one when a holder cannot be identified (``/proc/locks`` names no pid it can
  read: another pid namespace). The kept dirs are listed and stat'ed before the holders
  are looked for: a build that starts in between makes a new dir, never fills one of
  those. A kept dir whose own ``flock`` somebody holds is left as well (a process
  working in one may hold it). One with a directory another user owns is left, with a
  warning (``gcremove.inspect_tree``).
- **Eval-cache entries** (``eval-cache/<40 hex>.eval``: ``lang/cache.py``) go when their
  modification time is ``eval_cache_days`` days old (0: any age): an entry's mtime is
  when it was written or last hit (a hit refreshes it, at most once an hour). A writer's
  temp file (``.tmp-<pid>-*``) never matches; ``storescan.dead_writers_files`` has those.
- **Quarantine records** (``quarantine/<base>-<time>[-<n>]/``, ``verify --repair``) go
  when they can no longer matter (``gcquarantine``: the path is valid and live again, or
  not live at all) and their modification time is ``keep_quarantine_days`` days old (0:
  any age). A record whose edges this collection follows (its path live, without a row)
  stays at any age. One with a directory another user owns is left, with a warning.

A modification time more than a day ahead of the clock (a clock that was wrong when the
entry was written, or ``touch -d`` far ahead) counts as now and is set to now
(``_mtime``): the entry then goes its ``days`` later, never earlier, instead of surviving
until that date (a ``kiln-failed-*`` dir dated five years ahead outlived
``keep_failed_days`` 7 by five years). A dry run sets it too (it only moves a date no
clock has reached).

Only names kiln makes are ever chosen (regular files for logs and entries, real
directories for failed builds and quarantine records); anything else in those
directories is left alone.
Each chosen entry is renamed whole into GC's trash (``gcremove.Trash``): a collection
killed at any point leaves every entry whole, in place or in a trash the next GC adopts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import FormatError
from .gcquarantine import StaleRecord, unneeded
from .gcremove import Sizes, inspect_tree, size, total
from .lockwait import lock_holders
from .paths import StorePath

if TYPE_CHECKING:
    from .gcedges import Edges

#: ``buildproduce.keep_dir``'s ``tempfile.mkdtemp(prefix=f"kiln-failed-{name}-")``
FAILED_DIR = re.compile(r"^kiln-failed-[A-Za-z0-9+\-._?=]+-[a-z0-9_]{8}\Z")
#: ``lang/cache.py``'s ``entry_path``
EVAL_ENTRY = re.compile(r"^[0-9a-f]{40}\.eval\Z")
#: dirs whose holder may be filling a kept dir (``buildtmp``, ``buildcheck``, ``vary``)
_BUILDING_DIR = re.compile(r"^(build|check|vary)-")
#: a process start time read from ``/proc`` is off by up to a second (``btime`` is whole
#: seconds) and moves with a stepped wall clock: a kept dir changed up to this long
#: before a running build started is left too
START_MARGIN_S = 60.0
_DAY_S = 86400.0
#: a modification time further ahead than this counts (and is reset) as now: see ``_mtime``
FUTURE_S = _DAY_S
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class SidePlan:
    """What a collection deletes beside store paths (see the module docstring)."""

    logs: tuple[Path, ...] = ()
    failed_dirs: tuple[Path, ...] = ()
    eval_entries: tuple[Path, ...] = ()
    quarantine: tuple[StaleRecord, ...] = ()
    #: what deleting them all frees
    sizes: Sizes = Sizes()
    #: failed dirs and quarantine records old enough but left, each with why
    kept: tuple[str, ...] = ()

    @property
    def entries(self) -> tuple[Path, ...]:
        return (*self.logs, *self.failed_dirs, *self.eval_entries, *(q.dir for q in self.quarantine))


def plan(
    root: Path,
    store_dir: str,
    live: set[str],
    roots: set[str],
    edges: Edges,
    keep_failed_days: int,
    eval_cache_days: int,
    keep_quarantine_days: int,
    now: float | None = None,
) -> SidePlan:
    """What goes from the store at ``root`` (see the module docstring): ``live`` is what
    this collection keeps, ``roots`` its roots and temp roots (valid or not), ``edges``
    what a live path keeps alive and the quarantine records read with them
    (``gcedges``). Call under the exclusive GC lock."""
    now = time.time() if now is None else now
    failed, kept = failed_dirs(root / "tmp", keep_failed_days, now)  # (first: see the docstring)
    keep = set(live) | set(roots)
    keep.update(q for p in live for q in edges(p) if q.endswith(".drv"))
    logs = stale_logs(root / "logs", store_dir, keep)
    entries = stale_files(root / "eval-cache", EVAL_ENTRY, eval_cache_days, now)
    records = [
        q
        for q in unneeded(edges.records, store_dir, edges.refs.keys(), live)
        if _is_old_dir(q.dir, keep_quarantine_days, now)
    ]
    euid = os.geteuid()
    sizes: list[Sizes] = [size(p) for p in (*logs, *entries)]

    def removable(d: Path) -> bool:  # (counted if so, else kept with why)
        s, why = inspect_tree(d, euid)
        if why is not None:
            kept.append(f"{d}: {why} (for GC to remove it, as root: chown -R {euid} {shlex.quote(str(d))})")
            return False
        sizes.append(s)
        return True

    chosen = [d for d in failed if removable(d)]
    chosen_records = [q for q in records if removable(q.dir)]
    return SidePlan(
        tuple(logs), tuple(chosen), tuple(entries), tuple(chosen_records), total(sizes), tuple(kept)
    )


def log_drv(name: str, store_dir: str) -> str | None:
    """The ``.drv`` path a file in ``logs/`` is the log of (``<drv base>.zst`` or
    ``<drv base>.check.zst``), or None for a name ``buildlogs`` does not make."""
    if not name.endswith(".zst"):
        return None
    base = name[: -len(".zst")]
    base = base.removesuffix(".check") if base.endswith(".drv.check") else base
    if not base.endswith(".drv"):
        return None
    try:
        return str(StorePath.parse_base(base, store_dir))
    except FormatError:
        return None


def stale_logs(logs: Path, store_dir: str, keep: set[str]) -> list[Path]:
    """The log files in ``logs`` of derivations not in ``keep`` (regular files only)."""
    out = []
    for e in _scan(logs):
        drv = log_drv(e.name, store_dir)
        if drv is not None and drv not in keep and e.is_file(follow_symlinks=False):
            out.append(Path(e.path))
    return sorted(out)


def stale_files(d: Path, pattern: re.Pattern, days: int, now: float) -> list[Path]:
    """The regular files in ``d`` named by ``pattern`` not modified for ``days`` days."""
    out = []
    for e in _scan(d):
        if pattern.match(e.name) is None:
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and _old(_mtime(e.path, st.st_mtime, now), days, now):
            out.append(Path(e.path))
    return sorted(out)


def failed_dirs(tmp: Path, days: int, now: float) -> tuple[list[Path], list[str]]:
    """The ``kiln-failed-*`` dirs in ``tmp`` old enough to go and not held (see the
    module docstring), and the old enough ones left because they may be, each with why."""
    aged: list[tuple[Path, float]] = []
    for e in _scan(tmp):
        if FAILED_DIR.match(e.name) is None:
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        mtime = _mtime(e.path, st.st_mtime, now)
        if _old(mtime, days, now):
            aged.append((Path(e.path), mtime))
    if not aged:
        return [], []
    starts = building_since(tmp)  # (after the listing: see the module docstring)
    out: list[Path] = []
    kept: list[str] = []
    for d, mtime in sorted(aged):
        if starts is None:
            kept.append(
                f"{d}: a build is running whose process cannot be identified; it may still be filling it"
            )
        elif busy := [pid for pid, t in starts if t <= mtime + START_MARGIN_S]:
            kept.append(
                f"{d}: process {busy[0]}'s build, running since before it was made, may still be filling it"
            )
        elif _held(d):
            kept.append(f"{d}: another process holds its lock")
        else:
            out.append(d)
    return out, kept


def building_since(tmp: Path) -> list[tuple[int, float]] | None:
    """(pid, start time) of each process holding a ``build-*``/``check-*``/``vary-*`` dir
    in ``tmp``; None if one is held by a process that cannot be identified."""
    out: list[tuple[int, float]] = []
    for e in _scan(tmp):
        if _BUILDING_DIR.match(e.name) is None or not e.is_dir(follow_symlinks=False):
            continue
        try:
            fd = os.open(e.path, _DIR_FLAGS)
        except OSError:
            continue
        try:
            if not _flocked(fd):
                continue  # its owner is gone
            pids = [p for p in lock_holders(fd) if p > 0]
            starts = [(p, process_start(p)) for p in pids]
            if not starts or any(t is None for _, t in starts):
                return None
            out.extend((p, t) for p, t in starts if t is not None)
        finally:
            os.close(fd)
    return out


def process_start(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds, from ``/proc``), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])  # field 22, starttime: clock ticks after boot
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def _held(d: Path) -> bool:
    """Whether another process holds ``d``'s ``flock`` (one that cannot be opened is not)."""
    try:
        fd = os.open(d, _DIR_FLAGS)
    except OSError:
        return False
    try:
        return _flocked(fd)
    finally:
        os.close(fd)


def _flocked(fd: int) -> bool:
    """Whether someone holds an ``flock`` on ``fd``'s file (taken and dropped if not)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _is_old_dir(d: Path, days: int, now: float) -> bool:
    """Whether ``d`` is a real directory (not a link to one) not modified for ``days`` days."""
    try:
        st = os.lstat(d)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and _old(_mtime(d, st.st_mtime, now), days, now)


def _old(mtime: float, days: int, now: float) -> bool:
    return days == 0 or now - mtime >= days * _DAY_S


def _mtime(p: str | Path, mtime: float, now: float) -> float:
    """The modification time to age ``p`` by, given its ``mtime``: ``now`` for one more than
    ``FUTURE_S`` ahead of ``now``, which is then set to ``now`` (so it goes ``days`` later;
    if it cannot be set, each collection counts it as new). Never a time that ages it."""
    if mtime <= now + FUTURE_S:
        return mtime
    # a clock that was years ahead (or ``touch -d 2099``) would keep it until then
    with contextlib.suppress(OSError):  # (e.g. another user's: it is left, aged from now)
        os.utime(p, (now, now), follow_symlinks=False)
    return now


def _scan(d: Path) -> Iterable[os.DirEntry]:
    try:
        with os.scandir(d) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []
