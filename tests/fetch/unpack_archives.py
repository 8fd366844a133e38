"""Archives for the ``kiln prefetch --unpack`` tests, built member by member (hostile
ones included: nothing here extracts them)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

#: (name, kind, data-or-link, mode): kind "f" file, "d" directory, "l" symlink, "h" hard link
Member = tuple


def tar(members: list[Member], mode: str = "w:gz", fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as t:
        for name, kind, *rest in members:
            info = tarfile.TarInfo(name)
            data = None
            if kind == "f":
                info.size, info.mode = len(rest[0]), rest[1] if len(rest) > 1 else 0o644
                data = io.BytesIO(rest[0])
            elif kind == "d":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "l":
                info.type, info.linkname = tarfile.SYMTYPE, rest[0]
            elif kind == "h":
                info.type, info.linkname = tarfile.LNKTYPE, rest[0]
            t.addfile(info, data)
    return buf.getvalue()


def zip_(members: list[tuple[str, bytes, int | None]]) -> bytes:
    """``(name, data, unix mode or None for an MS-DOS entry)``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode is None:
                info.create_system = 0
            else:
                info.create_system, info.external_attr = 3, mode << 16
            z.writestr(info, data)
    return buf.getvalue()


def path_max_escape(dest: str, target: Path, hardlink: bool = False) -> bytes:
    """A tarball against tarfile's "data" filter (CVE-2025-4517): symlinks chained past
    PATH_MAX, where ``os.path.realpath`` stops resolving, so the filter judges a path
    that leads out of ``dest`` (where the archive is unpacked) to be inside it. It then
    writes ``target/PWNED`` or, with ``hardlink``, links ``target/victim`` in and
    overwrites it."""
    comp = "d" * ((4096 - len(dest) - 1) // 17)
    steps = "abcdefghijklmnop"
    members: list[Member] = []
    path = ""
    for s in steps:
        members += [(os.path.join(path, comp), "d"), (os.path.join(path, s), "l", comp)]
        path = os.path.join(path, comp)
    link = os.path.join(*steps, "l" * 254)
    members.append((link, "l", os.path.join(*[".."] * len(steps))))
    up = [".."] * (len(Path(dest).parts) - 1)  # from dest to /
    members.append(("escape", "l", os.path.join(link, *up, *target.parts[1:])))
    if hardlink:
        members += [("inside", "h", "escape/victim"), ("inside", "f", b"overwritten\n")]
    else:
        members.append(("escape/PWNED", "f", b"written outside the unpack directory\n"))
    return tar(members, mode="w", fmt=tarfile.PAX_FORMAT)


def git_archive(tmp: Path, fmt: str) -> bytes:
    """``git archive --prefix=proj-1/`` of a small repository (a pax global header, an
    executable, a symlink), as release tarballs are often made."""
    repo = tmp / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "a.c").write_text("int main(void) { return 0; }\n")
    (repo / "run").write_text("#!/bin/sh\n")
    (repo / "run").chmod(0o755)
    (repo / "link").symlink_to("src/a.c")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@kiln.invalid"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "m"], check=True)
    out = subprocess.run(
        [*git, "archive", f"--format={fmt}", "--prefix=proj-1/", "HEAD"], check=True, capture_output=True
    )
    return out.stdout
