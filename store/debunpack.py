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

Before its data, each package's control file is read (``debcontrol``): a ``.deb``
without one is refused, and with a pin (``debpin.DebPin``: the lock entry, or the pool
file name the build fetched it by) its ``Package``, ``Version`` and ``Architecture`` must
be what the pin says, else a ``FormatError`` names what was expected and what was found.

Packages are unpacked in the order given (the lock order); a later package's file
replaces an earlier one at the same path, as dpkg does with ``Replaces``. Each member is
checked before anything is written:

- absolute names, ``..`` components and NUL bytes (in names and link targets), name
  components over 255 bytes and link targets over 4095 (what Linux can create) are
  refused (``FormatError``); parents are resolved component by component, following
  symlinks already in the tree *inside* the tree (``debtree``: absolute link targets are
  taken relative to the root), so no member can write outside ``out``;
- regular files get mode 0755 if any execute bit was set, else 0644 (setuid, setgid,
  sticky and ownership are dropped: everything belongs to the caller); directories 0755;
- symlinks are kept verbatim; hard links become copies of their target;
- device nodes and fifos are skipped with a note (``unpack_debs_verbose`` returns the
  notes; ``builtin:unpack-debs`` prints those about skipped members while building);
- one unpack (all its .debs together) writes at most ``MAX_UNPACKED_BYTES`` of file data
  (hard-link copies included) and ``MAX_UNPACKED_MEMBERS`` entries, directories made as
  parents of a member counted like members, none nested more than
  ``MAX_UNPACKED_DEPTH`` directories deep (resolved inside the tree), and resolves at
  most ``MAX_RESOLVE_STEPS`` path components in all (symlink targets included, and the
  lookups that decide which ``LINKS`` to add after the last package): a pinned
  .deb is trusted to be what the lock names, not to be small, and a few MB of xz can
  expand to terabytes of zeros, millions of empty files, a hundred members whose paths
  imply hundreds of thousands of directories, or symlink chains that make each lookup
  cost tens of thousands of system calls.

Finally ``deblinks.add_links`` creates the links Debian's maintainer scripts and the
alternatives system would have made, each only if its target exists and the link does
not. The result depends only on the .deb contents and their order, so its NAR hash is
stable.

Errors: what is wrong with a package is a ``FormatError`` naming it; an ``OSError`` of
the destination (a full disk, a quota, a file size limit) or of reading a ``.deb``
propagates as what it is, never blamed on the package. Either way nothing is left at
``out``: it is removed without recursion (``trees.remove_tree``), however deep it got.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .debarchive import ReadAhead, Window, check_tail, next_member, open_data, open_tar, read_ar
from .debcontrol import read_control
from .deblinks import LINKS as LINKS  # re-exported: the list of links added
from .deblinks import add_links
from .debpin import DebPin
from .debtree import inside
from .errors import FormatError
from .trees import remove_tree

#: bounds on one unpack (every .deb of it together), far above any real toolchain: the
#: pinned lock (~90 .debs) unpacks to ~390 MB in ~10,000 members, and the largest Debian
#: packages to a few GB and ~100,000 members
MAX_UNPACKED_BYTES = 16 << 30
MAX_UNPACKED_MEMBERS = 1_000_000
#: directory nesting below the root, resolved inside the tree (the real toolchain's
#: deepest is 9; the same bound as a git export's, fetchgit.MAX_EXPORT_DEPTH)
MAX_UNPACKED_DEPTH = 256
#: path components resolved in all, symlink targets' included (each costs a system call:
#: 16 per member allowed; the real toolchain needs ~5,000): replacing a symlink empties
#: the cache of resolved directories, so each member may cost a full lookup, and 40 links
#: with 4 KB targets of ``a/../`` made one lookup ~65,000 steps (a 2 KB .deb: 90 s for 200 members)
MAX_RESOLVE_STEPS = 16_000_000
#: what Linux can create: NAME_MAX bytes per name component, PATH_MAX - 1 bytes of
#: symlink target (longer ones would fail as the host's error, not the package's)
_NAME_MAX = 255
_LINK_MAX = 4095


@dataclass
class Budget:
    """What an unpack may still write; shared by the ``unpack_deb`` calls of one tree. The
    limits are read when it is made (module constants, so tests can lower them)."""

    bytes_left: int = field(default_factory=lambda: MAX_UNPACKED_BYTES)
    members_left: int = field(default_factory=lambda: MAX_UNPACKED_MEMBERS)
    steps_left: int = field(default_factory=lambda: MAX_RESOLVE_STEPS)

    def take(self, deb: Path, name: str, size: int, members: int = 1) -> None:
        """Account for ``members`` entries (of ``deb``, for member ``name``: the member
        itself, or a directory made as its parent) with ``size`` bytes of file data;
        ``FormatError`` naming both when the tree would go over a limit."""
        if size < 0:
            raise FormatError(f"{deb.name}: member {name!r} declares a negative size ({size})")
        self.members_left -= members
        if self.members_left < 0:
            raise FormatError(
                f"{deb.name}: at {name!r}, the unpacked tree exceeds its limit of "
                f"{MAX_UNPACKED_MEMBERS} members, directories made as parents included "
                "(kiln.store.debunpack.MAX_UNPACKED_MEMBERS)"
            )
        self.bytes_left -= size
        if self.bytes_left < 0:
            raise FormatError(
                f"{deb.name}: {name!r} ({size} bytes) takes the unpacked tree over its limit of "
                f"{MAX_UNPACKED_BYTES} bytes (kiln.store.debunpack.MAX_UNPACKED_BYTES)"
            )

    def step(self, deb: Path, name: str) -> None:
        """Account for one path component resolved for member ``name``; ``FormatError``
        naming both when the unpack has resolved ``MAX_RESOLVE_STEPS``."""
        self.steps_left -= 1
        if self.steps_left < 0:
            raise FormatError(
                f"{deb.name}: at {name!r}, resolving member paths took more than {MAX_RESOLVE_STEPS} "
                "steps in all (symlink chains; kiln.store.debunpack.MAX_RESOLVE_STEPS)"
            )

    def link_step(self, after: str, link: str) -> None:
        """Account for one path component resolved while judging the added link ``link``
        (``deblinks.add_links``, after unpacking ``after``: the packages, in words);
        ``FormatError`` when the unpack has resolved ``MAX_RESOLVE_STEPS``. No one package
        is to blame: the symlinks followed may come from any of them."""
        self.steps_left -= 1
        if self.steps_left < 0:
            raise FormatError(
                f"after unpacking {after}, adding the link /{link}: resolving paths took "
                f"more than {MAX_RESOLVE_STEPS} steps in all, the packages' members included "
                "(symlink chains in the tree; kiln.store.debunpack.MAX_RESOLVE_STEPS)"
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
    long = next((p for p in parts if len(os.fsencode(p)) > _NAME_MAX), None)
    if long is not None:
        raise FormatError(
            f"{deb.name}: refusing member path {name[:200]!r}: expected name components of at most "
            f"{_NAME_MAX} bytes, found one of {len(os.fsencode(long))}"
        )
    return PurePosixPath(*parts) if parts else None


def _resolve_parent(
    out: Path, rel: PurePosixPath, deb: Path, cache: dict[PurePosixPath, Path], budget: Budget, name: str
) -> Path:
    """The real directory (inside ``out``) that ``rel``'s parent names, following links
    inside the tree; creates missing directories, each counted in ``budget`` as an entry
    of member ``name``, and refuses directories nested over ``MAX_UNPACKED_DEPTH``.

    ``cache`` maps already resolved parents to their directory. A resolved path only runs
    through existing directories and symlinks; a directory is never replaced (``_clear``
    refuses), and replacing a symlink empties the cache (``_clear``), so a hit is current."""
    hit = cache.get(rel.parent)
    if hit is not None:
        return hit
    found = inside(
        out.resolve(),
        list(rel.parent.parts),
        f"{deb.name}: path {str(rel)!r}",
        create=True,
        max_depth=MAX_UNPACKED_DEPTH,
        on_mkdir=lambda _: budget.take(deb, name, 0),
        on_step=lambda: budget.step(deb, name),
    )
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
    pin: DebPin | None = None,
) -> None:
    """Unpack the data of one .deb into ``out`` (rules in the module docstring), after
    checking its control file against ``pin`` (if given). ``cache`` and ``budget`` may
    be shared by the calls that fill one ``out`` (see ``_resolve_parent``, ``Budget``).
    Malformed or hostile input raises ``FormatError`` naming the .deb; an ``OSError`` of
    the destination or of reading ``deb`` propagates. ``out`` is then left half-written
    (``unpack_debs`` removes it)."""
    cache = {} if cache is None else cache
    budget = Budget() if budget is None else budget
    with open(deb, "rb") as f:
        try:
            members = list(read_ar(f))
        except FormatError as e:
            raise FormatError(f"{deb.name}: {e}") from None
        if not members or members[0].name != "debian-binary":
            raise FormatError(f"{deb.name}: not a Debian package (first ar member is not debian-binary)")
        found = read_control(f, members, deb)
        if pin is not None and (problem := pin.mismatch(found)):
            raise FormatError(f"{deb.name}: not the package its {pin.source} pins: {problem}")
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
        except (tarfile.TarError, EOFError) as e:
            # (the decoders' own complaints are FormatErrors already: debstreams.Decoded;
            # an OSError here is the system's, the destination's above all, not the package's)
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
    parent = _resolve_parent(out, rel, deb, cache, budget, m.name)
    target = parent / rel.name
    if m.isdir():
        if target.is_symlink():
            return  # dpkg keeps an existing symlink where a package ships a directory
        if len(parent.relative_to(out.resolve()).parts) >= MAX_UNPACKED_DEPTH:
            raise FormatError(
                f"{deb.name}: path {str(rel)!r}: directories nested more than {MAX_UNPACKED_DEPTH} "
                "levels deep (kiln.store.debunpack.MAX_UNPACKED_DEPTH)"
            )
        if target.exists() and not target.is_dir():
            target.unlink()
        target.mkdir(mode=0o755, exist_ok=True)
        os.chmod(target, 0o755)
    elif m.issym():
        if "\0" in m.linkname:
            raise FormatError(f"{deb.name}: symlink {rel} has a NUL byte in its target {m.linkname!r}")
        if not 0 < len(os.fsencode(m.linkname)) <= _LINK_MAX:
            raise FormatError(
                f"{deb.name}: symlink {rel}: expected a target of 1 to {_LINK_MAX} bytes, "
                f"found {len(os.fsencode(m.linkname))}"
            )
        _clear(target, rel, deb, cache)
        os.symlink(m.linkname, target)
    elif m.islnk():
        src_rel = _member_path(m.linkname, deb)
        if src_rel is None:
            raise FormatError(f"{deb.name}: hard link {rel} points at the root")
        if src_rel == rel:
            raise FormatError(f"{deb.name}: hard link {rel} points at itself")
        src = _resolve_parent(out, src_rel, deb, cache, budget, m.name) / src_rel.name
        if not src.is_file() or src.is_symlink():
            raise FormatError(f"{deb.name}: hard link {rel} -> {m.linkname}: target not unpacked")
        if src == target:  # both resolved: a symlinked directory made the names differ
            raise FormatError(
                f"{deb.name}: hard link {rel} -> {m.linkname}: both name the same file "
                f"({target.relative_to(out.resolve())}) through symlinks: it would replace its own target"
            )
        budget.take(deb, m.name, src.stat().st_size, members=0)  # the link becomes a copy
        _clear(target, rel, deb, cache)
        shutil.copyfile(src, target)
        os.chmod(target, stat.S_IMODE(src.stat().st_mode))
    elif m.isreg():
        _clear(target, rel, deb, cache)
        body = tar.extractfile(m)
        assert body is not None  # (a regular member has a body)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(body, dst, 1 << 20)
        os.chmod(target, 0o755 if m.mode & 0o111 else 0o644)
    else:
        notes.append(f"{deb.name}: skipped unsupported member type {m.type!r} {rel}")


def unpack_debs(debs: Sequence[Path], out: Path, pins: Sequence[DebPin | None] | None = None) -> None:
    """Unpack ``debs`` in order into the new directory ``out`` and add the ``LINKS``;
    ``pins[i]``, when given and not None, is what ``debs[i]`` must say it is. ``out``
    must not exist; on any error nothing is left there."""
    unpack_debs_verbose(debs, out, pins)


def unpack_debs_verbose(
    debs: Sequence[Path], out: Path, pins: Sequence[DebPin | None] | None = None
) -> list[str]:
    """Like ``unpack_debs`` but returns the notes (skipped members, links added)."""
    out = Path(out)
    if pins is not None and len(pins) != len(debs):
        raise ValueError(f"unpack_debs: {len(debs)} .debs but {len(pins)} pins")
    if out.exists() or out.is_symlink():
        raise FormatError(f"unpack target {out} already exists")
    notes: list[str] = []
    out.mkdir(mode=0o755, parents=False)
    cache: dict[PurePosixPath, Path] = {}
    budget = Budget()
    try:
        for i, deb in enumerate(debs):
            unpack_deb(Path(deb), out, notes, cache, budget, pins[i] if pins is not None else None)
        after = Path(debs[0]).name if len(debs) == 1 else f"{len(debs)} packages"
        notes += [f"added link {s}" for s in add_links(out, lambda link: budget.link_step(after, link))]
        os.chmod(out, 0o755)
    except BaseException as e:
        try:
            remove_tree(out)  # iterative: the tree may be deeper than the recursion limit
        except Exception as cleanup:  # noqa: BLE001 - the unpack's own error comes first
            e.add_note(f"(and {out} could not be removed: {cleanup})")
        raise
    return notes
