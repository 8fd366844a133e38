"""Key files: reading and writing ``signing``'s keys in Nix's text format.

Secret key files are written 0600 through a temporary file in the same directory and
hard-linked into place (never replacing an existing key unless asked), so a crash never
leaves a partial key and a key is never world-readable for an instant. A secret key file
that group or others may read is refused, as ssh does. A file that is a secret key file
by its name or mode is never shown as a public key unless it holds a secret key
(``public_key_of``): a seed alone is spelled as a public key is.

A process that has loaded a secret key writes no core dump (``load_secret_key`` sets
its soft ``RLIMIT_CORE`` to 0): a crash of a long-running ``kiln serve --sign-key``
would otherwise hand the key, in its memory, to the host's ``core_pattern`` handler
(systemd-coredump keeps dumps on disk). It also makes itself non-dumpable
(``PR_SET_DUMPABLE`` 0): another process of the same user can no longer attach to it or
read its memory through ``/proc/PID/mem`` (Debian's default ``ptrace_scope`` is 0, so any
of that user's processes could); root still can. Programs it runs are dumpable again
(``execve`` resets the flag).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import stat
import tempfile

from .errors import FormatError, KilnError
from .signing import PublicKey, SecretKey, may_be_secret

#: the most a key file is read for (a key is under 200 bytes; /dev/zero is not a key)
MAX_KEY_FILE = 64 << 10


def load_secret_key(path: str | os.PathLike) -> SecretKey:
    """Read a secret key file (Nix format), or a pipe (``--key <(pass show k)``,
    ``/dev/stdin``: a key that never touches the disk). Warns nothing, prints nothing. A
    file that group or others may read is refused (as ssh does): the key signs paths and
    attestations, and a copy readable by other users is a leaked key."""
    if may_be_secret(os.fspath(path)) and not os.path.lexists(path):
        # the key itself where its file belongs, most likely: never echo it
        raise FormatError(
            "no such secret key file (what was given looks like key text, so it is not shown: "
            "a key goes in a file with mode 0600, and the file is given)"
        )
    try:
        mode, raw = read_key_file(path, "secret key")
    except FileNotFoundError:
        raise FormatError(f"{os.fspath(path)}: no such secret key file") from None
    text = _ascii(raw, path, "secret")
    if mode & 0o077 and _is_public_key(text):  # the usual mix-up: say that, not chmod
        raise FormatError(f"{os.fspath(path)} is a public key; signing needs the secret key (NAME.sec)")
    if mode & 0o077:
        raise FormatError(
            f"secret key file {os.fspath(path)} is accessible by group/others (mode {mode & 0o777:o}); "
            f"run: chmod 600 {os.fspath(path)}"
        )
    try:
        key = SecretKey.parse(text)
    except FormatError as e:
        if _is_public_key(text):
            raise FormatError(
                f"{os.fspath(path)} is a public key; signing needs the secret key (NAME.sec)"
            ) from None
        raise FormatError(f"{os.fspath(path)}: {e}") from None
    _no_core_dumps()
    return key


def _no_core_dumps() -> None:
    """No core dump of this process from now on, and no same-user ptrace (the module
    docstring): soft limit 0, the hard one left (lowering it is for good); then
    ``PR_SET_DUMPABLE`` 0 where the C library offers ``prctl``."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc/musl on Linux: the rlimit alone
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE


def load_public_key(path: str | os.PathLike) -> PublicKey:
    """Read a public key file (Nix format), or a pipe."""
    _, raw = read_key_file(path, "public key")
    try:
        return PublicKey.parse(_ascii(raw, path, "public"))
    except FormatError as e:
        raise FormatError(f"{os.fspath(path)}: {e}") from None


def public_key_of(path: str | os.PathLike) -> PublicKey:
    """The public key of a secret or public key file (``kiln key public``): derived from a
    secret key (whatever the file's mode: nothing secret is shown), else the file's own.

    A file that is a secret key file by its name (``.sec``, or a link to one) or by its
    mode (a regular file that neither group nor others may read, unless named ``.pub``:
    a public key fetched under umask 077) but holds no secret key is refused: a 32-byte
    seed alone is spelled as a public key is, and printed as one it would leak."""
    mode, raw = read_key_file(path, "secret or public key")
    text = _ascii(raw, path, "secret or public")
    if len(text.strip().partition(":")[2]) > 60:  # 64 bytes are 88 base64 characters, 32 are 44
        try:
            return SecretKey.parse(text).public()
        except FormatError as e:
            raise FormatError(f"{os.fspath(path)}: {e}") from None
    try:
        key = PublicKey.parse(text)
    except FormatError as e:
        raise FormatError(f"{os.fspath(path)}: {e}") from None
    if why := _secret_file(path, mode):
        raise FormatError(
            f"{os.fspath(path)} is a secret key file by its {why} but holds no secret key: what it holds "
            "is not shown as a public key, as it may be a secret seed (a public key file is NAME.pub, mode 644)"
        )
    return key


def _secret_file(path: str | os.PathLike, mode: int) -> str:
    """Why ``path`` (of ``mode``, fstat'ed) is a secret key file: ``name (.sec)``, ``mode
    (600)``, or ``""`` if it is not one by either."""
    names = {os.path.basename(os.fspath(path)), os.path.basename(os.path.realpath(path))}
    if any(n.endswith(".sec") for n in names):
        return "name (.sec)"
    if stat.S_ISREG(mode) and not mode & 0o044 and not any(n.endswith(".pub") for n in names):
        return f"mode ({mode & 0o777:o}: no one else may read it)"
    return ""


def read_key_file(path: str | os.PathLike, what: str) -> tuple[int, bytes]:
    """(mode, bytes) of a key file or pipe (a ``what`` file: "secret key", "token"...), at
    most ``MAX_KEY_FILE`` bytes. Opened without blocking: a FIFO nobody writes to then
    reads as empty instead of hanging the open."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise FormatError(f"{os.fspath(path)} is a directory, not a {what} file")
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while size <= MAX_KEY_FILE and (b := os.read(fd, 4096)):
            chunks.append(b)
            size += len(b)
        if size > MAX_KEY_FILE:
            raise FormatError(f"{os.fspath(path)}: not a {what} file (over {MAX_KEY_FILE} bytes)")
        return mode, b"".join(chunks)
    finally:
        os.close(fd)


def _ascii(raw: bytes, path: str | os.PathLike, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(f"{os.fspath(path)}: not a {what} key file (non-ASCII content)") from None


def _is_public_key(text: str) -> bool:
    try:
        PublicKey.parse(text)
        return True
    except FormatError:
        return False


def _write_atomic(path: str | os.PathLike, text: str, mode: int, overwrite: bool) -> None:
    path = os.fspath(path)
    if os.path.isdir(path):  # else the error would name the temp file renamed over it
        raise KilnError(f"{path} is a directory; name the key file to write")
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(os.lstat(path).st_mode):  # (a rename would put a key where /dev/null was)
            raise KilnError(f"{path} is not a regular file; refusing to replace it with a key file")
    d = os.path.dirname(os.path.abspath(path))
    _sweep_stale_temps(d)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=d)  # mkstemp creates it 0600
    try:
        os.fchmod(fd, mode)
        data = memoryview(text.encode())
        while data:  # a short write (a file size limit) must not link half a key into place
            if not (n := os.write(fd, data)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = data[n:]
        os.fsync(fd)
        closing, fd = fd, -1  # (cleared first: a signal between the two must not close it twice)
        os.close(closing)
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
    except OSError as e:
        if e.filename is not None:
            raise
        # a write or fsync (a full disk) names no file: this one's
        raise OSError(e.errno, e.strerror, path) from None
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.lexists(tmp):
            os.unlink(tmp)


#: kiln's key temp files: a name no one else uses, since the sweep deletes them (``-o``
#: may name any directory, a home or /tmp)
TEMP_PREFIX = ".kiln-keyfile-tmp-"
#: a temp file older than this is a killed writer's (a write takes milliseconds)
STALE_TEMP_S = 3600


def _sweep_stale_temps(d: str) -> None:
    """Remove ``TEMP_PREFIX`` temp files a writer killed mid-write left in ``d`` (one may
    hold a secret key; nothing else would ever remove it). Only files this process's
    user owns: in a shared directory (/tmp) another user's are not ours to judge."""
    import time

    try:
        names = [n for n in os.listdir(d) if n.startswith(TEMP_PREFIX)]
    except OSError:
        return
    old = time.time() - STALE_TEMP_S
    for n in names:
        p = os.path.join(d, n)
        with contextlib.suppress(OSError):
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < old and st.st_uid == os.geteuid():
                os.unlink(p)


def write_secret_key(path: str | os.PathLike, key: SecretKey, *, overwrite: bool = False) -> None:
    """Create ``path`` (mode 0600) holding ``key``; atomic, refuses to replace an
    existing file unless ``overwrite``."""
    _write_atomic(path, key.to_text(), 0o600, overwrite)


def write_public_key(path: str | os.PathLike, key: PublicKey, *, overwrite: bool = False) -> None:
    """Create ``path`` (mode 0644) holding ``key``."""
    _write_atomic(path, key.to_text(), 0o644, overwrite)
