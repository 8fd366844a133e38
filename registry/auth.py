"""Tokens with scopes (Bearer, or HTTP Basic passwords), stored hashed in the registry's private state.

A token is ``kiln_<id>_<secret>`` where ``id`` is 8 random hex characters (lets the
server find the record without scanning) and ``secret`` 32 random bytes in urlsafe
base64. The registry keeps only ``sha256(secret)`` in ``.kiln/tokens.json`` (mode
0600), so reading that file does not reveal a usable token; the plaintext is printed
once by ``kiln registry token create``. Because secrets carry 256 bits of entropy, a
plain SHA-256 is enough (no password-stretching is needed) and comparison is
constant-time.

Scopes: ``read`` (needed only when the server runs with ``--private``) and ``write``
(PUT of NARs, blobs and narinfos). ``write`` implies ``read``.

A token is presented as ``Authorization: Bearer <token>`` (kiln's clients) or as the
password of HTTP Basic auth, under any user name (``Basic base64(user:token)``: what Nix
sends from a ``netrc-file``, as for attic). Both lead to the same checks, scopes and
constant-time comparison (``presented_token`` then ``TokenStore.check``); a Basic value
that does not decode (not base64, not UTF-8, no ``:``) is an ``AuthError`` naming why
(a 401), never another exception. A token is ASCII by construction, so one holding any
other character is malformed before it is hashed.

Tokens are refused (``UnsafeStore``, naming the ``chmod``/``chown``) when another local
user could change them: the registry directory, ``.kiln/`` or the token file owned by
another user than the one reading them (root excepted) or writable by group or others.
Such a user could add a ``write`` token of their own (``kiln.store.perms``' rule for a
store, applied to the registry's private state).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass

from kiln.store import perms
from kiln.store.errors import KilnError

from .storage import Storage

TOKENS_KEY = ".kiln/tokens.json"
SCOPES = ("read", "write")


class AuthError(KilnError):
    """A token is malformed, unknown, or lacks a scope."""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One stored token: never holds the secret, only its SHA-256."""

    token_id: str
    secret_sha256: str
    scopes: tuple[str, ...]
    created: int
    comment: str = ""


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _split(token: str) -> tuple[str, str]:
    parts = token.strip().split("_", 2)
    # (isascii: tokens are ASCII; any other character, however the header was decoded, is
    # malformed and never hashed)
    if len(parts) != 3 or parts[0] != "kiln" or len(parts[1]) != 8 or not parts[2] or not token.isascii():
        raise AuthError("malformed token (expected kiln_<id>_<secret>)")
    return parts[1], parts[2]


_EXPECTED = "expected 'Authorization: Bearer <token>', or the token as the Basic-auth password"


def presented_token(authorization: str | None) -> str:
    """The token an ``Authorization`` header value presents: ``Bearer <token>``, or
    ``Basic <base64(user:token)>`` with any user name (the password is the token).
    Raises ``AuthError`` saying what is wrong when there is none or the value is
    malformed; does not check the token's own shape (``_split`` does)."""
    if not authorization:
        raise AuthError(f"missing token ({_EXPECTED})")
    kind, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if kind.lower() == "bearer" and value:
        return value
    if kind.lower() != "basic" or not value:
        raise AuthError(_EXPECTED)
    try:
        decoded = base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        raise AuthError("malformed Basic credentials: not base64") from None
    try:
        text = decoded.decode()
    except UnicodeDecodeError:
        raise AuthError("malformed Basic credentials: not UTF-8") from None
    _user, colon, password = text.partition(":")
    if not colon:
        raise AuthError("malformed Basic credentials: no ':' between user name and password")
    if not password:
        raise AuthError("malformed Basic credentials: empty password (the password is the token)")
    return password


def presented_token_id(authorization: str | None) -> str | None:
    """The id of the token an ``Authorization`` header value presents (Bearer, or Basic
    with the token as password), if the token is well formed (``kiln_``, 8 lowercase hex
    digits, ``_``, a secret); else None. For the access log of a refused request: the id
    is not secret (``token list`` shows it), and only an id of that shape can reach the
    log line."""
    try:
        token = presented_token(authorization)
    except AuthError:
        return None
    parts = token.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != "kiln" or not parts[2]:
        return None
    token_id = parts[1]
    return token_id if len(token_id) == 8 and all(c in "0123456789abcdef" for c in token_id) else None


class TokenStore:
    """Token records of one registry, read from and written to its storage."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._records: dict[str, TokenRecord] = {}
        self._stamp: tuple[int, int, int] | None = None
        self.reload()

    def _current_stamp(self) -> tuple[int, int, int] | None:
        path = self.storage.local_path(TOKENS_KEY)
        if path is None:
            return None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return (0, 0, 0)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _check_private(self) -> None:
        """Refuse tokens another user could change (module docstring)."""
        path = self.storage.local_path(TOKENS_KEY)
        if path is None:
            return
        perms.check_chain(
            [path.parent.parent, path.parent, path],
            f"the tokens of the registry at {path.parent.parent}",
            harm="who may push there",
        )

    def reload(self) -> None:
        self._check_private()
        self._stamp = self._current_stamp()
        data = self.storage.read(TOKENS_KEY)
        recs: dict[str, TokenRecord] = {}
        if data:
            try:
                for r in json.loads(data)["tokens"]:
                    recs[r["id"]] = TokenRecord(
                        r["id"], r["sha256"], tuple(r["scopes"]), int(r["created"]), r.get("comment", "")
                    )
            except (ValueError, KeyError, TypeError) as e:
                raise AuthError(f"token file {TOKENS_KEY} is corrupt: {e}") from None
        self._records = recs

    def create(self, scopes: list[str], comment: str = "") -> str:
        """Make a token with ``scopes``, store its hash, return the plaintext (show once).
        ``comment`` must be printable: ``token list`` prints a token per line, tab-separated."""
        if not comment.isprintable():
            raise KilnError(f"a token comment must be printable (no tab or line break): {comment!r}")
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise AuthError(f"unknown scope(s) {bad or scopes} (known: {', '.join(SCOPES)})")
        if "write" in scopes and "read" not in scopes:
            scopes = ["read", *scopes]
        self.reload()
        token_id = secrets.token_hex(4)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        self._records[token_id] = TokenRecord(
            token_id, _hash_secret(secret), tuple(sorted(set(scopes))), int(time.time()), comment
        )
        self._save()
        return f"kiln_{token_id}_{secret}"

    def revoke(self, token_id: str) -> TokenRecord | None:
        """Remove ``token_id``; return its record, or None if there was none."""
        self.reload()
        rec = self._records.pop(token_id, None)
        if rec is not None:
            self._save()
        return rec

    def records(self) -> list[TokenRecord]:
        return list(self._records.values())

    def _save(self) -> None:
        body = {
            "tokens": [
                {"id": r.token_id, "sha256": r.secret_sha256, "scopes": list(r.scopes), "created": r.created}
                | ({"comment": r.comment} if r.comment else {})
                for r in self._records.values()
            ]
        }
        self.storage.put_bytes(TOKENS_KEY, json.dumps(body, indent=1).encode())
        path = self.storage.local_path(TOKENS_KEY)
        if path is not None:
            os.chmod(path, 0o600)

    def check(self, authorization: str | None, scope: str) -> TokenRecord:
        """Validate an ``Authorization`` header value (Bearer, or Basic with the token as
        password: ``presented_token``) for ``scope``; raise ``AuthError``."""
        token_id, secret = _split(presented_token(authorization))
        # The token file is replaced atomically on every change, so one stat tells a
        # running server about tokens created or revoked since it last looked.
        stamp = self._current_stamp()
        if stamp is None or stamp != self._stamp:
            try:
                self.reload()
            except perms.UnsafeStore as e:
                # the detail (paths, modes) is the operator's, on the server's stderr
                print(f"kiln serve: {e}", file=sys.stderr, flush=True)
                raise AuthError("the server refuses its own tokens (see its log)") from None
        rec = self._records.get(token_id)
        if rec is None or not hmac.compare_digest(rec.secret_sha256, _hash_secret(secret)):
            raise AuthError("unknown or revoked token")
        if scope not in rec.scopes:
            raise AuthError(f"token {token_id} lacks the '{scope}' scope (has: {', '.join(rec.scopes)})")
        return rec
