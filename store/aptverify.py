"""Verifying apt's downloaded package indexes as ``apt-get update`` did, before a lock uses them.

Theory of operation
-------------------
Which suite an index belongs to, and which keys may sign that suite, come from the
machine's apt sources, as for apt: an index (``<prefix>main_binary-amd64_Packages.lz4``)
belongs to the ``deb`` entry whose list prefix (``aptsources.list_prefix``, apt's
``URItoFileName``) is the longest that starts its name, and is checked against
``<prefix>InRelease`` (or ``<prefix>Release`` with ``<prefix>Release.gpg``) with the
keys apt trusts for that entry (``aptkeys``: its ``Signed-By`` keyrings, or apt's global
ones when it names none; ``Signed-By`` fingerprints narrow which keys' signatures
count). An index no ``deb`` entry names (a stray file; another machine's
``--lists DIR``) is refused — apt would not read it either — unless ``--keyring`` files
are given: then those keys alone, and the Release file beside the index with the longest
name that prefixes it (``apt.release_file``). No Release is ever checked with keys that
apt trusts for another archive only.

For each suite, once (``ListsVerifier``):

1. the Release file is read once into memory; an ``InRelease`` must be exactly one
   clear-signed text (``aptrelease.clearsigned_problem``); ``gpgv`` checks the copy, and
   the text kiln then reads is the one gpgv says was signed (``--output``);
2. gpgv's status lines decide (``aptrelease.good_signers``): at least one good signature
   with a strong digest by an allowed key, and no bad one, no error — else ``AptError``;
3. the signed ``Suite`` or ``Codename`` must be the sources entry's suite (with
   ``--keyring``: the one the file is named for, after ``_dists_``; a
   ``<codename>/updates`` suite may name its codename): a Release of another suite
   (sid's, under bookworm's name) is refused;
4. each index's decompressed bytes must have the SHA-256 and size the signed Release
   lists for its path (``main/binary-amd64/Packages``; apt keeps indexes recompressed,
   and Debian's Release lists every index uncompressed too). An index stored exactly as
   downloaded (``Packages.xz``) may match the compressed entry instead: then those very
   bytes are decompressed again and must be what was read.

Dates (``_check_date``): a Release dated more than ``MAX_FUTURE`` after this machine's
clock is refused (apt: "not valid yet"). With the machine's keys, one dated before the
Release of the same suite a previous lock verified (``seen``, kept by the command in
``aptseen``'s file, by list prefix) is refused, as apt refuses one older than the last
it saw: an old genuine Release put back (Debian's main suites set no ``Valid-Until``).
With ``--keyring`` the dates seen are neither checked nor recorded. A Release whose
``Valid-Until`` has passed is a warning, not an error: apt refuses it at ``apt-get
update`` but installs from the lists it has, and a lock pins every ``.deb`` by its hash
anyway. Armored keyrings (``*.asc``, inline ``Signed-By``) are dearmored into a private
temporary directory, which is also gpgv's home (so no user's ``~/.gnupg`` keys take
part); a binary one must start with a public key packet, as apt requires.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

from . import aptseen
from .apt import INDEX_SUFFIXES, AptError, pin_priority, release_file, release_stem
from .aptkeys import SuiteKeys, global_keyrings, keyring_file, keys_for, read_bytes, source_prefixes
from .aptrelease import Release, clearsigned_problem, good_signers, parse_release
from .aptsources import SourceEntry, read_sources
from .errors import FormatError


@dataclass(frozen=True)
class VerifiedSuite:
    """A Release file that passed: the file, what it says, and who signed it."""

    path: Path
    release: Release
    signers: tuple[str, ...]
    #: verified with the machine's keys: its Date goes into the dates seen
    dated: bool = False


def named_suite(release_name: str) -> str | None:
    """The suite a Release file is named for (``host_debian_dists_bookworm_InRelease`` →
    ``bookworm``); None for a flat repository's (no ``_dists_``)."""
    stem = release_stem(Path(release_name)).removesuffix("_")
    if "_dists_" not in stem:
        return None
    return "/".join(unquote(p) for p in stem.rsplit("_dists_", 1)[1].split("_"))


#: how far ahead of this machine's clock a Release's Date may be (clock skew), as apt's
#: ``Acquire::Max-FutureTime`` allows some
MAX_FUTURE = timedelta(minutes=10)


@dataclass(frozen=True)
class _Plan:
    """How one suite is verified: its Release file, the keys, the suite it must name
    (None: a flat repository's) and whether its Date is checked against and recorded in
    the dates seen (only with the machine's own keys: chosen keys could record a date
    that refuses every genuine Release after it)."""

    path: Path
    keys: SuiteKeys
    suite: str | None
    dated: bool


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
        seen: dict[str, datetime] | None = None,
    ) -> None:
        self._explicit = SuiteKeys(tuple(str(k) for k in keyrings)) if keyrings else None
        self._prefixes = source_prefixes(read_sources() if sources is None else sources)
        self._global = global_keyrings() if global_trust is None else global_trust
        self._now = now or datetime.now(UTC)
        self._seen = seen or {}
        self._keyfiles: dict[str, Path | None] = {}
        self._suites: dict[Path, VerifiedSuite] = {}
        self.warnings: list[str] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="kiln-aptverify-")
        try:
            self._home = Path(self._tmp.name) / "home"
            self._home.mkdir(mode=0o700)
            for k in self._explicit.keyrings if self._explicit else ():  # named: each must be there
                if self._keyfile(k) is None:
                    raise AptError(f"--keyring {k}: no such file")
        except BaseException:
            self._tmp.cleanup()
            raise

    def __enter__(self) -> ListsVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()

    @property
    def suites(self) -> list[VerifiedSuite]:
        return sorted(self._suites.values(), key=lambda v: v.path.name)

    @property
    def dates(self) -> dict[str, datetime]:
        """The ``Date`` of each Release verified with the machine's keys, by its suite's
        list prefix (for ``aptseen.save``)."""
        return {release_stem(v.path): v.release.date for v in self.suites if v.dated and v.release.date}

    # --- AptIndex.load's verifier ------------------------------------------------------

    def check(self, index: Path, data: bytes) -> None:
        """``AptError`` unless ``data`` (``index`` decompressed) is what its suite's signed
        Release lists for it."""
        suite = self._suite(index)
        rest = index.name[len(release_stem(suite.path)) :]
        suffix = next((x for x in INDEX_SUFFIXES[1:] if rest.endswith(x)), "")
        rel = "/".join(unquote(part) for part in rest.removesuffix(suffix).split("_"))
        listed = suite.release.sha256
        if rel in listed:
            got, what = data, rel
        elif suffix and rel + suffix in listed:  # kept as downloaded: compare the file itself
            got, what = read_bytes(index), rel + suffix
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
        if got is not data and self._decompressed(got, index.name) != data:
            # (the file changed between the two reads: what was read is not what was checked)
            raise AptError(f"{index}: changed while it was read; run kiln lock again")

    def priority(self, index: Path) -> int:
        """The pin priority of ``index``'s suite, from its verified Release."""
        release = self._suite(index).release
        return pin_priority(release.not_automatic, release.but_automatic_upgrades)

    # --- one suite -----------------------------------------------------------------------

    def _suite(self, index: Path) -> VerifiedSuite:
        plan = self._plan(index)
        if plan.path not in self._suites:
            self._suites[plan.path] = self._verify(plan)
        return self._suites[plan.path]

    def _plan(self, index: Path) -> _Plan:
        """How ``index``'s suite is verified (module docstring)."""
        if self._explicit is not None:
            path = release_file(index)
            if path is None:
                raise AptError(
                    f"{index}: no InRelease or Release file beside it to verify it against "
                    "(apt keeps one per suite; --trust-lists reads indexes unverified)"
                )
            return _Plan(path, self._explicit, named_suite(path.name), dated=False)
        prefix = max((p for p in self._prefixes if index.name.startswith(p)), key=len, default=None)
        if prefix is None:
            raise AptError(
                f"{index}: no deb entry of the machine's apt sources has lists of this name, so no "
                "key is trusted for it (apt would not read it either): pass --keyring FILE to verify "
                "it with chosen keys, or --trust-lists"
            )
        suite, entries = self._prefixes[prefix]
        for name in ("InRelease", "Release"):
            if (index.parent / f"{prefix}{name}").is_file():
                keys = keys_for(entries, self._global, str(index.parent / f"{prefix}{name}"))
                return _Plan(
                    index.parent / f"{prefix}{name}", keys, None if suite.endswith("/") else suite, True
                )
        raise AptError(
            f"{index}: no {prefix}InRelease or {prefix}Release beside it to verify it against "
            "(run 'apt-get update'; --trust-lists reads indexes unverified)"
        )

    def _verify(self, plan: _Plan) -> VerifiedSuite:
        path, keys = plan.path, plan.keys
        keyfiles = [f for f in (self._keyfile(k) for k in keys.keyrings) if f is not None]
        named = ", ".join("inline Signed-By key" if "\n" in k else k for k in keys.keyrings)
        if not keyfiles:
            raise AptError(f"{path}: no keyring to verify it with (looked for: {named or 'none'})")
        work = Path(tempfile.mkdtemp(dir=self._tmp.name))
        copy = work / "Release"
        data = read_bytes(path)
        copy.write_bytes(data)
        if path.name.endswith("InRelease"):
            problem = clearsigned_problem(data)
            if problem:
                raise AptError(f"{path}: {problem}")
            signed = work / "signed"
            args = ["--output", str(signed), str(copy)]
        else:
            sig = path.with_name(path.name + ".gpg")
            if not sig.is_file():
                raise AptError(
                    f"{path}: unsigned (no {sig.name} beside it; --trust-lists reads it unverified)"
                )
            (work / "Release.gpg").write_bytes(read_bytes(sig))
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
        try:
            sigs = good_signers(proc.stdout.decode(errors="replace"))
        except FormatError as e:
            raise AptError(f"{path}: {e}") from None
        signers = sigs.by(keys.fingerprints)
        if not signers:
            why = list(sigs.other)
            if sigs.good:
                why.append(
                    f"good signatures only by keys Signed-By does not name ({', '.join(keys.fingerprints)})"
                )
            if not why:
                lines = proc.stderr.decode(errors="replace").strip().splitlines()
                why = ["gpgv: " + " / ".join(ln.removeprefix("gpgv: ") for ln in lines[-3:])]
            raise AptError(
                f"{path}: no good signature by a trusted key ({'; '.join(why)}); keyrings: {named}"
            )
        try:
            release = parse_release(read_bytes(signed).decode("utf-8", errors="replace"), str(path))
        except FormatError as e:
            raise AptError(str(e)) from None
        self._check_suite(plan, release)
        self._check_date(plan, release)
        if release.valid_until is not None and release.valid_until < self._now:
            self.warnings.append(
                f"{path}: expired on {release.valid_until:%Y-%m-%d %H:%M} UTC (Valid-Until): its indexes "
                "may be old; run 'apt-get update' for current ones"
            )
        return VerifiedSuite(path, release, signers, plan.dated)

    def _check_suite(self, plan: _Plan, release: Release) -> None:
        """``AptError`` unless the Release names the suite it is verified for."""
        want = plan.suite
        # (a "<codename>/updates" suite, as old security archives named theirs, is its
        # codename's: apt drops the last component)
        if want is None or {want, want.rsplit("/", 1)[0]} & set(release.names):
            return
        raise AptError(
            f"{plan.path}: expected the Release of suite {want}, found one of "
            f"{' / '.join(release.names) or 'no named suite'}: a Release of another suite under this one's name"
        )

    def _check_date(self, plan: _Plan, release: Release) -> None:
        """``AptError`` for a Release dated in the future (apt: "not valid yet"), or, with
        the machine's keys, older than the one of its suite verified before (a rollback)."""
        if release.date is None:
            return
        if release.date > self._now + MAX_FUTURE:
            raise AptError(
                f"{plan.path}: dated {release.date:%Y-%m-%d %H:%M} UTC, after this machine's clock "
                f"({self._now:%Y-%m-%d %H:%M} UTC): not valid yet (check the clock)"
            )
        before = self._seen.get(release_stem(plan.path))
        if plan.dated and before is not None and release.date < before:
            raise AptError(
                f"{plan.path}: dated {release.date:%Y-%m-%d %H:%M} UTC, older than the Release of this suite "
                f"an earlier kiln lock verified ({before:%Y-%m-%d %H:%M} UTC): an old Release put back "
                "(a rollback)? Run 'apt-get update'; if the archive itself went back, remove its "
                f"line from {aptseen.FILE_NAME} in KILN_HOME"
            )

    def _decompressed(self, raw: bytes, name: str) -> bytes:
        """``raw`` decompressed as an index file called ``name`` is."""
        from .apt import read_index_bytes

        fd, tmp = tempfile.mkstemp(dir=self._tmp.name, suffix="_" + name)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        return read_index_bytes(Path(tmp))

    def _keyfile(self, spec: str) -> Path | None:
        """A binary keyring file for a keyring spec (a path, or an inline armored block);
        None if the path does not exist."""
        if spec not in self._keyfiles:
            self._keyfiles[spec] = keyring_file(spec, Path(self._tmp.name))
        return self._keyfiles[spec]
