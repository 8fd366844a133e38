"""URLs of the fetchers (``fetchurl``, ``fetchgit``, ``debian_rootfs``' lock entries):
what a recipe may write, and the derivation name a fetch gets. Pure string rules; an
error is a ``BadValue`` located at the node that gave the URL.

- No whitespace (the fetcher's ``urls`` variable is whitespace-separated: write ``%20``)
  and no control characters (no URL holds one); the scheme is kept in lower case
  (schemes are case-insensitive, RFC 3986, and the fetchers match them exactly).
- A URL has a scheme or is an absolute path: a relative path would be read from
  wherever kiln runs, so one recipe would fetch different files in different places.
  ``fetchgit`` also takes git's scp-like ``host:path``.
- A ``fetchurl`` scheme is one the fetcher speaks: ``http``, ``https``, ``file`` or
  ``debian``. ``ftp`` is refused with a hint (the fetcher dropped it: no pace rule held
  an FTP server to time), as is any other scheme, rather than failing at build time.
- No credentials (``kiln.store.errors.url_credentials``): no ``user:password@`` or
  ``token@`` (also when an unencoded ``/``, ``?`` or ``#`` in the password made it look
  like a port and a path), and no query parameter that carries one (a pre-signed S3,
  GCS or Azure URL's signature, ``private_token``, ``access_token``, ``token``...). kiln
  sends none, and a URL is recorded in the fetch's name, its ``.drv``, provenance and
  SBOM, so a secret in it would be published with every one of them: a source must be
  public, or come from a hashed source mirror. The error shows the URL with them hidden
  (``redact_urls``). ``fetchgit`` allows a user name alone in ``ssh://`` and scp-like
  URLs (``git@host:repo``), where it names an account, not a secret.
- A ``scheme://`` URL's host and port parse (a port is a number up to 65535, an IPv6
  literal is closed), so that a build does not fail on it later, quoting what urllib
  took for a port (once the start of a password).
"""

from __future__ import annotations

import re
import urllib.parse

from kiln.store.errors import redact_urls, url_credentials

from . import nodes as ast
from .compile import sanitize_name
from .errors import BadValue

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
#: what the fetcher speaks (``kiln.store.fetch``)
_FETCHURL_SCHEMES = ("http", "https", "file", "debian")


def _refuse_credentials(url: str, node: ast.Node, what: str, ssh_user: bool = False) -> None:
    """Raise ``BadValue`` (the URL shown with its credentials hidden) if ``url`` (scheme
    already lower-cased) carries any (``url_credentials``; ``ssh_user`` lets a user name
    alone through in an ``ssh://`` URL), or has a host or port that does not parse."""
    found = url_credentials(url, ssh_user=ssh_user)
    if found is not None:
        raise BadValue(
            f"{what} must not carry credentials, found {found} in {redact_urls(url)!r}: kiln sends "
            "none, and the URL is recorded in the fetch's name, .drv, provenance and SBOM, and "
            "published with them; a source must be public: serve the file without them, or "
            "from a hashed source mirror (KILN_SOURCE_MIRRORS)",
            node.src,
            node.pos,
        )
    if re.match(r"[a-z][a-z0-9+.-]*://", url):  # (not git's scp-like host:path)
        try:
            urllib.parse.urlsplit(url).port  # noqa: B018 - raises for a bad port or IPv6 literal
        except ValueError:
            # (not urllib's words: they quote what it took for a port)
            raise BadValue(
                f"{what} must have a host and a port that parse (a port is a number up to 65535, "
                f"an IPv6 address is closed by ']'), found {redact_urls(url)!r}",
                node.src,
                node.pos,
            ) from None


def checked_url(url: str, node: ast.Node, what: str) -> str:
    """``url`` without whitespace or control characters, its scheme lower-cased."""
    if not url or any(c.isspace() or ord(c) < 32 or 127 <= ord(c) < 160 for c in url):
        found = "an empty string" if not url else repr(url)
        raise BadValue(
            f"{what} must be a URL without whitespace or control characters (write %20 for a "
            f"space), found {found}",
            node.src,
            node.pos,
        )
    m = _SCHEME.match(url)
    return url if m is None else m.group().lower() + url[m.end() :]


def fetch_url(url: str, node: ast.Node, what: str) -> str:
    """A ``fetchurl`` URL: ``checked_url``, without credentials, with a scheme the
    fetcher speaks (``http:``, ``https:``, ``file:``, ``debian:``) or an absolute path; a
    local file is ``file:///path``."""
    url = checked_url(url, node, what)
    _refuse_credentials(url, node, what)
    scheme = _SCHEME.match(url)
    if scheme is not None and scheme.group()[:-1] not in _FETCHURL_SCHEMES:
        hint = "; use the http or https URL of the same file" if scheme.group() == "ftp:" else ""
        raise BadValue(
            f"{what} must use one of the schemes {', '.join(_FETCHURL_SCHEMES)}, found {url!r}, "
            f"which kiln cannot fetch{hint}",
            node.src,
            node.pos,
        )
    relative = not url.startswith("/") and not _SCHEME.match(url)
    # file: must name an absolute path on this machine: file:///p or file:/p (file://host/p
    # would read /p's host part as a directory; the fetcher matches the scheme exactly)
    if relative or (url.startswith("file:") and not re.match(r"file:(/[^/]|///|//localhost/)", url)):
        raise BadValue(
            f"{what} must be a URL with a scheme or an absolute path (a local file: file:///path), "
            f"found {url!r}, which would be read from wherever kiln runs "
            '(for a file beside the recipe use path "./...")',
            node.src,
            node.pos,
        )
    return url


def git_url(url: str, node: ast.Node, what: str) -> str:
    """A ``fetchgit`` URL: ``checked_url``, without credentials (a user name alone is
    allowed in ``ssh://`` URLs), with any scheme, an absolute path, or scp-like
    ``host:path`` (git's own rule: a colon before the first slash)."""
    url = checked_url(url, node, what)
    _refuse_credentials(url, node, what, ssh_user=True)
    colon, slash = url.find(":"), url.find("/")
    if (
        not url.startswith("/")
        and not _SCHEME.match(url)
        and not (colon > 0 and (slash < 0 or colon < slash))
    ):
        raise BadValue(
            f"{what} must be a URL with a scheme, host:path or an absolute path, found "
            f"{url!r}, which would be read from wherever kiln runs",
            node.src,
            node.pos,
        )
    return url


def url_name(url: str, strip_git: bool = False) -> str:
    """The name of a fetch of ``url``: its last path component (without query or
    fragment; without ``.git`` if ``strip_git``), as ``fetch_name`` makes it."""
    base = url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    if strip_git and base.endswith(".git"):
        base = base[:-4]
    return fetch_name(base)


def fetch_name(base: str) -> str:
    """The derivation name of a fetch of a file named ``base`` (a URL's or a lock
    entry's): made a valid store path name, and not ending in ``.drv``
    (``check_drv_name``): ``x.drv`` fetches as ``x_drv``."""
    name = sanitize_name(base)
    return name[:-4] + "_drv" if name.endswith(".drv") else name
