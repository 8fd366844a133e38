"""How sources are named: KILN_SOURCE_MIRRORS parsing (IPv6, user:password, colon-separated
paths), URLs with whitespace, and ``kiln prefetch`` of URLs ending in ``/.`` or ``/..``."""

from __future__ import annotations

import hashlib

import pytest

from kiln.main import main
from kiln.store.fetch import fetch_url, parse_mirror_list, split_urls
from kiln.store.hashes import Hash

DATA = b"named bytes\n" * 50


def h(data: bytes) -> Hash:
    return Hash("sha256", hashlib.sha256(data).digest())


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("http://[::1]:8080/m", ["http://[::1]:8080/m"]),
        ("https://user:tok@mirror/m", ["https://user:tok@mirror/m"]),
        ("http://[::1]:8080/m:/srv/m2", ["http://[::1]:8080/m", "/srv/m2"]),
        ("http://h/m:file:///x http://h/a:b", ["http://h/m", "file:///x", "http://h/a:b"]),
        # the old colon-separated forms keep working
        (
            "/a:/b http://h:8080/m:https://x/y file:///c",
            ["/a", "/b", "http://h:8080/m", "https://x/y", "file:///c"],
        ),
        ("rel:/abs", ["rel", "/abs"]),
    ],
)
def test_mirror_list_keeps_colons_inside_urls(text: str, parsed: list[str]):
    assert parse_mirror_list(text) == parsed


def test_an_ipv6_mirror_is_one_mirror(server, tmp_path, monkeypatch):
    """Split at its colons it made every fetch fail with "Invalid IPv6 URL"; whole, it is
    one unreachable mirror and the URL is used."""
    server.add("f", DATA)
    monkeypatch.setenv("KILN_SOURCE_MIRRORS", "http://[::1]:9/m")
    fetch_url([server.url("file/f")], h(DATA), tmp_path / "f", mirrors=[], progress=False, timeout=2)
    assert (tmp_path / "f").read_bytes() == DATA


def test_urls_with_spaces_are_fetched(server, tmp_path):
    """A space goes on the wire percent-encoded; a file: URL with a space names the file.
    (Recipes cannot give such URLs - the language refuses whitespace - but ``kiln
    prefetch`` and hand-made derivations can.)"""
    server.add("my%20file", DATA)
    local = tmp_path / "dir with space" / "f"
    local.parent.mkdir()
    local.write_bytes(DATA)
    for i, url in enumerate([server.url("file/my file"), f"file://{local}"]):
        fetch_url([url], h(DATA), tmp_path / f"out{i}", mirrors=[], progress=False)
        assert (tmp_path / f"out{i}").read_bytes() == DATA
    assert split_urls(" a  b\tc ") == ["a", "b", "c"]


@pytest.mark.parametrize("tail", ["x/.", "x/.."])
def test_prefetch_of_a_dot_url(server, capsys, tail: str):
    server.add(tail, DATA)
    assert main(["prefetch", server.url(f"file/{tail}")]) == 0
    assert capsys.readouterr().out.strip() == hashlib.sha256(DATA).hexdigest()
