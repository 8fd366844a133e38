"""Fixed-output fetching: hashed source mirrors first, then the URLs, verified while downloading.

Theory of operation
-------------------
``fetch_url`` produces one file at ``dest`` whose sha256 is ``expected``, or raises and
leaves nothing at ``dest``. Bytes are written to a temporary file next to ``dest`` while
being hashed; the temporary is fsynced and renamed onto ``dest`` only after the digest
matches. Sources are tried in this order:

1. each *hashed source mirror* — a directory (or ``file://`` URL) or an ``http(s)`` URL
   laid out as ``<mirror>/sha256/<hex>``; the explicit list first, then the
   ``KILN_SOURCE_MIRRORS`` environment variable (space- or colon-separated; ``http://h:8080``
   style ports are understood). A mirror miss is silent; a corrupt mirror entry is reported
   as a warning and the next source is tried;
2. each URL in order. ``debian:<pool path>`` is expanded to ``<base>/<pool path>`` for
   every archive base the machine's apt sources name (read at run time, see
   ``kiln.store.apt.archive_bases``), so no host name is ever written into a recipe.

HTTP transfers use urllib (redirects followed by its redirect handler), a socket timeout
(``timeout`` argument, ``KILN_FETCH_TIMEOUT``), and up to ``retries`` further attempts per
URL after a dropped connection or timeout. A socket timeout only bounds silence, so each
attempt must also keep a pace: after ``PACE_GRACE`` seconds it is dropped (as a timeout)
once it averages under ``PACE_MIN_RATE`` bytes/s - the registry client's rule
(``kiln.registry.pace``), so a server sending a byte now and then cannot hold a build.
Unlike the registry client's, the pace is judged per download, not per link (parallel
fetches over one slow link each need 4 KiB/s), and it starts with the response body: a
server trickling its header lines is bounded only by the socket timeout per line.

A retry resumes with ``Range: bytes=N-`` when the server answers ``206`` with a matching
``Content-Range``; a ``200`` restarts from zero, and a ``206`` for another offset is
dropped and the file asked for again without ``Range``, so the hash always covers
exactly the bytes kept. "Connection refused" and unknown hosts are
not retried. A source the fetcher cannot use (an unsupported scheme, a ``debian:`` URL
that does not expand) is reported in its turn; the other sources are still tried (a
mirror is skipped with a warning). ``file:`` URLs may have one slash, as apt writes them.

Mirror lists, layout and NAR-hashed trees in mirrors are in ``kiln.store.fetchmirror``;
its public names are re-exported here.

If every source fails, a content mismatch wins over transport errors: ``HashMismatch``
(both hashes printed) is raised if any source delivered wrong bytes, else ``FetchError``
listing what each source said.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .errors import HashMismatch, KilnError
from .fetchmirror import (  # noqa: F401 - part of this module's API
    copy_to_mirror,
    fetch_tree_from_mirror,
    mirror_location,
    mirrors_from_env,
    parse_mirror_list,
    put_tree_in_mirror,
)
from .hashes import Hash

CHUNK = 1 << 16
USER_AGENT = "kiln-fetch/0.1"


class FetchError(KilnError):
    """No source could deliver the file."""


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
                f"cannot resolve {url}: no 'deb' archive in /etc/apt/sources.list or /etc/apt/sources.list.d/*.sources"
            )
        return [f"{base}/{pool}" for base in bases]
    return [url]


# --- transfer --------------------------------------------------------------------------


class _Progress:
    """A one-line progress meter on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.label = label if len(label) <= 50 else "…" + label[-49:]
        self.last = 0.0

    def update(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.1:
            return
        self.last = now
        mib = done / 1048576
        tail = (
            f"{mib:.1f}/{total / 1048576:.1f} MiB {100 * done // max(total, 1)}%"
            if total
            else f"{mib:.1f} MiB"
        )
        sys.stderr.write(f"\r\x1b[Kfetching {self.label} {tail}")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


class _Sink:
    """The temporary file plus a running hash of exactly the bytes it holds."""

    def __init__(self, f, algo: str, progress: _Progress) -> None:
        self.f = f
        self.algo = algo
        self.progress = progress
        self.reset()

    def reset(self) -> None:
        self.f.seek(0)
        self.f.truncate()
        self.h = hashlib.new(self.algo)
        self.size = 0

    def write(self, chunk: bytes, total: int | None = None) -> None:
        self.f.write(chunk)
        self.h.update(chunk)
        self.size += len(chunk)
        self.progress.update(self.size, total)

    def digest(self) -> bytes:
        return self.h.digest()


def _copy_local(src: Path, sink: _Sink) -> None:
    total = src.stat().st_size
    with open(src, "rb") as f:
        while chunk := f.read(CHUNK):
            sink.write(chunk, total)


_RETRY_STATUS = (408, 425, 429, 500, 502, 503, 504)
#: an attempt is too slow once it has run ``PACE_GRACE`` s plus 1 s per ``PACE_MIN_RATE``
#: bytes received: far below any real link, far above a trickle
PACE_MIN_RATE = 4096
PACE_GRACE = 60.0


class _TooSlow(TimeoutError):
    """An attempt that fell behind the pace: retried like a timeout, reported as itself."""


def _http_get(url: str, sink: _Sink, timeout: float, retries: int) -> None:
    """Download ``url`` into ``sink``. HTTP errors other than transient ones raise
    ``urllib.error.HTTPError`` at once; transport errors are retried (resuming when the
    server honours ``Range``) and raise ``OSError`` once ``retries`` are spent."""
    import http.client

    attempt = 0
    use_range = True
    while True:
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if sink.size and use_range:
            headers["Range"] = f"bytes={sink.size}-"
        elif sink.size:
            sink.reset()
        req = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                if resp.status == 206 and _range_start(resp.headers.get("Content-Range")) != sink.size:
                    # A part we did not ask for (wrong offset, multipart, or a range
                    # nobody requested): never take it for the file; ask for all of it.
                    use_range = False
                    raise ConnectionError("the server answered with the wrong byte range")
                if sink.size and resp.status != 206:
                    sink.reset()  # the server ignored the range: this body is the whole file
                length = resp.headers.get("Content-Length")
                total = sink.size + int(length) if length and length.isdigit() else None
                # read1: one socket read at a time, so the pace is judged as bytes come
                # (read(n) would wait, however long, until it has n of them)
                read = getattr(resp, "read1", resp.read)
                start, got = time.monotonic(), 0
                while chunk := read(CHUNK):
                    sink.write(chunk, total)
                    got += len(chunk)
                    if time.monotonic() > start + PACE_GRACE + got / PACE_MIN_RATE:
                        raise _TooSlow(
                            f"too slow: {got} bytes in {time.monotonic() - start:.0f} s (at least "
                            f"{PACE_MIN_RATE} bytes/s is expected after {PACE_GRACE:g} s)"
                        )
                if total is not None and sink.size < total:
                    raise ConnectionError(f"connection closed after {sink.size} of {total} bytes")
                return
        except urllib.error.HTTPError as e:
            error: BaseException = e
            if e.code == 416 and sink.size:
                sink.reset()  # range not satisfiable: our partial data is suspect
            elif e.code not in _RETRY_STATUS or attempt >= retries:
                raise
        except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets, IncompleteRead
            reason = getattr(e, "reason", None)
            if isinstance(reason, ConnectionRefusedError | socket.gaierror):
                raise OSError(_describe(e)) from e  # nobody listening / no such host: retrying will not help
            error = e
        attempt += 1
        if attempt > retries:
            raise OSError(f"{_describe(error)} (gave up after {attempt} attempts)") from error
        if sink.progress.enabled:
            sink.progress.done()
            print(f"{url}: {_describe(error)}; retrying ({attempt}/{retries})", file=sys.stderr)
        time.sleep(min(0.2 * 2 ** (attempt - 1), 3.0))


def _range_start(content_range: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-", content_range or "")
    return int(m.group(1)) if m else None


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    if isinstance(e, TimeoutError):
        return str(e) if isinstance(e, _TooSlow) else "timed out"
    return str(e) or type(e).__name__


def _transfer(source: str, sink: _Sink, timeout: float, retries: int) -> None:
    """Fill ``sink`` from a path, ``file://`` URL or network URL."""
    if source.startswith("file:"):  # file:///p and apt's file:/p
        _copy_local(Path(urllib.request.url2pathname(urllib.parse.urlparse(source).path)), sink)
    elif "://" not in source:
        _copy_local(Path(source), sink)
    elif source.startswith(("http://", "https://", "ftp://")):
        _http_get(source, sink, timeout, retries)
    else:
        raise FetchError(f"unsupported URL scheme in {source!r} (use http, https, ftp, file or debian:)")


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
) -> None:
    """Make ``dest`` a file whose ``expected.algo`` digest is ``expected``, from the first
    source that delivers it (mirrors, then ``urls``). Raises ``HashMismatch`` if a source
    delivered other bytes and none delivered the right ones, ``FetchError`` if nothing
    could be downloaded; in both cases nothing is left at ``dest``.

    ``expected=None`` (a recursive fetchurl, whose NAR hash the caller checks) skips the
    mirrors, which are keyed by flat hash, and accepts the first URL that downloads."""
    dest = Path(dest)
    if timeout is None:
        raw = os.environ.get("KILN_FETCH_TIMEOUT", "30")
        try:
            timeout = float(raw)
        except ValueError:
            raise FetchError(f"KILN_FETCH_TIMEOUT must be a number of seconds, found {raw!r}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    algo = expected.algo if expected else "sha256"
    failures: list[str] = []
    mismatch: tuple[str, str] | None = None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name[:60]}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as f:
            for source, is_mirror, unusable in _sources(urls, expected, mirrors):
                if unusable is not None:  # e.g. a bad debian: URL; the other sources still count
                    failures.append(f"{source}: {unusable}")
                    continue
                sink = _Sink(f, algo, _Progress(progress, source))
                try:
                    if is_mirror and "://" not in source and not Path(source).is_file():
                        continue  # a plain mirror miss
                    _transfer(source, sink, timeout, retries)
                except FetchError as e:  # a source this fetcher cannot use (its scheme)
                    if is_mirror:
                        print(f"warning: skipping mirror {source}: {e}", file=sys.stderr)
                    else:
                        failures.append(f"{source}: {e}")
                    continue
                except urllib.error.HTTPError as e:
                    if not (is_mirror and e.code in (403, 404, 410)):
                        failures.append(f"{source}: HTTP {e.code} {e.reason}")
                    continue
                except FileNotFoundError:
                    if not is_mirror:
                        failures.append(f"{source}: no such file")
                    continue
                except OSError as e:
                    failures.append(f"{source}: {_describe(e)}")
                    continue
                finally:
                    sink.progress.done()
                got = Hash(algo, sink.digest())
                if expected is not None and got != expected:
                    if is_mirror:
                        print(
                            f"warning: mirror entry {source} has hash {got.to_hex()}, ignoring it",
                            file=sys.stderr,
                        )
                    else:
                        mismatch = mismatch or (source, got.to_hex())
                        failures.append(f"{source}: content has hash {got.to_hex()}")
                    continue
                f.flush()
                os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, dest)
                _fsync_dir(dest.parent)
                return
    finally:
        tmp.unlink(missing_ok=True)
    what = expected.to_hex() if expected else "unpinned"
    if mismatch and expected is not None:
        raise HashMismatch(mismatch[0], expected.to_hex(), mismatch[1])
    if not failures:
        raise FetchError(f"no source for {dest.name} ({what}): no URL given and no mirror has it")
    raise FetchError(f"cannot fetch {dest.name} ({what}):\n  " + "\n  ".join(failures))


def _sources(urls: list[str], expected: Hash | None, mirrors: list[str]):
    """(location, is_mirror, why unusable or None) in the order they are tried. A URL that
    cannot be expanded is reported in its turn rather than stopping the others."""
    for m in mirrors_from_env(mirrors) if expected is not None else ():
        loc = mirror_location(m, expected)
        if loc.startswith("file:"):
            loc = urllib.request.url2pathname(urllib.parse.urlparse(loc).path)
        yield loc, True, None
    for url in urls:
        try:
            concrete = expand_url(url)
        except FetchError as e:
            yield url, False, str(e)
            continue
        for c in concrete:
            yield c, False, None


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
    url: str, rev: str, dest: Path, *, expected: Hash | None = None, mirrors: list[str] = ()
) -> None:
    """Export the tree of ``rev`` from the git repository at ``url`` to ``dest`` (see
    ``kiln.store.fetchgit``; imported lazily so plain fetches never load pygit2). With
    ``expected`` (the NAR hash), a hashed mirror holding that NAR is tried first."""
    if expected is not None and fetch_tree_from_mirror(expected, dest, mirrors=list(mirrors)):
        return
    from .fetchgit import fetch_git as _fetch_git

    _fetch_git(url, rev, dest)
