"""Credentials that slipped past the ``user:pw@`` rule: a password holding an unencoded
``#``, ``?`` or ``/`` (urllib took its start for a port and quoted it in its error; the
rest became the fetch's name), and tokens or signatures in a query string (pre-signed
S3/GCS/Azure URLs, GitLab's ``private_token``), which went into the .drv, provenance and
SBOM, and were printed on a failed fetch. Recipes refuse both at evaluation, the fetchers
before sending anything, and no message shows them."""

from __future__ import annotations

import hashlib

import pytest

pytest.importorskip("kiln.lang")

from kiln.lang import evaluate_file  # noqa: E402
from kiln.lang.errors import RecipeError  # noqa: E402
from kiln.main import main  # noqa: E402
from kiln.store.errors import redact_urls, url_credentials  # noqa: E402
from kiln.store.fetch import FetchError, fetch_url  # noqa: E402
from kiln.store.hashes import Hash  # noqa: E402

H = "0" * 64
DATA = b"the file\n" * 10

#: a password holding '#', '?' or '/' (or starting with digits, then '/')
CUT_SHORT = [
    "http://u:PASSPART1#rest@127.0.0.1:18601/a.txt",
    "http://u:PASSPART1?rest@127.0.0.1:18601/a.txt",
    "http://u:PASSPART1/rest@127.0.0.1:18601/a.txt",
    "http://u:#PASSPART1@127.0.0.1:18601/a.txt",
    "http://user:1234/PASSPART1@host",
    "http://oauth2:99?PASSPART1@example.org:8443/a.txt",
]
#: what a query may carry (names in any case): the value is the secret
SIGNED = [
    (
        "https://b.s3.amazonaws.com/a.tgz?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAPASSPART1%2F20240101&X-Amz-Signature=PASSPART1abc",
        "'X-Amz-Credential', 'X-Amz-Signature'",
    ),
    ("https://b.s3.amazonaws.com/a.tgz?x-amz-security-token=PASSPART1", "'x-amz-security-token'"),
    (
        "https://storage.googleapis.com/b/a.tgz?X-Goog-Credential=sa%40p.iam&X-Goog-Signature=PASSPART1",
        "'X-Goog-Credential', 'X-Goog-Signature'",
    ),
    ("https://a.blob.core.windows.net/c/a.tgz?sv=2022-11-02&sr=b&sp=r&sig=PASSPART1%3D", "'sig'"),
    ("https://gitlab.com/api/v4/projects/1/a.txt?ref=main&private_token=glpat-PASSPART1", "'private_token'"),
    ("https://h.example/a.tgz?ACCESS_TOKEN=PASSPART1", "'ACCESS_TOKEN'"),
    ("https://raw.githubusercontent.com/o/r/main/a.txt?token=PASSPART1", "'token'"),
    ("https://h.example/a.tgz?X%2DAmz-Signature=PASSPART1", "'X-Amz-Signature'"),  # (encoded name)
]
#: an '@' in a path, an unsigned query: public URLs, taken as they are
PUBLIC = [
    "https://registry.npmjs.org/@scope/pkg/-/pkg-1.0.tgz",
    "https://example.org/a@b/c",
    "http://h:8080/p/@v/x",
    "http://localhost:4873/@babel/core/-/core-7.0.0.tgz",
    "http://localhost:8080/react@18.2.0/umd/react.js",
    "http://127.0.0.1:8080/react@18.2.0/umd/react.js",
    "https://proxy.golang.org:443/m/@v/v1.zip",
    "https://cdn.jsdelivr.net/npm/jquery@3.6.0/dist/jquery.min.js",
    "https://example.org/a.tgz?sig=abc",  # (sig is Azure's only beside sv)
    "https://example.org/a.tgz?token=",
    "https://example.org/download?file=a.tgz&tokens=2",
]


def evaluate(tmp_path, call: str):
    (tmp_path / "u.recipe").write_text(f"let g = {call}\n")
    ev = evaluate_file(tmp_path / "u.recipe")
    ev.attributes()  # (bindings are evaluated lazily)
    return ev.packages["g"]


def refused(tmp_path, call: str) -> tuple[str, str]:
    """The head of the recipe error ``call`` raises, and the whole message; checks that
    the caret stays under the URL's opening quote."""
    with pytest.raises(RecipeError) as e:
        evaluate(tmp_path, call)
    head, code, caret = str(e.value).splitlines()
    col = int(head.split(":")[2])
    assert code[caret.index("^")] == (tmp_path / "u.recipe").read_text()[col - 1] == '"', (code, caret)
    return head, str(e.value)


@pytest.mark.parametrize("url", CUT_SHORT)
def test_a_password_with_a_delimiter_in_it_is_refused(tmp_path, url):
    """It was ``u_PASSPART1.drv`` (or the whole URL in the .drv), and a build said
    ``nonnumeric port: 'PASSPART1'``."""
    head, text = refused(tmp_path, f'fetchurl {{ url = "{url}", sha256 = "{H}" }}')
    assert "u.recipe:1:26: fetchurl 'url' must not carry credentials" in head, head
    assert "a user name and a password" in head and "KILN_SOURCE_MIRRORS" in head, head
    assert "PASSPART1" not in text and ":***@" in text, text


@pytest.mark.parametrize(
    "url",
    [
        "https://x-access-token:PASSPART1#PW@github.com/o/r.git",
        "ssh://git:PASS/PART1@h/r.git",
        "https://ghp_PASSPART1:x-oauth-basic@github.com/o/r.git",  # (shown as ghp_PASSPART1:***@)
    ],
)
def test_fetchgit_refuses_a_password_with_a_delimiter_too(tmp_path, url):
    """``x-access-token_PASSPART1`` was the fetch's name."""
    head, text = refused(tmp_path, f'fetchgit {{ url = "{url}", rev = "main", sha256 = "{H}" }}')
    assert "fetchgit 'url' must not carry credentials" in head and "PASS" not in text, text


@pytest.mark.parametrize("url, names", SIGNED)
def test_a_signed_or_token_query_is_refused_naming_the_parameter(tmp_path, url, names):
    head, text = refused(tmp_path, f'fetchurl {{ url = "{url}", sha256 = "{H}" }}')
    assert "must not carry credentials, found the query parameter" in head and names in head, head
    assert "published" in head and "a source must be public" in head, head
    assert "hashed source mirror (KILN_SOURCE_MIRRORS)" in head, head
    assert "PASSPART1" not in text and "=***" in text, text


def test_fetchgit_refuses_a_token_query(tmp_path):
    """fetchgit's URL also went on the git child's command line."""
    head, text = refused(
        tmp_path,
        f'fetchgit {{ url = "https://gitlab.com/o/r.git?private_token=PASSPART1", rev = "main", sha256 = "{H}" }}',
    )
    assert "'private_token'" in head and "PASSPART1" not in text, text


@pytest.mark.parametrize("url", PUBLIC)
def test_public_urls_with_an_at_sign_or_a_query_are_taken(tmp_path, url):
    drv = evaluate(tmp_path, f'fetchurl {{ url = "{url}", sha256 = "{H}" }}')
    assert drv.env_map["url"] == url and url_credentials(url) is None
    assert redact_urls(url) == url or "?sig=" in url  # (hidden in messages all the same)


@pytest.mark.parametrize("url", ["http://h:8x/y", "http://h:99999/y", "http://[::1/y", "http://u:PASS#x"])
def test_a_port_that_does_not_parse_is_refused_at_evaluation(tmp_path, url):
    """Not at build time, quoting what urllib took for a port."""
    head, _ = refused(tmp_path, f'fetchurl {{ url = "{url}", sha256 = "{H}" }}')
    assert "must have a host and a port that parse" in head, head
    assert "nonnumeric" not in head and "cast" not in head, head


def test_redact_urls_hides_what_the_fetchers_refuse():
    """Everything ``url_credentials`` refuses is hidden in any text (stderr, excerpts)."""
    for url in [*CUT_SHORT, *(u for u, _ in SIGNED)]:
        assert url_credentials(url) is not None, url
        assert "PASSPART1" not in redact_urls(f"fetching {url}: HTTP 404"), url
    text = "http://h/m.txt?ref=a&private_token=glpat-PASSPART1: HTTP 404 (see 'https://h/x?sig=PASSPART1')"
    assert redact_urls(text) == "http://h/m.txt?ref=a&private_token=***: HTTP 404 (see 'https://h/x?sig=***')"
    assert (
        redact_urls('<a href="https://h/x?a=1&amp;token=PASSPART1">')
        == '<a href="https://h/x?a=1&amp;token=***">'
    )
    # a token as the user name (an empty password, GitHub's x-oauth-basic, a token's
    # prefix): it showed as ``ghp_PASSPART1:***@``
    for userinfo in ("ghp_PASSPART1:", "PASSPART1:x-oauth-basic", "glpat-PASSPART1:x"):
        assert redact_urls(f"see https://{userinfo}@github.com/o/r") == "see https://***@github.com/o/r"


def h(data: bytes) -> Hash:
    return Hash("sha256", hashlib.sha256(data).digest())


@pytest.mark.parametrize(
    "tail",
    ["u:PASSPART1#rest@{host}/file/f", "u:PASSPART1?rest@{host}/file/f", "{host}/file/f?token=PASSPART1"],
)
def test_the_fetcher_refuses_them_before_sending_anything(server, tmp_path, tail):
    """A hand-made derivation or ``kiln prefetch`` reaches the fetcher directly: it said
    ``bad URL or redirect: nonnumeric port: 'PASSPART1'``, or sent the token."""
    server.add("f", DATA)
    url = "http://" + tail.format(host=f"127.0.0.1:{server.httpd.server_port}")
    with pytest.raises(FetchError) as e:
        fetch_url([url], h(DATA), tmp_path / "f", mirrors=[], progress=False, retries=0)
    assert "credentials in a URL are not supported" in str(e.value) and "PASSPART1" not in str(e.value)
    assert "nonnumeric" not in str(e.value) and "KILN_SOURCE_MIRRORS" in str(e.value)
    assert server.log == []


def test_a_mirror_with_a_cut_short_password_is_skipped_without_echoing_it(
    server, tmp_path, monkeypatch, capsys
):
    server.add("f", DATA)
    monkeypatch.setenv(
        "KILN_SOURCE_MIRRORS", "http://u:SEK#RIT@127.0.0.1:9/m https://h.example/m?token=SEKRIT"
    )
    fetch_url([server.url("file/f")], h(DATA), tmp_path / "f", mirrors=[], progress=False)
    err = capsys.readouterr().err
    assert err.count("warning: skipping mirror") == 2 and "credentials in a URL are not supported" in err, err
    assert "SEK" not in err and "nonnumeric" not in err, err


def test_prefetch_refuses_them(capsys):
    assert main(["prefetch", "http://u:SEK/RIT@127.0.0.1:9/a.txt"]) == 1
    assert main(["prefetch", "http://127.0.0.1:9/missing.txt?private_token=glpat-SEKRIT"]) == 1
    # (the download's file name, which messages show, came from the raw URL: "u:SEK")
    assert main(["prefetch", "http://u:SEK#RIT@127.0.0.1:9/a.txt"]) == 1
    err = capsys.readouterr().err
    assert err.count("credentials in a URL are not supported") == 3, err
    assert "SEK" not in err and "nonnumeric" not in err and "missing.txt?private_token=***" in err, err


def test_fetch_git_refuses_a_token_query_before_starting_its_child(tmp_path):
    from kiln.store.fetch import fetch_git
    from kiln.store.fetchgit import GitFetchError

    for url in ("https://127.0.0.1:9/r.git?access_token=SEKRIT", "https://u:SEK#RIT@127.0.0.1:9/r.git"):
        with pytest.raises(GitFetchError) as e:
            fetch_git(url, "0" * 40, tmp_path / "src")
        assert "credentials in a URL are not supported" in str(e.value) and "SEK" not in str(e.value)
        assert not (tmp_path / "src").exists()


def test_a_redirect_to_a_cut_short_password_is_refused(server, tmp_path):
    """``"@" in netloc`` missed it; urllib then said ``nonnumeric port: 'SEK'``."""
    server.add("f", DATA)
    server.locations["cred"] = f"http://u:SEK#RIT@127.0.0.1:{server.httpd.server_port}/file/f"
    with pytest.raises(FetchError) as e:
        fetch_url([server.url("goto/cred")], h(DATA), tmp_path / "f", mirrors=[], progress=False, retries=0)
    assert "refusing a redirect to http://u:***@" in str(e.value) and "SEK" not in str(e.value), e.value
    assert [p for _, p, _ in server.log] == ["/goto/cred"]


def test_a_redirect_to_a_presigned_url_is_followed(server, tmp_path):
    """A server's redirect to a pre-signed URL (a release download) is its choice, recorded
    nowhere: followed."""
    server.add("f?X-Amz-Signature=abc", DATA)  # (the test server takes the query for the name)
    server.locations["s3"] = server.url("file/f?X-Amz-Signature=abc")
    fetch_url([server.url("goto/s3")], h(DATA), tmp_path / "f", mirrors=[], progress=False)
    assert (tmp_path / "f").read_bytes() == DATA


def test_a_malformed_location_is_described_without_quoting_it(server, tmp_path):
    """urllib's words quote what it took for a port: the start of a password."""
    server.add("f", DATA)
    server.locations["port"] = "http://127.0.0.1:SEKRIT/f"
    with pytest.raises(FetchError) as e:
        fetch_url([server.url("goto/port")], h(DATA), tmp_path / "f", mirrors=[], progress=False, retries=0)
    assert "bad URL or redirect: a port that is not a number" in str(e.value), e.value
    assert "SEKRIT" not in str(e.value)
