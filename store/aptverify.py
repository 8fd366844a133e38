"""Verifying apt's downloaded package indexes as ``apt-get update`` did, before a lock uses them.

Theory of operation
-------------------
An index in apt's lists directory (``<prefix>main_binary-amd64_Packages.lz4``) belongs to
the suite whose Release file shares its name prefix (``apt.release_file``:
``<prefix>InRelease``, or ``<prefix>Release`` with ``<prefix>Release.gpg``). For each
suite, once (``ListsVerifier``):

1. the Release file is read once into memory and ``gpgv`` checks the copy against the
   keys apt trusts for that archive (``keyrings_for``); the text kiln then reads is the
   one gpgv says was signed (``--output``), never the file around it;
2. gpgv's status lines decide (``aptrelease.good_signers``): at least one good signature
   with a strong digest by a trusted key, and no bad one — otherwise ``AptError``;
3. each index's decompressed bytes must have the SHA-256 and size the signed Release
   lists for its path (``main/binary-amd64/Packages``; apt keeps indexes recompressed,
   and Debian's Release lists every index uncompressed too). An index stored exactly as
   downloaded (``Packages.xz``) may match the compressed entry instead.

A Release whose ``Valid-Until`` has passed is a warning, not an error: apt refuses it at
``apt-get update`` but installs from the lists it has, and a lock pins every ``.deb`` by
its hash anyway; the warning says the indexes may be old.

Keys (``keyrings_for``): the ``--keyring`` files if given; else what the machine's apt
would trust for that archive (the ``Signed-By`` of the sources entries whose lists carry
that prefix, or apt's global ``/etc/apt/trusted.gpg`` and ``trusted.gpg.d/`` when such an
entry names none); for lists no source entry matches (another machine's ``--lists``),
every key the machine's apt trusts. Armored keyrings (``*.asc``, inline ``Signed-By``) are
dearmored into a private temporary directory, which is also gpgv's home (so no user's
``~/.gnupg`` keys take part).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

from .apt import INDEX_SUFFIXES, AptError, pin_priority, release_file
from .aptrelease import Release, dearmor, good_signers, parse_release
from .aptsources import SourceEntry, list_prefix, read_sources
from .errors import FormatError

APT_TRUSTED = Path("/etc/apt/trusted.gpg")
APT_TRUSTED_DIR = Path("/etc/apt/trusted.gpg.d")


@dataclass(frozen=True)
class VerifiedSuite:
    """A Release file that passed: the file, what it says, and who signed it."""

    path: Path
    release: Release
    signers: tuple[str, ...]


def global_keyrings(trusted: Path = APT_TRUSTED, trusted_dir: Path = APT_TRUSTED_DIR) -> list[str]:
    """apt's global trust: ``trusted.gpg`` and ``trusted.gpg.d/*.gpg``/``*.asc`` that exist."""
    out = [str(trusted)] if trusted.is_file() else []
    if trusted_dir.is_dir():
        out += [str(p) for p in sorted(trusted_dir.iterdir()) if p.suffix in (".gpg", ".asc") and p.is_file()]
    return out


def keyrings_for(prefix: str, sources: list[SourceEntry], global_trust: list[str]) -> list[str]:
    """The keyrings (paths or inline armored blocks) apt would check the Release of the
    lists named ``prefix`` against (module docstring, "Keys")."""
    matched = [
        e
        for e in sources
        if "deb" in e.types and any(list_prefix(u, s) == prefix for u in e.uris for s in e.suites)
    ]
    if not matched:
        every = [k for e in sources for k in e.signed_by]
        return list(dict.fromkeys(global_trust + every))
    out: list[str] = []
    for e in matched:
        out += list(e.signed_by) if e.signed_by else global_trust
    return list(dict.fromkeys(out))


class ListsVerifier:
    """``check``/``priority`` for ``apt.AptIndex.load``, verifying each suite once. Use as a
    context manager (it owns a temporary directory). ``suites`` lists what was verified;
    ``warnings`` what was noticed (an expired ``Valid-Until``)."""

    def __init__(
        self,
        keyrings: list[Path] | None = None,
        sources: list[SourceEntry] | None = None,
        global_trust: list[str] | None = None,
        now: datetime | None = None,
    ) -> None:
        self._explicit = [str(k) for k in keyrings] if keyrings else None
        self._sources = read_sources() if sources is None else sources
        self._global = global_keyrings() if global_trust is None else global_trust
        self._now = now or datetime.now(UTC)
        self._tmp = tempfile.TemporaryDirectory(prefix="kiln-aptverify-")
        self._home = Path(self._tmp.name) / "home"
        self._home.mkdir(mode=0o700)
        self._keyfiles: dict[str, Path | None] = {}
        self._suites: dict[Path, VerifiedSuite] = {}
        self.warnings: list[str] = []
        if self._explicit:  # named on the command line: every one must be readable
            for k in self._explicit:
                if self._keyfile(k) is None:
                    raise AptError(f"--keyring {k}: no such file")

    def __enter__(self) -> ListsVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()

    @property
    def suites(self) -> list[VerifiedSuite]:
        return sorted(self._suites.values(), key=lambda v: v.path.name)

    # --- AptIndex.load's verifier ------------------------------------------------------

    def check(self, index: Path, data: bytes) -> None:
        """``AptError`` unless ``data`` (``index`` decompressed) is what its suite's signed
        Release lists for it."""
        suite = self._suite(index)
        stem = suite.path.name.removesuffix("InRelease").removesuffix("Release")
        rest = index.name[len(stem) :]
        suffix = next((x for x in INDEX_SUFFIXES[1:] if rest.endswith(x)), "")
        rel = "/".join(unquote(part) for part in rest.removesuffix(suffix).split("_"))
        listed = suite.release.sha256
        if rel in listed:
            got, what = data, rel
        elif suffix and rel + suffix in listed:  # kept as downloaded: compare the file itself
            got, what = _read(index), rel + suffix
        else:
            raise AptError(f"{index}: {suite.path.name} lists no SHA256 for {rel} (cannot verify the index)")
        digest, size = hashlib.sha256(got).hexdigest(), len(got)
        want_digest, want_size = listed[what]
        if (digest, size) != (want_digest, want_size):
            raise AptError(
                f"{index}: expected SHA256 {want_digest} and {want_size} bytes for {what}, as the signed "
                f"{suite.path.name} lists, found {digest} and {size} bytes: the index is not what the "
                "archive signed (run 'apt-get update')"
            )

    def priority(self, index: Path) -> int:
        """The pin priority of ``index``'s suite, from its verified Release."""
        release = self._suite(index).release
        return pin_priority(release.not_automatic, release.but_automatic_upgrades)

    # --- one suite -----------------------------------------------------------------------

    def _suite(self, index: Path) -> VerifiedSuite:
        path = release_file(index)
        if path is None:
            raise AptError(
                f"{index}: no InRelease or Release file beside it to verify it against "
                "(apt keeps one per suite; --trust-lists reads indexes unverified)"
            )
        if path not in self._suites:
            self._suites[path] = self._verify(path)
        return self._suites[path]

    def _verify(self, path: Path) -> VerifiedSuite:
        stem = path.name.removesuffix("InRelease").removesuffix("Release")
        specs = self._explicit or keyrings_for(stem, self._sources, self._global)
        keyfiles = [f for f in (self._keyfile(k) for k in specs) if f is not None]
        if not keyfiles:
            raise AptError(f"{path}: no keyring to verify it with (looked for: {', '.join(specs) or 'none'})")
        work = Path(tempfile.mkdtemp(dir=self._tmp.name))
        copy = work / "Release"
        copy.write_bytes(_read(path))
        if path.name.endswith("InRelease"):
            signed = work / "signed"
            args = ["--output", str(signed), str(copy)]
        else:
            sig = path.with_name(path.name + ".gpg")
            if not sig.is_file():
                raise AptError(
                    f"{path}: unsigned (no {sig.name} beside it; --trust-lists reads it unverified)"
                )
            (work / "Release.gpg").write_bytes(_read(sig))
            signed, args = copy, [str(work / "Release.gpg"), str(copy)]
        cmd = ["gpgv", "--status-fd", "1", *[a for f in keyfiles for a in ("--keyring", str(f))], *args]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, env={**os.environ, "GNUPGHOME": str(self._home), "LC_ALL": "C"}
            )
        except FileNotFoundError:
            raise AptError(
                "gpgv not found: install it (apt-get install gpgv) to verify apt's indexes"
            ) from None
        status = proc.stdout.decode(errors="replace")
        try:
            sigs = good_signers(status)
        except FormatError as e:
            raise AptError(f"{path}: {e}") from None
        if not sigs.good:
            last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:]
            why = "; ".join(sigs.other) or "".join(last) or "gpgv found no signature"
            named = ", ".join("inline Signed-By key" if "\n" in s else s for s in specs)
            raise AptError(f"{path}: no good signature by a trusted key ({why}); keyrings: {named}")
        try:
            release = parse_release(_read(signed).decode("utf-8", errors="replace"), str(path))
        except FormatError as e:
            raise AptError(str(e)) from None
        if release.valid_until is not None and release.valid_until < self._now:
            self.warnings.append(
                f"{path}: expired on {release.valid_until:%Y-%m-%d %H:%M} UTC (Valid-Until): its indexes "
                "may be old; run 'apt-get update' for current ones"
            )
        return VerifiedSuite(path, release, sigs.good)

    def _keyfile(self, spec: str) -> Path | None:
        """A binary keyring file for a keyring spec (a path, or an inline armored block);
        None if the path does not exist."""
        if spec not in self._keyfiles:
            self._keyfiles[spec] = self._load_key(spec)
        return self._keyfiles[spec]

    def _load_key(self, spec: str) -> Path | None:
        if "-----BEGIN PGP PUBLIC KEY BLOCK-----" in spec:
            text, where = spec, "inline Signed-By key"
        else:
            path = Path(spec)
            if not path.is_file():
                return None
            data = _read(path)
            if not data.lstrip().startswith(b"-----BEGIN PGP"):
                return path.resolve()
            text, where = data.decode("ascii", errors="replace"), spec
        try:
            binary = dearmor(text, where)
        except FormatError as e:
            raise AptError(str(e)) from None
        fd, name = tempfile.mkstemp(dir=self._tmp.name, suffix=".gpg")
        with os.fdopen(fd, "wb") as f:
            f.write(binary)
        return Path(name)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise AptError(f"cannot read {path}: {e.strerror or e}") from None
