"""Where a recipe comes from, for provenance: the git commit of the repository holding it
and whether the working tree is dirty. Read by the CLI (``kiln build``, ``kiln rebuild``)
and passed into the in-toto statement (``kiln.store.intoto``), which stays pure format
code."""

from __future__ import annotations

from pathlib import Path

from kiln.store.errors import KilnError


def git_info(path: str | Path) -> tuple[str | None, bool]:
    """``(commit, dirty)`` of the git repository containing ``path`` (a recipe file or dir).

    ``commit`` is the HEAD commit hex (``None`` outside a repository or before the first
    commit); ``dirty`` is true when tracked files differ from HEAD or untracked, unignored
    files exist (an uncommitted recipe is exactly what must not pass as clean)."""
    import pygit2

    start = Path(path).resolve()
    found = pygit2.discover_repository(str(start if start.is_dir() else start.parent))
    if found is None:
        return None, False
    try:
        repo = pygit2.Repository(found)
    except pygit2.GitError as e:
        hint = ""
        if "not owned by current user" in str(e):  # (libgit2's check, as git's "dubious ownership")
            top = Path(found)  # (the work tree, which safe.directory names, holds .git)
            top = top.parent if top.name == ".git" else top
            hint = f"; if you trust it, let git (and kiln) read it: git config --global --add safe.directory {top}"
        raise KilnError(f"cannot open git repository {found}: {e}{hint}") from None
    commit = None if repo.head_is_unborn else str(repo.head.target)
    ignored = pygit2.enums.FileStatus.IGNORED if hasattr(pygit2, "enums") else pygit2.GIT_STATUS_IGNORED
    dirty = any(flags != ignored for flags in repo.status().values())
    return commit, dirty
