"""``fetch_git``: the tree of one git revision, exported without ``.git``.

Theory of operation
-------------------
A throw-away bare repository is created next to ``dest`` and the wanted revision is
fetched into it with pygit2 (libgit2): first by asking for the object id directly (servers
that allow reachable-SHA wants, and local repositories, answer that; shallow when the
transport supports it), else by fetching every branch and tag and resolving ``rev`` there
(so ``rev`` may also be a tag or branch name, though recipes should pin a commit id).

The fetch runs in a child process (``python -m kiln.store.fetchgit``), because libgit2
cannot be interrupted from another thread and a remote may stall at any step (ref
advertisement, negotiation, pack). In the child, libgit2's connect and read timeouts are
``KILN_FETCH_TIMEOUT`` (they default to none at all) and a transfer callback stops a pack
larger than ``MAX_FETCH_BYTES``. The parent reads the child's progress reports and kills
it when the fetch breaks the stall rule: while objects are still being received, the
fetch may last ``fetchhttp.PACE_GRACE`` s plus 1 s per ``fetchhttp.PACE_MIN_RATE`` bytes received
(the HTTP fetcher's pace rule, over the whole fetch); once the pack is in, indexing must
report progress at least every ``PACE_GRACE`` s. The error names the URL.

The tree is then written out by walking git objects (``kiln.store.gitexport``, which
states the rules and the limits of the export: a few KB of repository can describe
billions of files). Each limit has an environment variable to raise it for a real
repository that needs it (``KILN_GIT_MAX_ENTRIES``, ``KILN_GIT_MAX_BYTES``,
``KILN_GIT_MAX_BLOB``, ``KILN_GIT_MAX_DEPTH``, ``KILN_GIT_MAX_FETCH``).

Whatever the remote said reaches messages escaped (``fetchtext.shown``). A URL with a
password (or a user name, except an ``ssh://`` one, where it names an account) or a
token in its query is refused before the child is started with it on its command line
(``fetchtext.refuse_credentials``): kiln sends no credentials, and the URL would be
echoed in errors.

The export goes to a temporary directory beside ``dest`` and is renamed into place, so
``dest`` either holds the whole tree or does not exist. The caller NAR-hashes ``dest``.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .envnumber import whole_number
from .errors import KilnError
from .fetchtext import refuse_credentials, shown

if TYPE_CHECKING:
    import pygit2
    from pygit2.remotes import TransferProgress

#: the most entries (files, directories, links) one export may create
MAX_EXPORT_ENTRIES = 1_000_000
#: the most bytes (file contents and link targets) one export may write
MAX_EXPORT_BYTES = 4 << 30
#: the deepest directory nesting (the NAR hash and tree removal recurse per level)
MAX_EXPORT_DEPTH = 256
#: the largest single blob (held in memory once while it is written)
MAX_BLOB_BYTES = 1 << 30
#: the most bytes one fetch may receive from the remote
MAX_FETCH_BYTES = 8 << 30

_LIMIT_ENV = {
    "MAX_EXPORT_ENTRIES": "KILN_GIT_MAX_ENTRIES",
    "MAX_EXPORT_BYTES": "KILN_GIT_MAX_BYTES",
    "MAX_EXPORT_DEPTH": "KILN_GIT_MAX_DEPTH",
    "MAX_BLOB_BYTES": "KILN_GIT_MAX_BLOB",
    "MAX_FETCH_BYTES": "KILN_GIT_MAX_FETCH",
}


class GitFetchError(KilnError):
    """The repository or revision could not be fetched, or its tree was refused."""


def limit(name: str) -> int:
    """The limit ``name`` (a module constant's name), raised by its environment variable."""
    return whole_number(_LIMIT_ENV[name], int(globals()[name]), GitFetchError)


# --- fetching (in the child) -----------------------------------------------------------


def _callbacks(max_bytes: int, report: Callable[[TransferProgress], None]) -> pygit2.RemoteCallbacks:
    """pygit2 callbacks: report transfer progress, stop a pack over ``max_bytes``."""
    import pygit2

    class Callbacks(pygit2.RemoteCallbacks):
        def transfer_progress(self, stats: TransferProgress) -> None:
            report(stats)
            if stats.received_bytes > max_bytes:
                raise GitFetchError(
                    f"the remote sent more than {max_bytes} bytes (KILN_GIT_MAX_FETCH raises the limit)"
                )

    return Callbacks()


def _fetch_into(
    repo: pygit2.Repository, url: str, rev: str, callbacks: pygit2.RemoteCallbacks | None = None
) -> pygit2.Commit:
    """Fetch ``rev`` from ``url`` into ``repo`` and return the commit."""
    import pygit2

    remote = repo.remotes.create_anonymous(url)
    errors: list[str] = []
    if re.fullmatch(r"[0-9a-fA-F]{40}", rev):
        local = "://" not in url
        for depth in (0,) if local else (1, 0):
            try:
                remote.fetch([f"+{rev}:refs/kiln/want"], depth=depth, callbacks=callbacks)
                if (found := repo.get(rev)) is not None:
                    return found.peel(pygit2.Commit)
                errors.append(f"the fetch did not bring {rev}")
            except (pygit2.GitError, KeyError, ValueError) as e:
                if "timed out" in str(e):  # the remote stalls: asking again will not help
                    raise GitFetchError(f"cannot fetch {url}: {e}") from None
                errors.append(str(e))
    try:
        remote.fetch(["+refs/heads/*:refs/kiln/heads/*", "+refs/tags/*:refs/tags/*"], callbacks=callbacks)
    except pygit2.GitError as e:
        raise GitFetchError(f"cannot fetch {url}: {e}") from None
    for candidate in (rev, f"refs/tags/{rev}", f"refs/kiln/heads/{rev}"):
        try:
            return repo.revparse_single(candidate).peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError):
            continue
    raise GitFetchError(f"revision {rev!r} not found in {url}" + (f" ({errors[-1]})" if errors else ""))


def _child(repo_path: str, url: str, rev: str, timeout: float, max_bytes: int) -> int:
    """The child's side: fetch, print ``progress``/``ok``/``error`` lines on stdout."""
    import pygit2
    from pygit2.enums import Option

    ms = max(1, int(timeout * 1000))
    pygit2.option(Option.SET_SERVER_CONNECT_TIMEOUT, ms)
    pygit2.option(Option.SET_SERVER_TIMEOUT, ms)
    last = [0.0]

    def report(stats: TransferProgress) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.1 or stats.indexed_objects == stats.total_objects:
            last[0] = now
            print(
                f"progress {stats.received_bytes} {stats.received_objects} {stats.total_objects} "
                f"{stats.indexed_objects + stats.indexed_deltas}",
                flush=True,
            )

    try:
        commit = _fetch_into(pygit2.Repository(repo_path), url, rev, _callbacks(max_bytes, report))
    except GitFetchError as e:
        print("error " + str(e).replace("\n", " "), flush=True)
        return 1
    print(f"ok {commit.id}", flush=True)
    return 0


# --- fetching (the parent's watch) -----------------------------------------------------


class _Watch:
    """The stall rule over one child's progress reports (see the module docstring)."""

    def __init__(self, url: str, network: bool) -> None:
        from . import fetchhttp

        self.url = url
        self.network = network
        self.grace, self.rate = fetchhttp.PACE_GRACE, fetchhttp.PACE_MIN_RATE
        self.start = self.changed = time.monotonic()
        self.received = 0
        self.receiving = True
        self.state: tuple[int, ...] = ()

    def update(self, fields: list[int]) -> None:
        received, got_objects, total_objects, indexed = fields
        if (received, got_objects, indexed) != self.state:
            self.state = (received, got_objects, indexed)
            self.changed = time.monotonic()
        self.received = received
        self.receiving = total_objects == 0 or got_objects < total_objects

    def deadline(self) -> float:
        if self.network and self.receiving:
            return self.start + self.grace + self.received / self.rate
        return self.changed + self.grace

    def error(self) -> GitFetchError:
        took = time.monotonic() - self.start
        if self.network and self.receiving:
            why = (
                f"too slow: {self.received} bytes in {took:.0f} s (at least {self.rate} bytes/s "
                f"is expected after {self.grace:g} s)"
            )
        else:
            why = f"no progress for {self.grace:g} s"
        return GitFetchError(f"cannot fetch {self.url}: {why}; gave up")


def _fetch_in_child(repo_path: Path, url: str, rev: str) -> str:
    """Run ``_child`` for ``url`` in a new process under the stall rule; returns the
    commit id. Raises ``GitFetchError`` naming the URL on any failure."""
    from .fetch import FetchError, fetch_timeout

    try:
        timeout = fetch_timeout()
    except FetchError as e:
        raise GitFetchError(str(e)) from None
    args = [str(repo_path), url, rev, str(timeout), str(limit("MAX_FETCH_BYTES"))]
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln.store.fetchgit", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    other: list[str] = []  # anything else the child said (a traceback), kept short
    try:  # (at once: a SIGTERM landing before it left the child fetching into a removed dir)
        out = proc.stdout
        assert out is not None  # (stdout=PIPE)
        watch = _Watch(url, network="://" in url and not url.startswith("file:"))
        buf = b""
        while True:
            wait = watch.deadline() - time.monotonic()
            if wait <= 0:
                raise watch.error()
            ready, _, _ = select.select([out], [], [], wait)
            if not ready:
                continue
            data = os.read(out.fileno(), 65536)
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                kind, _, rest = line.partition(" ")
                if kind == "progress":
                    watch.update([int(x) for x in rest.split()])
                elif kind == "ok":
                    return rest.strip()
                elif kind == "error":
                    raise GitFetchError(shown(rest))  # libgit2's words, with the remote's in them
                else:
                    other = [*other[-19:], shown(line[:500])]
            buf = buf[-65536:]  # a line without an end is not ours: do not let it grow
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    raise GitFetchError(
        f"cannot fetch {url}: the git fetch process ended with status {proc.returncode}"
        + (":\n" + "\n".join(other[-5:]) if other else "")
    )


def fetch_git(url: str, rev: str, dest: Path) -> None:
    """Write the tree of commit ``rev`` of ``url`` to ``dest`` (which must not exist).
    Raises ``GitFetchError`` (leaving nothing at ``dest``) if the fetch fails or stalls,
    or the tree breaks a limit or cannot be written."""
    import pygit2

    from .gitexport import export

    refuse_credentials(url, GitFetchError, ssh_user=True)
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise GitFetchError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name[:60]}.git-", dir=dest.parent))
    try:
        pygit2.init_repository(str(work / "repo"), bare=True)
        commit_id = _fetch_in_child(work / "repo", url, rev)
        repo = pygit2.Repository(str(work / "repo"))  # opened after the child wrote to it
        obj = repo.get(commit_id)
        if obj is None:  # (the child said it fetched it)
            raise GitFetchError(f"cannot fetch {url}: commit {commit_id} is missing after the fetch")
        commit = obj.peel(pygit2.Commit)
        try:
            export(repo, commit.tree, work / "tree")
        except (OSError, UnicodeError, ValueError) as e:  # a crafted tree: duplicate names, ...
            raise GitFetchError(f"refusing tree of {url} at {rev}: {shown(str(e))}") from None
        os.replace(work / "tree", dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    _repo, _url, _rev, _timeout, _max = sys.argv[1:6]
    sys.exit(_child(_repo, _url, _rev, float(_timeout), int(_max)))
