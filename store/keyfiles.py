"""Key files: reading and writing ``signing``'s keys in Nix's text format.

Secret key files are written 0600 through a temporary file in the same directory and
hard-linked into place (never replacing an existing key unless asked), so a crash never
leaves a partial key and a key is never world-readable for an instant. A secret key file
that group or others may read is refused, as ssh does.
"""

from __future__ import annotations

import os
import stat
import tempfile

from .errors import FormatError, KilnError
from .signing import PublicKey, SecretKey, may_be_secret


def load_secret_key(path: str | os.PathLike) -> SecretKey:
    """Read a secret key file (Nix format). Warns nothing, prints nothing. A file that
    group or others may read is refused (as ssh does): the key signs paths and
    attestations, and a copy readable by other users is a leaked key."""
    if may_be_secret(os.fspath(path)) and not os.path.lexists(path):
        # the key itself where its file belongs: never echo it (error output ends up in logs)
        raise FormatError(
            "a secret key was given where its file was expected (the key is not shown): "
            "write it to a file with mode 0600 and give that file"
        )
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FormatError(f"{os.fspath(path)}: no such secret key file") from None
    if not stat.S_ISREG(mode):  # (a FIFO would block the read for ever)
        raise FormatError(f"{os.fspath(path)}: not a secret key file (not a regular file)")
    if mode & 0o077 and _is_public_key_file(path):  # the usual mix-up: say that, not chmod
        raise FormatError(f"{os.fspath(path)} is a public key; signing needs the secret key (NAME.sec)")
    if mode & 0o077:
        raise FormatError(
            f"secret key file {os.fspath(path)} is accessible by group/others (mode {mode & 0o777:o}); "
            f"run: chmod 600 {os.fspath(path)}"
        )
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise FormatError(f"{os.fspath(path)}: not a secret key file (non-ASCII content)") from None
    try:
        return SecretKey.parse(text)
    except FormatError as e:
        if _is_public_key_file(path):
            raise FormatError(
                f"{os.fspath(path)} is a public key; signing needs the secret key (NAME.sec)"
            ) from None
        raise FormatError(f"{os.fspath(path)}: {e}") from None


def _is_public_key_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a public key (read at most a line's worth)."""
    try:
        with open(path, "rb") as f:
            head = f.read(200)
        PublicKey.parse(head.decode("ascii"))
        return True
    except (OSError, UnicodeDecodeError, FormatError):
        return False


def load_public_key(path: str | os.PathLike) -> PublicKey:
    """Read a public key file (Nix format)."""
    if not stat.S_ISREG(os.stat(path).st_mode):  # (a FIFO would block the read for ever)
        raise FormatError(f"{os.fspath(path)}: not a public key file (not a regular file)")
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise FormatError(f"{os.fspath(path)}: not a public key file (non-ASCII content)") from None
    try:
        return PublicKey.parse(text)
    except FormatError as e:
        raise FormatError(f"{os.fspath(path)}: {e}") from None


def _write_atomic(path: str | os.PathLike, text: str, mode: int, overwrite: bool) -> None:
    path = os.fspath(path)
    if os.path.isdir(path):  # else the error would name the temp file renamed over it
        raise KilnError(f"{path} is a directory; name the key file to write")
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".key-", dir=d)  # mkstemp creates it 0600
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
        os.fsync(fd)
        os.close(fd)
        fd = -1
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic create-if-absent
            except FileExistsError:
                raise KilnError(f"{path} already exists; refusing to overwrite a key file") from None
            os.unlink(tmp)
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.lexists(tmp):
            os.unlink(tmp)


def write_secret_key(path: str | os.PathLike, key: SecretKey, *, overwrite: bool = False) -> None:
    """Create ``path`` (mode 0600) holding ``key``; atomic, refuses to replace an
    existing file unless ``overwrite``."""
    _write_atomic(path, key.to_text(), 0o600, overwrite)


def write_public_key(path: str | os.PathLike, key: PublicKey, *, overwrite: bool = False) -> None:
    """Create ``path`` (mode 0644) holding ``key``."""
    _write_atomic(path, key.to_text(), 0o644, overwrite)
