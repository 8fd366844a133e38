"""``builtin:unpack-debs``: unpack pinned Debian packages into one root filesystem tree.

Theory of operation
-------------------
A ``.deb`` is an ``ar`` archive holding ``debian-binary``, ``control.tar.*`` and
``data.tar.*``; ``debarchive`` reads it (a strict ``ar`` reader, the decompressed data
stream on a bounded read-ahead thread, a ``TarInfo`` class that bounds extended headers).
The data member is streamed through ``tarfile`` (``r|`` mode, so nothing seeks) and must
end with tar's end-of-archive block, followed by nothing but NUL padding up to the end of
the compressed stream (``debarchive.check_tail``). No host dpkg is involved, and
maintainer scripts are never run.

Packages are unpacked in the order given (the lock order); a later package's file
replaces an earlier one at the same path, as dpkg does with ``Replaces``. Each member is
checked before anything is written:

- absolute names, ``..`` components and NUL bytes (in names and link targets) are
  refused (``FormatError``); parents are resolved component by component, following
  symlinks already in the tree *inside* the tree (absolute link targets are taken
  relative to the root), so no member can write outside ``out``;
- regular files get mode 0755 if any execute bit was set, else 0644 (setuid, setgid,
  sticky and ownership are dropped: everything belongs to the caller); directories 0755;
- symlinks are kept verbatim; hard links become copies of their target;
- device nodes and fifos are skipped with a note (returned, and printed by the CLI);
- one unpack (all its .debs together) writes at most ``MAX_UNPACKED_BYTES`` of file data
  (hard-link copies included) and ``MAX_UNPACKED_MEMBERS`` members: a pinned .deb is
  trusted to be what the lock names, not to be small, and a few MB of xz can expand to
  terabytes of zeros or millions of empty files.

Finally ``add_links`` creates the links Debian's maintainer scripts and the alternatives
system would have made (``LINKS``), each only if its target exists and the link does not.
The result depends only on the .deb contents and their order, so its NAR hash is stable.
"""

from __future__ import annotations

import lzma
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from zlib import error as zlib_error

from .debarchive import ReadAhead, Window, check_tail, next_member, open_data, open_tar, read_ar
from .errors import FormatError

#: bounds on one unpack (every .deb of it together), far above any real toolchain: the
#: pinned lock (~90 .debs) unpacks to ~390 MB in ~10,000 members, and the largest Debian
#: packages to a few GB and ~100,000 members
MAX_UNPACKED_BYTES = 16 << 30
MAX_UNPACKED_MEMBERS = 1_000_000

#: (link path, target) — what maintainer scripts / update-alternatives create on a real
#: Debian system. Targets are relative to the link's directory. First match wins per path.
LINKS: tuple[tuple[str, str], ...] = (
    ("bin/sh", "bash"),  # dash's package ships /bin/sh; bash's postinst makes it if missing
    ("usr/bin/awk", "gawk"),  # alternatives: awk (gawk postinst)
    ("usr/bin/awk", "mawk"),
    ("usr/bin/nawk", "gawk"),  # slave of the awk alternative
    ("usr/bin/cc", "gcc"),  # alternatives: cc (gcc postinst)
    ("usr/bin/c89", "c89-gcc"),  # alternatives: c89 (gcc postinst)
    ("usr/bin/c99", "c99-gcc"),  # alternatives: c99 (gcc postinst)
    ("usr/bin/c++", "g++"),  # alternatives: c++ (g++ postinst)
    ("usr/bin/cpp", "cpp-12"),  # only if the cpp package's own link is missing
    ("lib/cpp", "../usr/bin/cpp"),  # alternatives: cpp (cpp postinst); old configure scripts probe it
    ("usr/bin/touch", "../../bin/touch"),  # coreutils postinst (made relative so it works in any root)
    ("usr/bin/which", "which.debianutils"),  # alternatives: which (debianutils postinst)
    ("usr/sbin/rmt", "rmt-tar"),  # alternatives: rmt (tar postinst)
    ("usr/bin/lzma", "xz"),  # alternatives: lzma and its slaves (xz-utils postinst)
    ("usr/bin/unlzma", "unxz"),
    *((f"usr/bin/lz{u}", f"xz{u}") for u in ("cat", "more", "less", "diff", "cmp", "grep", "egrep", "fgrep")),
)


@dataclass
class Budget:
    """What an unpack may still write; shared by the ``unpack_deb`` calls of one tree. The
    limits are read when it is made (module constants, so tests can lower them)."""

    bytes_left: int = field(default_factory=lambda: MAX_UNPACKED_BYTES)
    members_left: int = field(default_factory=lambda: MAX_UNPACKED_MEMBERS)

    def take(self, deb: Path, name: str, size: int, members: int = 1) -> None:
        """Account for ``members`` members (of ``deb``, the last one ``name``) with ``size``
        bytes of file data; ``FormatError`` naming both when the tree would go over a limit."""
        if size < 0:
            raise FormatError(f"{deb.name}: member {name!r} declares a negative size ({size})")
        self.members_left -= members
        if self.members_left < 0:
            raise FormatError(
                f"{deb.name}: at {name!r}, the unpacked tree exceeds its limit of "
                f"{MAX_UNPACKED_MEMBERS} members (kiln.store.debunpack.MAX_UNPACKED_MEMBERS)"
            )
        self.bytes_left -= size
        if self.bytes_left < 0:
            raise FormatError(
                f"{deb.name}: {name!r} ({size} bytes) takes the unpacked tree over its limit of "
                f"{MAX_UNPACKED_BYTES} bytes (kiln.store.debunpack.MAX_UNPACKED_BYTES)"
            )


def _member_path(name: str, deb: Path) -> PurePosixPath | None:
    """The relative path of a tar member, or None for the root itself."""
    if "\0" in name:
        raise FormatError(f"{deb.name}: refusing member path with a NUL byte: {name!r}")
    if name.startswith("/"):
        raise FormatError(f"{deb.name}: refusing absolute member path {name!r}")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise FormatError(f"{deb.name}: refusing member path with '..': {name!r}")
    return PurePosixPath(*parts) if parts else None


def _inside(root: Path, parts: list[str], what: str, create: bool) -> Path | None:
    """The real directory inside ``root`` that the directory components ``parts`` name,
    following symlinks already in the tree *inside* the tree (an absolute target is taken
    relative to ``root``; ``..`` never climbs above it).

    ``create``: make missing directories, and raise ``FormatError`` for a component that is
    not a directory or a path that leaves the root. Otherwise return None in those cases
    (nothing is created)."""

    def fail(message: str) -> None:
        if create:
            raise FormatError(message)

    cur: list[str] = []
    todo = list(parts)
    hops = 0
    while todo:
        part = todo.pop(0)
        if part in ("", ".", "/"):
            continue
        if part == "..":
            if not cur:
                return fail(f"{what} escapes the root through a symlink")
            cur.pop()
            continue
        here = root.joinpath(*cur, part)
        if here.is_symlink():
            hops += 1
            if hops > 40:
                return fail(f"{what}: too many symlinks")
            target = os.readlink(here)
            if target.startswith("/"):
                cur = []
            todo = [*PurePosixPath(target).parts, *todo]
            continue
        if not here.exists():
            if not create:
                return None
            here.mkdir(mode=0o755)
        elif not here.is_dir():
            return fail(f"{what} needs {here.relative_to(root)} to be a directory")
        cur.append(part)
    return root.joinpath(*cur)


def _exists_inside(root: Path, parts: list[str], hops: int = 0) -> bool:
    """Whether ``parts`` (relative to ``root``) names something that exists, resolving
    every symlink on the way inside the tree, the last one included."""
    if not parts or parts[-1] in (".", ".."):
        return _inside(root, parts, "", create=False) is not None
    d = _inside(root, parts[:-1], "", create=False)
    if d is None:
        return False
    p = d / parts[-1]
    if not p.is_symlink():
        return p.exists()
    if hops >= 40:
        return False
    target = os.readlink(p)
    base = [] if target.startswith("/") else list(d.relative_to(root).parts)
    return _exists_inside(root, [*base, *PurePosixPath(target).parts], hops + 1)


def _resolve_parent(out: Path, rel: PurePosixPath, deb: Path, cache: dict[PurePosixPath, Path]) -> Path:
    """The real directory (inside ``out``) that ``rel``'s parent names, following links
    inside the tree; creates missing directories.

    ``cache`` maps already resolved parents to their directory. A resolved path only runs
    through existing directories and symlinks; a directory is never replaced (``_clear``
    refuses), and replacing a symlink empties the cache (``_clear``), so a hit is current."""
    hit = cache.get(rel.parent)
    if hit is not None:
        return hit
    found = _inside(out.resolve(), list(rel.parent.parts), f"{deb.name}: path {str(rel)!r}", create=True)
    assert found is not None  # create=True raises instead
    cache[rel.parent] = found
    return found


def _clear(path: Path, rel: PurePosixPath, deb: Path, cache: dict) -> None:
    """Remove what is at ``path`` (a file or link; a directory only if the new member is
    not one, which is a conflict, reported)."""
    if path.is_symlink():
        path.unlink()
        cache.clear()  # resolved parents may have run through this link
    elif path.is_file():
        path.unlink()
    elif path.exists():
        raise FormatError(f"{deb.name}: cannot replace directory {rel} with a non-directory")


def unpack_deb(
    deb: Path,
    out: Path,
    notes: list[str],
    cache: dict[PurePosixPath, Path] | None = None,
    budget: Budget | None = None,
) -> None:
    """Unpack the data of one .deb into ``out`` (rules in the module docstring).
    ``cache`` and ``budget`` may be shared by the calls that fill one ``out`` (see
    ``_resolve_parent``, ``Budget``). Malformed or hostile input raises ``FormatError``
    naming the .deb; ``out`` is then left half-written (``unpack_debs`` removes it)."""
    import zstandard  # here, not at import: only the unpack needs it

    cache = {} if cache is None else cache
    budget = Budget() if budget is None else budget
    with open(deb, "rb") as f:
        try:
            members = list(read_ar(f))
        except FormatError as e:
            raise FormatError(f"{deb.name}: {e}") from None
        if not members or members[0].name != "debian-binary":
            raise FormatError(f"{deb.name}: not a Debian package (first ar member is not debian-binary)")
        data = [m for m in members if m.name.startswith("data.tar")]
        if len(data) != 1:
            raise FormatError(f"{deb.name}: expected one data.tar member, found {len(data)}")
        stream = ReadAhead(open_data(data[0].name, Window(f, data[0].offset, data[0].size), deb))
        try:
            with open_tar(stream) as tar:
                while (member := next_member(tar)) is not None:
                    _extract(tar, member, deb, out, notes, cache, budget)
                if not tar.kiln_ended:  # type: ignore[attr-defined]
                    raise FormatError(f"{deb.name}: truncated data archive (no end-of-archive marker)")
                check_tail(tar, f"{deb.name}: {data[0].name}")
        except (tarfile.TarError, EOFError, lzma.LZMAError, OSError, zlib_error, zstandard.ZstdError) as e:
            if isinstance(e, FormatError):
                raise
            raise FormatError(f"{deb.name}: corrupt data archive: {e}") from None
        finally:
            stream.close()


def _extract(
    tar: tarfile.TarFile,
    m: tarfile.TarInfo,
    deb: Path,
    out: Path,
    notes: list[str],
    cache: dict,
    budget: Budget,
) -> None:
    # tarfile reads (or skips) the data of regular files and of unknown types
    budget.take(deb, m.name, m.size if m.isreg() or m.type not in tarfile.SUPPORTED_TYPES else 0)
    rel = _member_path(m.name, deb)
    if rel is None:
        return
    if m.ischr() or m.isblk() or m.isfifo():
        notes.append(f"{deb.name}: skipped device/fifo {rel}")
        return
    parent = _resolve_parent(out, rel, deb, cache)
    target = parent / rel.name
    if m.isdir():
        if target.is_symlink():
            return  # dpkg keeps an existing symlink where a package ships a directory
        if target.exists() and not target.is_dir():
            target.unlink()
        target.mkdir(mode=0o755, exist_ok=True)
        os.chmod(target, 0o755)
    elif m.issym():
        if "\0" in m.linkname:
            raise FormatError(f"{deb.name}: symlink {rel} has a NUL byte in its target {m.linkname!r}")
        _clear(target, rel, deb, cache)
        os.symlink(m.linkname, target)
    elif m.islnk():
        src_rel = _member_path(m.linkname, deb)
        if src_rel is None:
            raise FormatError(f"{deb.name}: hard link {rel} points at the root")
        if src_rel == rel:
            raise FormatError(f"{deb.name}: hard link {rel} points at itself")
        src = _resolve_parent(out, src_rel, deb, cache) / src_rel.name
        if not src.is_file() or src.is_symlink():
            raise FormatError(f"{deb.name}: hard link {rel} -> {m.linkname}: target not unpacked")
        budget.take(deb, m.name, src.stat().st_size, members=0)  # the link becomes a copy
        _clear(target, rel, deb, cache)
        shutil.copyfile(src, target)
        os.chmod(target, stat.S_IMODE(src.stat().st_mode))
    elif m.isreg():
        _clear(target, rel, deb, cache)
        src = tar.extractfile(m)
        assert src is not None
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.chmod(target, 0o755 if m.mode & 0o111 else 0o644)
    else:
        notes.append(f"{deb.name}: skipped unsupported member type {m.type!r} {rel}")


def add_links(out: Path) -> list[str]:
    """Create the ``LINKS`` whose target exists and whose path is free; returns them as
    ``path -> target`` strings.

    Both the link's directory and its target are resolved *inside* the tree, as the build
    will see it (a package may ship ``bin -> /usr/bin`` or ``usr -> ../elsewhere``): the
    host's files never decide whether a link is made, and nothing is created outside
    ``out``. A link whose directory is missing or leaves the tree is not made."""
    root = out.resolve()
    made: list[str] = []
    for link, target in LINKS:
        *dirs, name = link.split("/")
        d = _inside(root, dirs, link, create=False)
        if d is None or os.path.lexists(d / name):
            continue
        here = list(d.relative_to(root).parts)
        if not _exists_inside(root, [*here, *PurePosixPath(target).parts]):
            continue
        os.symlink(target, d / name)
        made.append(f"{link} -> {target}")
    return made


def unpack_debs(debs: list[Path], out: Path) -> None:
    """Unpack ``debs`` in order into the new directory ``out`` and add ``LINKS``.
    ``out`` must not exist; on error it is removed again."""
    unpack_debs_verbose(debs, out)


def unpack_debs_verbose(debs: list[Path], out: Path) -> list[str]:
    """Like ``unpack_debs`` but returns the notes (skipped members, links added)."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise FormatError(f"unpack target {out} already exists")
    notes: list[str] = []
    out.mkdir(mode=0o755, parents=False)
    cache: dict[PurePosixPath, Path] = {}
    budget = Budget()
    try:
        for deb in debs:
            unpack_deb(Path(deb), out, notes, cache, budget)
        notes += [f"added link {s}" for s in add_links(out)]
        os.chmod(out, 0o755)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return notes
