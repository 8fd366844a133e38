"""What a recipe's fetch URL may be: no credentials (they went into the store path name,
the .drv, provenance and SBOM), and only schemes the fetcher speaks (``ftp:`` was
dropped)."""

from __future__ import annotations

import pytest

pytest.importorskip("kiln.lang")

from kiln.lang import evaluate_file  # noqa: E402
from kiln.lang.errors import RecipeError  # noqa: E402

H = "0" * 64


def evaluate(tmp_path, call: str):
    (tmp_path / "u.recipe").write_text(f"let g = {call}\n")
    ev = evaluate_file(tmp_path / "u.recipe")
    ev.attributes()  # (bindings are evaluated lazily)
    return ev.packages["g"]


@pytest.mark.parametrize(
    "url",
    [
        "https://user:s3cr3t-pw@example.com/a.tar.gz",
        "https://s3cr3t-token@example.com/a.tar.gz",
        "http://user:s3cr3t-pw@example.com",  # no path: the secret was the fetch's name
    ],
)
def test_fetchurl_refuses_credentials_and_hides_them(tmp_path, url):
    with pytest.raises(RecipeError) as e:
        evaluate(tmp_path, f'fetchurl {{ url = "{url}", sha256 = "{H}" }}')
    # the message and the source line quoted under it both hide them (error output ends
    # up in CI logs); the caret stays under the same character
    head, code, caret = str(e.value).splitlines()
    assert "u.recipe:1:" in head and "must not carry credentials" in head, head
    assert "s3cr3t" not in head and "***@example.com" in head
    assert "s3cr3t" not in code and "***@example.com" in code, code
    col = int(head.split(":")[2])
    assert code[caret.index("^")] == (tmp_path / "u.recipe").read_text()[col - 1]


def test_fetchurl_refuses_credentials_in_any_of_its_urls(tmp_path):
    with pytest.raises(RecipeError, match="must not carry credentials"):
        evaluate(
            tmp_path,
            f'fetchurl {{ urls = ["https://e.com/a", "https://u:pw@e.com/a"], sha256 = "{H}" }}',
        )


def test_fetchurl_refuses_ftp_with_a_hint(tmp_path):
    with pytest.raises(RecipeError) as e:
        evaluate(tmp_path, f'fetchurl {{ url = "ftp://ftp.gnu.org/gnu/hello.tar.gz", sha256 = "{H}" }}')
    assert "which kiln cannot fetch; use the http or https URL of the same file" in str(e.value)
    with pytest.raises(RecipeError, match="must use one of the schemes http, https, file, debian"):
        evaluate(tmp_path, f'fetchurl {{ url = "s3://bucket/a.tar.gz", sha256 = "{H}" }}')


@pytest.mark.parametrize(
    "url",
    [
        "https://x-access-token:s3cr3t@github.com/o/r.git",
        "https://s3cr3t@github.com/o/r.git",
        "ssh://git:s3cr3t@h/r",
    ],
)
def test_fetchgit_refuses_credentials(tmp_path, url):
    with pytest.raises(RecipeError) as e:
        evaluate(tmp_path, f'fetchgit {{ url = "{url}", rev = "main", sha256 = "{H}" }}')
    text = str(e.value)
    assert "must not carry credentials" in text and "s3cr3t" not in text


def test_an_excerpt_hides_every_urls_credentials_and_keeps_its_caret(tmp_path):
    """Any error's excerpt: here an unknown name after two URLs with credentials, on a line
    of their own (the caret must move left by what was hidden)."""
    line = '{ a = "https://u:long-pw1@e.com/a"; b = "http://tok@e.com"; c = nope; }'
    (tmp_path / "u.recipe").write_text(f"let g = {line}\n")
    with pytest.raises(RecipeError) as e:
        evaluate_file(tmp_path / "u.recipe").attributes()
    head, code, caret = str(e.value).splitlines()
    assert "unknown name 'nope'" in head, head
    assert "pw1" not in code and "tok" not in code, code
    assert '"https://u:***@e.com/a"' in code and '"http://***@e.com"' in code, code
    assert code[caret.index("^") :].startswith("nope"), (code, caret)


@pytest.mark.parametrize("url", ["ssh://git@example.com/r/x.git", "git@example.com:r/x.git"])
def test_fetchgit_keeps_an_ssh_user_name(tmp_path, url):
    """An ssh user name names an account, not a secret."""
    drv = evaluate(tmp_path, f'fetchgit {{ url = "{url}", rev = "main", sha256 = "{H}" }}')
    assert drv.env_map["url"] == url


def test_the_fetchers_refuse_credentials_too(tmp_path):
    """A hand-made derivation or ``kiln prefetch --git`` reaches the fetchers directly."""
    from kiln.store.fetch import fetch_git
    from kiln.store.fetchgit import GitFetchError

    with pytest.raises(GitFetchError) as e:
        fetch_git("https://user:s3cr3t@127.0.0.1:9/r.git", "0" * 40, tmp_path / "src")
    assert "s3cr3t" not in str(e.value) and "credentials in a URL are not supported" in str(e.value)
    assert not (tmp_path / "src").exists()


@pytest.mark.parametrize(
    "url, shown",
    [
        ("https://user:pa/ss@host/a", "https://user:***@host/a"),  # a password holding '/'
        ("https://user:p@ss@host", "https://user:***@host"),  # ... or '@'
        ("https://user:s3#cr@host", "https://user:***@host"),
        ("http://h:8080/p/@v/x", "http://h:8080/p/@v/x"),  # a port and a path, no password
    ],
)
def test_an_excerpt_hides_credentials_as_stderr_does(url, shown):
    """The excerpt hides exactly what ``redact_urls`` hides on stderr (a narrower rule
    left part of a password through the API, and stderr's redaction then moved the
    caret)."""
    from kiln.lang.errors import SourceText
    from kiln.store.errors import redact_urls

    line = f'x = "{url}"; y = nope;'
    _, code, caret = str(RecipeError("m", SourceText("u.recipe", line), line.index("nope"))).splitlines()
    assert f'"{shown}"' in code and redact_urls(line) in code, code
    assert code[caret.index("^") :].startswith("nope"), (code, caret)
