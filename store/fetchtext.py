"""What fetch messages show of URLs and of what servers send, and URLs with credentials.

A fetch error quotes text that someone else chose: a server's reason phrase, status line
or ``Location``, a git remote's error, a tree entry's name. Printed raw, its escape
sequences would reach the operator's terminal (set its title, rewrite the line above, the
clipboard with OSC 52), and a newline in it could forge a line of kiln's own. ``shown``
escapes such text as build output is escaped (``buildlogs.shown_output``) and writes a
newline as ``\\n``; every fetch module builds its messages from server text through it.

kiln sends no credentials with a fetch: no ``user:password@`` in URLs, no netrc, no
tokens. A URL carrying any (``errors.url_credentials``: a user name or password, also
one whose unencoded ``/``, ``?`` or ``#`` made it look like a port and a path; a
pre-signed URL's signature or a token in its query) is refused (``refuse_credentials``)
before anything is sent or a child is started with it, rather than sent and failing in a
way that echoes them (urllib took ``user:password@host`` for a host and port and quoted
the password in its error); ``shown_url`` hides them in every message that names a URL,
and ``bad_url_reason`` says why a URL did not parse without quoting urllib's words.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .errors import KilnError, redact_urls, url_credentials

if TYPE_CHECKING:
    import http.client

_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)@")


def shown(text: str) -> str:
    """``text`` (from a server, a remote or an archive) for a one-line message: control
    characters, bidi controls and bytes that were not UTF-8 escaped, a newline as ``\\n``."""
    from .buildlogs import shown_output  # (lazily: it imports zstandard)

    return shown_output(text).replace("\n", "\\n")


def shown_url(url: str) -> str:
    """``url`` for a message: its user name and password replaced by ``***``, whatever else
    ``errors.redact_urls`` hides hidden too, then ``shown``."""
    return shown(redact_urls(_USERINFO.sub(lambda m: m.group(1) + "***@", url, count=1)))


def file_name(url: str) -> str | None:
    """The file name ``url`` gives (its path's last component, without query or fragment),
    for a message, escaped; None if it names none (``http://host/``, ``.``, ``..``) or
    carries credentials (which may hide where the path starts: ``u:PASS#x@host/f``)."""
    if url_credentials(url) is not None:
        return None
    url = url.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    name = url.rsplit("/", 1)[-1]
    if "://" in url and url.split("://", 1)[1] == name:  # only a host: no file name
        return None
    return shown(name) if name not in ("", ".", "..") else None


def refuse_credentials(url: str, error: type[KilnError], *, ssh_user: bool = False) -> None:
    """Raise ``error`` if ``url`` carries credentials (``errors.url_credentials``), with
    them hidden in the message. ``ssh_user``: a user name without a password is allowed
    in an ``ssh://`` URL (git's ``git@host``), where it names an account and no secret."""
    found = url_credentials(url, ssh_user=ssh_user)
    if found is None:
        return
    raise error(
        f"refusing {shown_url(url)}: credentials in a URL are not supported (found {found}; "
        "kiln sends no user name, password or token, and a URL is recorded in the fetch's "
        ".drv, provenance and SBOM); a source must be public: serve it without them, or put "
        "it in a hashed source mirror (KILN_SOURCE_MIRRORS)"
    )


def bad_url_reason(e: ValueError | http.client.InvalidURL) -> str:
    """Why urllib or http.client refused a URL or ``Location``, in kiln's words: theirs
    quote what they took for a port ("nonnumeric port: 'PASS'": a password's start)."""
    text = str(e).lower()
    if isinstance(e, UnicodeError):  # (IDNA)
        return "a host name that cannot be encoded (a label empty or over 63 characters)"
    if "port" in text:
        return "a port that is not a number from 0 to 65535"
    if "ipv6" in text:
        return "an IPv6 address not closed by ']'"
    if "control character" in text:
        return "a control character"
    return "a host or port that does not parse"
