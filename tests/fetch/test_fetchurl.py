"""fetch_url against a real local HTTP server: success, mismatch, redirects, drops,
timeouts, mirrors (directory and HTTP), file:// URLs."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from kiln.store.errors import HashMismatch
from kiln.store.fetch import FetchError, expand_url, fetch_url, mirrors_from_env, parse_mirror_list
from kiln.store.hashes import Hash

DATA = bytes(range(256)) * 4000  # ~1 MB: several read chunks


def h(data: bytes) -> Hash:
    return Hash("sha256", hashlib.sha256(data).digest())


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def test_success(server, tmp_path):
    server.add("a.tar", DATA)
    dest = tmp_path / "out" / "a.tar"
    fetch_url([server.url("file/a.tar")], h(DATA), dest, mirrors=[], progress=True)
    assert dest.read_bytes() == DATA
    assert (dest.stat().st_mode & 0o777) == 0o644
    assert leftovers(dest.parent) == []


def test_wrong_hash_prints_both_and_leaves_nothing(server, tmp_path):
    server.add("a.tar", DATA)
    wanted = h(b"something else")
    dest = tmp_path / "a.tar"
    with pytest.raises(HashMismatch) as e:
        fetch_url([server.url("file/a.tar")], wanted, dest, mirrors=[], progress=False)
    msg = str(e.value)
    assert wanted.hex in msg and h(DATA).hex in msg
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_second_url_used_when_first_fails(server, tmp_path):
    server.add("a", DATA)
    dest = tmp_path / "a"
    fetch_url([server.url("file/missing"), server.url("file/a")], h(DATA), dest, mirrors=[], progress=False)
    assert dest.read_bytes() == DATA


def test_redirect(server, tmp_path):
    server.add("r", DATA)
    dest = tmp_path / "r"
    fetch_url([server.url("redirect/r")], h(DATA), dest, mirrors=[], progress=False)
    assert dest.read_bytes() == DATA
    assert [p for _, p, _ in server.log] == ["/redirect/r", "/file/r"]


def test_dropped_connection_resumes_with_range(server, tmp_path):
    server.add("d", DATA)
    dest = tmp_path / "d"
    fetch_url([server.url("drop/d")], h(DATA), dest, mirrors=[], progress=False)
    assert dest.read_bytes() == DATA
    ranges = [r for _, p, r in server.log if p == "/drop/d"]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")


def test_dropped_connection_without_range_support_restarts_cleanly(server, tmp_path):
    server.add("d", DATA)
    dest = tmp_path / "d"
    fetch_url([server.url("drop-norange/d")], h(DATA), dest, mirrors=[], progress=False)
    assert dest.read_bytes() == DATA
    assert server.count("/drop-norange/d") == 2


def test_transient_503_is_retried(server, tmp_path):
    server.add("f", DATA)
    dest = tmp_path / "f"
    fetch_url([server.url("flaky/f")], h(DATA), dest, mirrors=[], progress=False)
    assert dest.read_bytes() == DATA


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("hang", "timed out"),  # silent: the socket timeout ends each attempt
        ("trickle", "too slow"),  # a byte every 50 ms: only the pace rule ends it
    ],
)
def test_a_server_that_never_finishes_is_given_up(server, tmp_path, monkeypatch, kind: str, said: str):
    """Each attempt ends (here: a 0.5 s socket timeout; a pace of 0.3 s grace plus 1 s
    per 100 KB, or 2 s grace for the silent server so that the timeout decides) and the
    fetch fails saying why, leaving nothing behind."""
    from kiln.store import fetchhttp

    monkeypatch.setattr(fetchhttp, "PACE_GRACE", 2.0 if kind == "hang" else 0.3)
    monkeypatch.setattr(fetchhttp, "PACE_MIN_RATE", 100_000)
    server.add("x", DATA)
    dest = tmp_path / "x"
    t0 = time.monotonic()
    with pytest.raises(FetchError) as e:
        fetch_url(
            [server.url(f"{kind}/x")], h(DATA), dest, mirrors=[], progress=False, timeout=0.5, retries=1
        )
    assert time.monotonic() - t0 < 4
    assert said in str(e.value) and "gave up after 2 attempts" in str(e.value)
    assert not dest.exists() and leftovers(tmp_path) == []


def test_not_found_is_a_fetch_error(server, tmp_path):
    with pytest.raises(FetchError) as e:
        fetch_url([server.url("file/nope")], h(DATA), tmp_path / "n", mirrors=[], progress=False)
    assert "HTTP 404" in str(e.value)


def test_directory_mirror_hit_makes_no_request(server, tmp_path):
    server.add("m", DATA)
    mirror = tmp_path / "mirror"
    (mirror / "sha256").mkdir(parents=True)
    (mirror / "sha256" / h(DATA).hex).write_bytes(DATA)
    dest = tmp_path / "m"
    fetch_url([server.url("file/m")], h(DATA), dest, mirrors=[str(mirror)], progress=False)
    assert dest.read_bytes() == DATA
    assert server.log == []
    # the mirror entry is copied, not linked: the store may make dest read-only
    assert os.stat(dest).st_ino != os.stat(mirror / "sha256" / h(DATA).hex).st_ino


def test_env_mirror_and_file_url_mirror(server, tmp_path, monkeypatch):
    server.add("m", DATA)
    mirror = tmp_path / "mirror"
    (mirror / "sha256").mkdir(parents=True)
    (mirror / "sha256" / h(DATA).hex).write_bytes(DATA)
    monkeypatch.setenv("KILN_SOURCE_MIRRORS", f"/nonexistent:file://{mirror}")
    fetch_url([server.url("file/m")], h(DATA), tmp_path / "m", mirrors=[], progress=False)
    assert server.log == []


def test_http_mirror(server, tmp_path):
    server.add("m", DATA, mirror=True)
    dest = tmp_path / "m"
    fetch_url(
        ["http://127.0.0.1:9/unreachable"], h(DATA), dest, mirrors=[server.url("mirror")], progress=False
    )
    assert dest.read_bytes() == DATA
    assert [p for _, p, _ in server.log] == [f"/mirror/sha256/{h(DATA).hex}"]


def test_mirror_miss_falls_through_to_url(server, tmp_path):
    server.add("m", DATA)
    dest = tmp_path / "m"
    fetch_url(
        [server.url("file/m")],
        h(DATA),
        dest,
        mirrors=[server.url("mirror"), str(tmp_path / "empty")],
        progress=False,
    )
    assert dest.read_bytes() == DATA


def test_corrupt_mirror_entry_is_skipped(server, tmp_path, capsys):
    server.add("m", DATA)
    mirror = tmp_path / "mirror"
    (mirror / "sha256").mkdir(parents=True)
    (mirror / "sha256" / h(DATA).hex).write_bytes(b"corrupt")
    dest = tmp_path / "m"
    fetch_url([server.url("file/m")], h(DATA), dest, mirrors=[str(mirror)], progress=False)
    assert dest.read_bytes() == DATA
    assert "ignoring" in capsys.readouterr().err


def test_file_url(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    dest = tmp_path / "dest.bin"
    fetch_url([f"file://{src}"], h(DATA), dest, mirrors=[], progress=False)
    assert dest.read_bytes() == DATA
    with pytest.raises(HashMismatch):
        fetch_url([f"file://{src}"], h(b"x"), tmp_path / "bad", mirrors=[], progress=False)
    assert not (tmp_path / "bad").exists()


def test_unpinned_fetch_skips_mirrors(server, tmp_path):
    server.add("u", DATA)
    dest = tmp_path / "u"
    fetch_url([server.url("file/u")], None, dest, mirrors=[server.url("mirror")], progress=False)
    assert dest.read_bytes() == DATA
    assert [p for _, p, _ in server.log] == ["/file/u"]


def test_unsupported_scheme(tmp_path):
    with pytest.raises(FetchError, match="unsupported URL scheme"):
        fetch_url(["gopher://x/y"], h(DATA), tmp_path / "g", mirrors=[], progress=False)


def test_wrong_range_answer_restarts_without_range(server, tmp_path):
    # A resumed request answered 206 from another offset must not be kept as the file.
    server.add("br", DATA)
    dest = tmp_path / "br"
    fetch_url([server.url("badrange/br")], h(DATA), dest, mirrors=[], progress=False, timeout=5)
    assert dest.read_bytes() == DATA
    ranges = [r for _, p, r in server.log if p == "/badrange/br"]
    assert ranges[0] is None and ranges[1] is not None and ranges[-1] is None


def test_a_206_with_the_whole_file_is_accepted(server, tmp_path):
    # a server answering a plain GET with 206 bytes 0-(N-1)/N: the hash decides
    server.add("whole", DATA)
    dest = tmp_path / "whole"
    fetch_url([server.url("partial0/whole")], h(DATA), dest, mirrors=[], progress=False, timeout=5)
    assert dest.read_bytes() == DATA


def test_an_unusable_source_does_not_stop_the_others(server, tmp_path, capsys):
    server.add("ok", DATA)
    good = server.url("file/ok")
    # an unsupported scheme among the mirrors or before the working URL, and a bad debian: URL
    for urls, mirrors in (
        ([good], ["rsync://m.invalid/kiln"]),
        (["gopher://x/y", good], []),
        (["debian:", good], []),
    ):
        dest = tmp_path / "d"
        fetch_url(urls, h(DATA), dest, mirrors=mirrors, progress=False)
        assert dest.read_bytes() == DATA
        dest.unlink()
    assert "skipping mirror rsync://" in capsys.readouterr().err
    # a wrong-bytes URL followed by an unusable one: the mismatch is what is reported
    server.add("bad", b"other bytes")
    with pytest.raises(HashMismatch):
        fetch_url(
            [server.url("file/bad"), "gopher://x/y"], h(DATA), tmp_path / "m", mirrors=[], progress=False
        )
    with pytest.raises(
        FetchError, match=r"(?s)gopher://x/y: unsupported URL scheme.*debian:: bad debian: URL"
    ):
        fetch_url(["gopher://x/y", "debian:"], h(DATA), tmp_path / "n", mirrors=[], progress=False)


def test_apt_style_file_url(tmp_path):
    # apt writes local archives as file:/path (one slash); debian: URLs built on one work.
    src = tmp_path / "srv" / "pool" / "x.deb"
    src.parent.mkdir(parents=True)
    src.write_bytes(DATA)
    fetch_url([f"file:{src}"], h(DATA), tmp_path / "x.deb", mirrors=[], progress=False)
    assert (tmp_path / "x.deb").read_bytes() == DATA


def test_parse_mirror_list():
    assert parse_mirror_list("/a:/b http://h:8080/m:https://x/y file:///c") == [
        "/a",
        "/b",
        "http://h:8080/m",
        "https://x/y",
        "file:///c",
    ]
    assert parse_mirror_list("") == []


def test_mirrors_from_env_order(monkeypatch):
    monkeypatch.setenv("KILN_SOURCE_MIRRORS", "/e1 /x/")
    assert mirrors_from_env(["/x", "/y"]) == ["/x", "/y", "/e1"]


def test_debian_url_expands_against_machine_sources():
    from kiln.store.apt import archive_bases

    bases = archive_bases()
    if not bases:
        pytest.skip("no apt 'deb' sources on this machine")
    urls = expand_url("debian:pool/main/h/hello/hello_2.10-3_amd64.deb")
    assert urls == [f"{b}/pool/main/h/hello/hello_2.10-3_amd64.deb" for b in bases]
    with pytest.raises(FetchError):
        expand_url("debian:../etc/passwd")


def test_progress_only_on_a_terminal(server, tmp_path, monkeypatch, capsys):
    import pty

    server.add("p", DATA)
    master, slave = pty.openpty()
    term = os.fdopen(slave, "w")
    monkeypatch.setattr("sys.stderr", term)
    fetch_url([server.url("file/p")], h(DATA), tmp_path / "p", mirrors=[], progress=True)
    term.flush()
    import select

    assert select.select([master], [], [], 10)[0], "no progress meter on the terminal"
    shown = os.read(master, 65536).decode()
    term.close()
    os.close(master)
    assert "fetching" in shown and "MiB" in shown
    monkeypatch.undo()
    fetch_url([server.url("file/p")], h(DATA), tmp_path / "q", mirrors=[], progress=True)
    assert capsys.readouterr().err == ""  # not a terminal: silent


@pytest.mark.slow
def test_real_debian_url_from_the_lock(tmp_path):
    """The one test that talks to the package registry: fetch the smallest pinned .deb
    through its ``debian:`` URL (no mirror)."""
    from kiln.store.apt import archive_bases, parse_lock

    if not archive_bases():
        pytest.skip("no apt sources on this machine")
    lock = Path(__file__).resolve().parents[2] / "recipes" / "toolchain.lock.recipe"
    e = min(parse_lock(lock.read_text()), key=lambda e: e.size)
    dest = tmp_path / "x.deb"
    fetch_url(
        [f"debian:{e.filename}"], Hash("sha256", bytes.fromhex(e.sha256)), dest, mirrors=[], progress=False
    )
    assert dest.stat().st_size == e.size


def test_a_file_url_that_names_a_fifo_is_refused_not_waited_on(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes: the fetch hung for ever,
    past --timeout and KILN_FETCH_TIMEOUT."""
    fifo = tmp_path / "ff"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="is not a regular file"):
        fetch_url(
            [f"file://{fifo}"], Hash("sha256", b"\0" * 32), tmp_path / "out", mirrors=[], progress=False
        )
    assert time.monotonic() - t0 < 10 and not (tmp_path / "out").exists()
