"""Writing a git tree out as files (for ``fetchgit.fetch_git``), within limits, refusing
what a crafted tree could make of it.

Theory of operation
-------------------
The tree is written by walking git objects, not by a checkout, so no filters,
attributes, hooks or the host's git configuration can change the bytes:

- blobs become files, mode 0644, or 0755 when git records them executable;
- symlinks are kept as symlinks with the target stored in git;
- directories are 0755; submodules (gitlinks) become empty directories;
- nothing else (no ``.git``, no timestamps beyond what the filesystem sets).

Git stores an identical tree or blob once however often it is listed, so a repository of
a few KB can describe billions of files (a "git bomb"). The export therefore stops, before
anything is hashed, past ``MAX_EXPORT_ENTRIES`` entries or ``MAX_EXPORT_BYTES`` bytes, and
refuses a blob over ``MAX_BLOB_BYTES`` (libgit2 inflates a blob whole; kiln writes it from
that buffer without copying it) and directories nested deeper than ``MAX_EXPORT_DEPTH``
(the walk is iterative, but the NAR hash and tree removal that follow recurse per level);
the limits and their variables are ``fetchgit``'s (``fetchgit.limit``).

A tree that cannot be written (duplicate names in a crafted tree, a path too long) is
refused with ``GitFetchError`` by the caller; an entry named ``.git``, ``.``, ``..`` or
with a ``/``, and an entry whose object is missing or is not what its mode says (a "file"
or symlink that is a tree: the export would hand a tree to code that writes blobs) are
refused here, naming the entry. Entry names reach messages escaped and quoted
(``fetchtext.shown``): they are anyone's text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .fetchgit import GitFetchError, limit
from .fetchtext import shown

if TYPE_CHECKING:
    import pygit2

CHUNK = 1 << 20


class _Budget:
    """What an export may still create."""

    def __init__(self) -> None:
        self.entries = limit("MAX_EXPORT_ENTRIES")
        self.bytes = limit("MAX_EXPORT_BYTES")
        self.blob = limit("MAX_BLOB_BYTES")

    def entry(self, path: str) -> None:
        self.entries -= 1
        if self.entries < 0:
            raise GitFetchError(
                f"refusing tree: more than {limit('MAX_EXPORT_ENTRIES')} entries (at {_shown(path)}; "
                "KILN_GIT_MAX_ENTRIES raises the limit)"
            )

    def take(self, size: int, path: str) -> None:
        if size > self.blob:
            raise GitFetchError(
                f"refusing tree: {_shown(path)} is {size} bytes, more than {self.blob} "
                "(KILN_GIT_MAX_BLOB raises the limit)"
            )
        self.bytes -= size
        if self.bytes < 0:
            raise GitFetchError(
                f"refusing tree: more than {limit('MAX_EXPORT_BYTES')} bytes (at {_shown(path)}; "
                "KILN_GIT_MAX_BYTES raises the limit)"
            )


def export(repo: pygit2.Repository, tree: pygit2.Tree, out: Path) -> None:
    """Write ``tree`` to ``out`` (which must not exist), within the export limits."""
    import pygit2

    budget = _Budget()
    max_depth = limit("MAX_EXPORT_DEPTH")
    out.mkdir(mode=0o755)
    dirs = [out]  # chmod at the end: mkdir's mode is cut by the umask
    stack = [(tree, out, "", 0)]
    while stack:
        tree, here, rel, depth = stack.pop()
        if depth > max_depth:
            raise GitFetchError(
                f"refusing tree: directories nested more than {max_depth} deep (at {_shown(rel)}; "
                "KILN_GIT_MAX_DEPTH raises the limit)"
            )
        for entry in tree:
            assert entry.raw_name is not None  # (pygit2 names every entry of a tree)
            name = os.fsdecode(entry.raw_name)  # any bytes git holds, as the filesystem takes them
            if name in ("", ".", "..") or "/" in name or name == ".git":
                raise GitFetchError(f"refusing tree entry {_shown(rel + name)}")
            path = f"{rel}{name}"
            budget.entry(path)
            target = here / name
            mode = entry.filemode
            if mode == pygit2.GIT_FILEMODE_TREE:
                _checked_size(repo, entry, path, "tree")
                target.mkdir(mode=0o755)
                dirs.append(target)
                sub = repo[entry.id]
                assert isinstance(sub, pygit2.Tree)  # (``_checked_size`` said it is one)
                stack.append((sub, target, f"{path}/", depth + 1))
            elif mode == pygit2.GIT_FILEMODE_LINK:
                budget.take(_checked_size(repo, entry, path, "blob"), path)
                blob = repo[entry.id]
                assert isinstance(blob, pygit2.Blob)  # (``_checked_size`` said it is one)
                link = blob.data
                if not link or b"\0" in link:
                    raise GitFetchError(
                        f"refusing symlink {_shown(path)} with an empty target or a NUL byte in it"
                    )
                os.symlink(link, target)
            elif mode == pygit2.GIT_FILEMODE_COMMIT:
                target.mkdir(mode=0o755)  # submodule: not fetched, kept as an empty directory
                dirs.append(target)
            elif mode in (pygit2.GIT_FILEMODE_BLOB, pygit2.GIT_FILEMODE_BLOB_EXECUTABLE):
                # the size from the object header, before libgit2 inflates the blob
                budget.take(_checked_size(repo, entry, path, "blob"), path)
                blob = repo[entry.id]
                assert isinstance(blob, pygit2.Blob)  # (``_checked_size`` said it is one)
                _write_blob(blob, target)
                os.chmod(target, 0o755 if mode == pygit2.GIT_FILEMODE_BLOB_EXECUTABLE else 0o644)
            else:
                raise GitFetchError(f"unsupported git file mode {mode:o} for {_shown(path)}")
    for d in dirs:
        os.chmod(d, 0o755)


_KIND_OF_MODE = {"tree": "a directory", "blob": "a file or symlink"}


def _checked_size(repo: pygit2.Repository, entry: pygit2.Object, path: str, want: str) -> int:
    """The size of ``entry``'s object, from its header; raises ``GitFetchError`` naming
    the entry if the object is missing or is not a ``want`` (``"tree"`` or ``"blob"``:
    what the entry's mode says it is). A crafted tree may say "file" of a tree, and the
    export would then hand a tree to code that writes blobs."""
    import pygit2
    from pygit2.enums import ObjectType

    try:
        kind, size = repo.odb.read_header(entry.id)
    except (KeyError, ValueError, pygit2.GitError):
        raise GitFetchError(
            f"refusing tree: entry {_shown(path)} names object {entry.id}, which is missing"
        ) from None
    try:
        found = ObjectType(kind).name.lower()
    except ValueError:
        found = f"object of type {kind}"
    if found != want:
        raise GitFetchError(
            f"refusing tree: entry {_shown(path)} has mode {entry.filemode:o}, so its object "
            f"{entry.id} should be {_KIND_OF_MODE[want]} (a {want}), but it is a {found}"
        )
    return size


def _shown(path: str) -> str:
    """A tree path for a message: quoted and escaped (names in a tree are anyone's
    text), cut to a readable length."""
    return f"'{shown(path[:300])}'" + ("..." if len(path) > 300 else "")


def _write_blob(blob: pygit2.Blob, target: Path) -> None:
    # a memoryview of libgit2's buffer: no Python copy of the contents (``.data`` would be one)
    view = memoryview(blob)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        for i in range(0, len(view), CHUNK):
            f.write(view[i : i + CHUNK])
