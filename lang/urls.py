"""URLs of the fetchers (``fetchurl``, ``fetchgit``, ``debian_rootfs``' lock entries):
what a recipe may write, and the derivation name a fetch gets. Pure string rules; an
error is a ``BadValue`` located at the node that gave the URL.

- No whitespace (the fetcher's ``urls`` variable is whitespace-separated: write ``%20``)
  and no control characters (no URL holds one); the scheme is kept in lower case
  (schemes are case-insensitive, RFC 3986, and the fetchers match them exactly).
- A URL has a scheme or is an absolute path: a relative path would be read from
  wherever kiln runs, so one recipe would fetch different files in different places.
  ``fetchgit`` also takes git's scp-like ``host:path``.
"""

from __future__ import annotations

import re

from . import nodes as ast
from .compile import sanitize_name
from .errors import BadValue

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


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
    """A ``fetchurl`` URL: ``checked_url``, with a scheme (``https:``, ``file:``,
    ``debian:``...) or an absolute path; a local file is ``file:///path``."""
    url = checked_url(url, node, what)
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
    """A ``fetchgit`` URL: as ``fetch_url``, or scp-like ``host:path`` (git's own rule:
    a colon before the first slash)."""
    url = checked_url(url, node, what)
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
