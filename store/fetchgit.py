"""``fetch_git``: the tree of one git revision, exported without ``.git``.

Theory of operation
-------------------
A throw-away bare repository is created next to ``dest`` and the wanted revision is
fetched into it with pygit2 (libgit2): first by asking for the object id directly (servers
that allow reachable-SHA wants, and local repositories, answer that; shallow when the
transport supports it), else by fetching every branch and tag and resolving ``rev`` there
(so ``rev`` may also be a tag or branch name, though recipes should pin a commit id).

The tree is then written out by walking git objects, not by a checkout, so no filters,
attributes, hooks or the host's git configuration can change the bytes:

- blobs become files, mode 0644, or 0755 when git records them executable;
- symlinks are kept as symlinks with the target stored in git;
- directories are 0755; submodules (gitlinks) become empty directories;
- nothing else (no ``.git``, no timestamps beyond what the filesystem sets).

The export goes to a temporary directory beside ``dest`` and is renamed into place, so
``dest`` either holds the whole tree or does not exist. The caller NAR-hashes ``dest``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import KilnError


class GitFetchError(KilnError):
    """The repository or revision could not be fetched."""


def _fetch_into(repo, url: str, rev: str):
    """Fetch ``rev`` from ``url`` into ``repo`` and return the commit."""
    import pygit2

    remote = repo.remotes.create_anonymous(url)
    errors: list[str] = []
    if re.fullmatch(r"[0-9a-fA-F]{40}", rev):
        local = "://" not in url
        for depth in (0,) if local else (1, 0):
            try:
                remote.fetch([f"+{rev}:refs/kiln/want"], depth=depth)
                return repo.get(rev).peel(pygit2.Commit)
            except (pygit2.GitError, KeyError, ValueError, AttributeError) as e:
                errors.append(str(e))
    try:
        remote.fetch(["+refs/heads/*:refs/kiln/heads/*", "+refs/tags/*:refs/tags/*"])
    except pygit2.GitError as e:
        raise GitFetchError(f"cannot fetch {url}: {e}") from None
    for candidate in (rev, f"refs/tags/{rev}", f"refs/kiln/heads/{rev}"):
        try:
            return repo.revparse_single(candidate).peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError):
            continue
    raise GitFetchError(f"revision {rev!r} not found in {url}" + (f" ({errors[-1]})" if errors else ""))


def _export(repo, tree, out: Path) -> None:
    import pygit2

    out.mkdir(mode=0o755)
    for entry in tree:
        name = entry.name
        if name in ("", ".", "..") or "/" in name or name == ".git":
            raise GitFetchError(f"refusing tree entry {name!r}")
        target = out / name
        mode = entry.filemode
        if mode == pygit2.GIT_FILEMODE_TREE:
            _export(repo, repo[entry.id], target)
        elif mode == pygit2.GIT_FILEMODE_LINK:
            link = repo[entry.id].data
            if not link or b"\0" in link:
                raise GitFetchError(f"refusing symlink {name!r} with an empty target or a NUL byte in it")
            os.symlink(link, target)
        elif mode == pygit2.GIT_FILEMODE_COMMIT:
            target.mkdir(mode=0o755)  # submodule: not fetched, kept as an empty directory
        elif mode in (pygit2.GIT_FILEMODE_BLOB, pygit2.GIT_FILEMODE_BLOB_EXECUTABLE):
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(repo[entry.id].data)
            os.chmod(target, 0o755 if mode == pygit2.GIT_FILEMODE_BLOB_EXECUTABLE else 0o644)
        else:
            raise GitFetchError(f"unsupported git file mode {mode:o} for {name!r}")
    os.chmod(out, 0o755)


def fetch_git(url: str, rev: str, dest: Path) -> None:
    """Write the tree of commit ``rev`` of ``url`` to ``dest`` (which must not exist)."""
    import pygit2

    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise GitFetchError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name[:60]}.git-", dir=dest.parent))
    try:
        repo = pygit2.init_repository(str(work / "repo"), bare=True)
        commit = _fetch_into(repo, url, rev)
        _export(repo, commit.tree, work / "tree")
        os.replace(work / "tree", dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
