"""Fixed-output fetching: hashed source mirrors first, then the URLs, verified while downloading.

Theory of operation
-------------------
``fetch_url`` produces one file at ``dest`` whose sha256 is ``expected`` (for a
recursive fetchurl, whose NAR hash is), or raises and leaves nothing at ``dest``. Bytes
are written to a temporary file next to ``dest`` while being hashed; the temporary is
fsynced and renamed onto ``dest`` only after the digest matches. Sources are tried in this order:

1. each *hashed source mirror* — a directory (or ``file://`` URL) or an ``http(s)`` URL
   laid out as ``<mirror>/sha256/<hex>``; the explicit list first, then the
   ``KILN_SOURCE_MIRRORS`` environment variable (whitespace-separated; colons between
   plain paths still separate, see ``parse_mirror_list``). A mirror miss (404, 403, 410)
   is silent; a corrupt or oversized mirror entry, or another error status, is reported
   as a warning and the next source is tried. A network mirror gets one retry, not
   ``retries`` (and heeds a ``Retry-After`` up to 5 s, not 60), and a mirror that times
   out, trickles or refuses is skipped for the rest of the process (``forget_down_mirrors``);
2. each URL in order. ``debian:<pool path>`` is expanded to ``<base>/<pool path>`` for
   every archive base the machine's apt sources name (read at run time, see
   ``kiln.store.apt.archive_bases``), so no host name is ever written into a recipe.

HTTP transfers (``fetchdownload`` over ``fetchhttp``) use urllib with a socket timeout
(``timeout`` argument, ``KILN_FETCH_TIMEOUT``) and up to ``retries`` further attempts per URL after a dropped
connection, a timeout or a transient status (429, 5xx), waiting as ``fetchretry`` says: a
backoff from 0.2 s, or what a 429's or 503's ``Retry-After`` asks, up to 60 s. Redirects are followed (at most 10, to http and https only: not
to ``ftp:`` or ``file:``) without reading the 3xx body, which a hostile server could make
any size. ``ftp://`` is not fetched at all: its sockets were outside the pace rule, and
an FTP server trickling its banner held a fetch for ever. A socket timeout only
bounds silence (it applies to each ``recv``, so a byte every timeout - 1 s never trips
it), so each attempt must also keep a pace: it may last ``PACE_GRACE`` s plus 1 s per
``PACE_MIN_RATE`` body bytes - the registry client's rule (``kiln.registry.pace``). The
clock starts with the request, so connecting, the status line and headers of every
redirect count against it, and a watchdog thread shuts the attempt's socket down when it
is over, even while http.client is blocked inside a header line. Unlike the registry
client's, the pace is judged per download, not per link (parallel fetches over one slow
link each need 4 KiB/s).

Sizes: with ``size`` (a lock entry's exact size) a source that announces or sends more is
dropped at once; otherwise each source is capped at ``MAX_DOWNLOAD`` (16 GiB,
``KILN_FETCH_MAX_SIZE``). A malformed URL or ``Location`` (``http://[::1``, an over-long
host label, a bad port) is that source's failure, not retried; any unexpected error of
one source is recorded too, and the next source is tried.

A retry resumes with ``Range: bytes=N-`` when the server answers ``206`` with a matching
``Content-Range``; a ``200`` restarts from zero, and a ``206`` for another offset is
dropped and the file asked for again without ``Range``, so the hash always covers
exactly the bytes kept. "Connection refused" and unknown hosts are
not retried. A source the fetcher cannot use (an unsupported scheme, a ``debian:`` URL
that does not expand, a URL with credentials, which kiln never sends: see
``fetchtext``) is reported in its turn; the other sources are still tried (a
mirror is skipped with a warning). ``file:`` URLs may have one slash, as apt writes them.

Mirror lists, layout and NAR-hashed trees in mirrors are in ``kiln.store.fetchmirror``;
its public names are re-exported here.

A failure to write the download's own file (a full disk, a quota, a read-only file
system, an I/O error: ``fetchsink.LocalWriteError``) ends the fetch at once, naming the
file: it is not retried and no other source is tried, as each would fail the same way.

If every source fails, a content mismatch wins over transport errors: ``HashMismatch``
(both hashes printed, then what every source gave when there were several) is raised if
any source delivered wrong bytes, else ``FetchError`` naming the file as its first URL
does (not ``dest``, which may be a build's ``out``) and listing what each source said. A
recursive fetch checks each source's NAR hash the same way, so a wrong source is passed
over for the next. URLs in messages have credentials hidden and server text is escaped
(``fetchtext``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import HashMismatch
from .fetchdownload import describe, http_get
from .fetchhttp import (  # noqa: F401 - FetchError, CHUNK, USER_AGENT: part of this module's API
    CHUNK,
    MAX_DOWNLOAD,
    USER_AGENT,
    FetchError,
    _Limit,
    _max_download,
    _TooBig,
    _TooSlow,
    fetch_timeout,
)
from .fetchmirror import (  # noqa: F401 - part of this module's API
    copy_to_mirror,
    fetch_tree_from_mirror,
    mirror_location,
    mirrors_from_env,
    parse_mirror_list,
    put_tree_in_mirror,
)
from .fetchretry import MIRROR_RETRY_AFTER_CAP, RETRY_AFTER_CAP
from .fetchsink import LocalWriteError
from .fetchsink import Progress as _Progress
from .fetchsink import Sink as _Sink
from .fetchsink import nar_hash_of_file as _nar_hash_of_file
from .fetchtext import file_name, refuse_credentials, shown, shown_url
from .fileopen import open_regular
from .hashes import Hash

# --- URL expansion ---------------------------------------------------------------------


def expand_url(url: str) -> list[str]:
    """Concrete URLs for one recipe URL (``debian:`` expands to every archive base)."""
    if url.startswith("debian:"):
        from .apt import archive_bases

        pool = url[len("debian:") :].lstrip("/")
        if not pool or ".." in pool.split("/"):
            raise FetchError(f"bad debian: URL {url!r} (expected debian:pool/main/...)")
        bases = archive_bases()
        if not bases:
            raise FetchError(
                f"cannot resolve {url}: no 'deb' archive with an http, https or file URI in "
                "/etc/apt/sources.list or /etc/apt/sources.list.d/*.sources (kiln fetches no ftp: "
                "and no apt method such as mirror+http:); or use a source mirror (KILN_SOURCE_MIRRORS)"
            )
        return [f"{base}/{pool}" for base in bases]
    return [url]


def split_urls(text: str) -> list[str]:
    """The URLs of a derivation's ``urls`` variable: space-separated, as ``fetchurl``
    writes them (a recipe URL may not contain whitespace: the language refuses it)."""
    return text.split()


# --- transfer --------------------------------------------------------------------------


def _copy_local(src: Path, sink: _Sink, limit: _Limit) -> None:
    f = open_regular(src)  # (a FIFO there would block the read for ever, past any timeout)
    if f is None:
        raise FetchError(f"{src} is not a regular file")
    with f:
        total = os.fstat(f.fileno()).st_size
        if total > limit.size:
            raise _TooBig(f"{total} bytes, more than {limit}")
        while chunk := f.read(CHUNK):
            if sink.size + len(chunk) > limit.size:  # the file grew while we read it
                raise _TooBig(f"more than {limit}")
            sink.write(chunk, total)


def _transfer(
    source: str, sink: _Sink, timeout: float, retries: int, limit: _Limit, wait_cap: float = RETRY_AFTER_CAP
) -> None:
    """Fill ``sink`` from a path, ``file://`` URL or network URL (``wait_cap``: the longest
    ``Retry-After`` heeded, ``fetchretry``)."""
    if source.startswith("file:"):  # file:///p and apt's file:/p
        _copy_local(Path(urllib.request.url2pathname(urllib.parse.urlparse(source).path)), sink, limit)
    elif "://" not in source:
        _copy_local(Path(source), sink, limit)
    elif source.startswith(("http://", "https://")):
        refuse_credentials(source, FetchError)
        http_get(source, sink, timeout, retries, limit, wait_cap)
    elif source.startswith("ftp://"):
        raise FetchError(
            f"refusing {shown_url(source)}: ftp is not supported (no timeout or pace rule could "
            "hold an FTP server to time); use the http or https URL of the same file"
        )
    else:
        raise FetchError(f"unsupported URL scheme in {shown_url(source)} (use http, https, file or debian:)")


# --- mirrors that stopped answering ----------------------------------------------------

#: attempts per file for a network mirror (1 + this many retries): a mirror is optional,
#: the URLs are the fallback, so a stalled one must not cost minutes per file
MIRROR_RETRIES = 1

_down_mirrors: dict[str, str] = {}  # mirror -> what it did, for the rest of this process
_down_lock = threading.Lock()


def _mirror_down(mirror: str) -> bool:
    with _down_lock:
        return mirror in _down_mirrors


def _mark_mirror_down(mirror: str, why: str) -> None:
    """Skip ``mirror`` for the rest of the run: it timed out, trickled or refused, and it
    would do the same for every other file (about 2 minutes each with retries)."""
    with _down_lock:
        if mirror in _down_mirrors:
            return
        _down_mirrors[mirror] = why
    print(
        f"warning: mirror {shown_url(mirror)} failed ({why}); not using it again in this run", file=sys.stderr
    )


def forget_down_mirrors() -> None:
    """Try every mirror again (for long-running processes and tests)."""
    with _down_lock:
        _down_mirrors.clear()


# --- the entry point -------------------------------------------------------------------


def fetch_url(
    urls: list[str],
    expected: Hash | None,
    dest: Path,
    *,
    mirrors: list[str],
    progress: bool,
    timeout: float | None = None,
    retries: int = 3,
    size: int | None = None,
    recursive: bool = False,
) -> None:
    """Make ``dest`` a file whose ``expected.algo`` digest is ``expected``, from the first
    source that delivers it (mirrors, then ``urls``). Raises ``HashMismatch`` if a source
    delivered other bytes and none delivered the right ones (listing what each source
    gave), ``FetchError`` if nothing could be downloaded; in both cases nothing is left at
    ``dest``. Any failure of one source (even an unexpected exception) is recorded and
    the next source is tried.

    ``size`` is the expected size in bytes when known (a lock entry's): a source is
    dropped as soon as it announces or sends more. Without it, each source is capped at
    ``MAX_DOWNLOAD`` (``KILN_FETCH_MAX_SIZE``).

    ``recursive=True`` (a recursive fetchurl): ``expected`` is the NAR hash of ``dest``
    (a regular, non-executable file), checked per source like a flat hash, so a source
    with other content is passed over for the next. The mirrors are skipped: they hold
    the NAR itself (``fetch_tree_from_mirror``), not the file.

    ``expected=None`` accepts the first URL that downloads, unchecked (mirrors skipped):
    the caller checks it, and no other source is tried if that check fails."""
    dest = Path(dest)
    if timeout is None:
        timeout = fetch_timeout()
    limit = _Limit(size, True) if size is not None else _Limit(_max_download(), False)
    algo = expected.algo if expected else "sha256"
    kind = "NAR hash" if recursive else "hash"
    failures: list[str] = []
    mismatch: tuple[str, str] | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name[:60]}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise LocalWriteError.of(e, dest) from e
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b", buffering=0) as f:  # (unbuffered: ``fetchsink.Sink``)
            for source, mirror, unusable in _sources(urls, None if recursive else expected, mirrors):
                label = shown_url(source)
                if unusable is not None:  # e.g. a bad debian: URL; the other sources still count
                    failures.append(f"{label}: {unusable}")
                    continue
                if mirror is not None and _mirror_down(mirror):
                    continue
                sink = _Sink(f, algo, _Progress(progress, label), tmp)
                try:
                    failed = _try_source(source, mirror, sink, timeout, retries, limit)
                finally:
                    sink.progress.done()
                if failed is not None:
                    if failed:
                        failures.append(f"{label}: {failed}")
                    continue
                sink.flush()  # (before the NAR hash reads the file back; and durable)
                got = _nar_hash_of_file(f, algo) if recursive else Hash(algo, sink.digest())
                if expected is not None and got != expected:
                    if mirror is not None:
                        print(
                            f"warning: mirror entry {label} has hash {got.to_hex()}, ignoring it",
                            file=sys.stderr,
                        )
                    else:
                        mismatch = mismatch or (label, got.to_hex())
                        failures.append(f"{label}: content has {kind} {got.to_hex()}")
                    continue
                try:
                    os.chmod(tmp, 0o644)
                    os.replace(tmp, dest)
                except OSError as e:
                    raise LocalWriteError.of(e, dest) from e
                _fsync_dir(dest.parent)
                return
    finally:
        tmp.unlink(missing_ok=True)
    what = expected.to_hex() if expected else "unpinned"
    if mismatch and expected is not None:
        raise _Mismatch(mismatch[0], expected.to_hex(), mismatch[1], failures)
    # the file's name as its URLs give it: ``dest`` may be a build's ``out`` or a temporary
    name = next((n for u in urls if (n := file_name(u))), None) or shown(dest.name)
    if not failures:
        raise FetchError(f"no source for {name} ({what}): no URL given and no mirror has it")
    raise FetchError(f"cannot fetch {name} ({what}):\n  " + "\n  ".join(failures))


class _Mismatch(HashMismatch):
    """``HashMismatch`` for the first source with other content; when there were other
    sources, the message also lists what each one gave."""

    def __init__(self, what: str, expected: str, got: str, failures: list[str]) -> None:
        super().__init__(what, expected, got)
        if len(failures) > 1:
            self.args = (f"{self.args[0]}\nevery source:\n  " + "\n  ".join(failures),)


def _try_source(
    source: str, mirror: str | None, sink: _Sink, timeout: float, retries: int, limit: _Limit
) -> str | None:
    """Fill ``sink`` from one source. Returns None if it delivered bytes (the caller checks
    the hash), else why it failed ("" for a silent mirror miss)."""
    wait_cap = RETRY_AFTER_CAP
    try:
        if mirror is not None:
            if "://" not in source and not Path(source).is_file():
                return ""  # a plain mirror miss
            retries, wait_cap = min(retries, MIRROR_RETRIES), MIRROR_RETRY_AFTER_CAP
        _transfer(source, sink, timeout, retries, limit, wait_cap)
        return None
    except LocalWriteError:
        raise  # this machine's trouble: no other source would fare better
    except FetchError as e:  # a source this fetcher cannot use (scheme, bad URL, too big)
        if mirror is not None:
            print(f"warning: skipping mirror {shown_url(source)}: {e}", file=sys.stderr)
            return ""
        return str(e)
    except urllib.error.HTTPError as e:
        if mirror is not None:
            if e.code in (403, 404, 410):
                return ""  # a miss
            # (a 500 or 429 after its retry: said now, as a reset or a corrupt entry is)
            print(f"warning: skipping mirror {shown_url(source)}: {describe(e)}", file=sys.stderr)
        return describe(e)
    except FileNotFoundError:
        return "" if mirror is not None else "no such file"
    except OSError as e:  # timeouts, the pace rule, refused, resets: after the retries
        if mirror is not None:
            _mark_mirror_down(mirror, describe(e))
        return describe(e)
    except Exception as e:  # noqa: BLE001 - one odd source must not stop the fallback
        return f"{type(e).__name__}: {shown(str(e))}"


def _sources(
    urls: list[str], expected: Hash | None, mirrors: list[str]
) -> Iterator[tuple[str, str | None, str | None]]:
    """(location, its mirror or None, why unusable or None) in the order they are tried.
    A URL that cannot be expanded is reported in its turn rather than stopping the others."""
    if expected is not None:  # (mirrors hold files by their hash)
        for m in mirrors_from_env(mirrors):
            loc = mirror_location(m, expected)
            if loc.startswith("file:"):
                try:
                    loc = urllib.request.url2pathname(urllib.parse.urlparse(loc).path)
                except ValueError as e:
                    yield loc, None, f"bad mirror URL: {e}"
                    continue
            yield loc, m, None
    for url in urls:
        try:
            concrete = expand_url(url)
        except FetchError as e:
            yield url, None, str(e)
            continue
        for c in concrete:
            yield c, None, None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fetch_git(
    url: str, rev: str, dest: Path, *, expected: Hash | None = None, mirrors: Sequence[str] = ()
) -> None:
    """Export the tree of ``rev`` from the git repository at ``url`` to ``dest`` (see
    ``kiln.store.fetchgit``; imported lazily so plain fetches never load pygit2). With
    ``expected`` (the NAR hash), a hashed mirror holding that NAR is tried first."""
    if expected is not None and fetch_tree_from_mirror(expected, dest, mirrors=list(mirrors)):
        return
    from .fetchgit import fetch_git as _fetch_git

    _fetch_git(url, rev, dest)
