"""``kiln lock debian`` verifies apt's indexes against their suites' signed Release files.

Keys and signatures are real gpg's (``gpgkit``); the machine's own lists are verified in
``test_lock.py``'s ``test_cli_writes_lock``. Every refusal is an error naming the file and
what was expected and found, and leaves no lock behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kiln.store.apt import AptError, AptIndex
from kiln.store.aptverify import ListsVerifier

from .gpgkit import INDEX, PREFIX, Key, make_key, release_text, stanza

PACKAGES = (stanza("a") + "\n" + stanza("b", "2.0")).encode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Key, Key]]:
    out = tmp_path_factory.mktemp("keys")
    made = [make_key("archive", out), make_key("stranger", out)]
    yield made[0], made[1]
    for k in made:
        k.close()


def signed_lists(tmp_path: Path, key: Key, release: bytes | None = None, packages: bytes = PACKAGES) -> Path:
    d = tmp_path / "lists"
    d.mkdir(exist_ok=True)
    (d / INDEX).write_bytes(packages)
    (d / f"{PREFIX}InRelease").write_bytes(key.clearsign(release or release_text(PACKAGES)))
    return d


def lock(lists: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``kiln lock debian b`` from ``lists``, with a KILN_HOME of its own beside them (the
    Release dates seen are kept there)."""
    cmd = [sys.executable, "-m", "kiln", "lock", "debian", "b", "--lists", str(lists), *args, "-o", str(out)]
    env = {**os.environ, "KILN_HOME": str(lists.parent / "home")}
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def refused(proc: subprocess.CompletedProcess[str], out: Path, *words: str) -> None:
    assert proc.returncode == 1 and "internal error" not in proc.stderr, proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr
    assert not out.exists()


def test_a_signed_suite_is_verified_and_named_in_the_lock(tmp_path, keys):
    archive, _ = keys
    lists = signed_lists(tmp_path, archive)
    for keyring in (archive.keyring, archive.armored):  # binary and armored keyrings
        out = tmp_path / f"{keyring.suffix}.lock"
        proc = lock(lists, out, "--keyring", str(keyring))
        assert proc.returncode == 0, proc.stderr
        text = out.read_text()
        assert f"#   s: key {archive.fingerprint}\n" in text
        assert f"--keyring {keyring}" in text  # the regenerate line keeps it
        assert 'name = "b", version = "2.0"' in text


def test_an_index_that_differs_from_the_signed_release_is_refused(tmp_path, keys):
    archive, _ = keys
    lists = signed_lists(tmp_path, archive, packages=PACKAGES.replace(b"Version: 2.0", b"Version: 2.1"))
    out = tmp_path / "l"
    refused(
        lock(lists, out, "--keyring", str(archive.keyring)),
        out,
        f"{lists / INDEX}: expected SHA256 ",
        "as the signed h_debian_dists_s_InRelease lists, found ",
        "the index is not what the archive signed",
    )


def test_a_release_signed_by_an_untrusted_key_is_refused(tmp_path, keys):
    archive, stranger = keys
    lists = signed_lists(tmp_path, stranger)
    out = tmp_path / "l"
    refused(
        lock(lists, out, "--keyring", str(archive.keyring)),
        out,
        "InRelease: no good signature by a trusted key",
        "not in the trusted keyrings",
        f"keyrings: {archive.keyring}",
    )


def test_a_release_altered_after_signing_is_a_bad_signature(tmp_path, keys):
    archive, _ = keys
    lists = signed_lists(tmp_path, archive)
    inrelease = lists / f"{PREFIX}InRelease"
    inrelease.write_bytes(inrelease.read_bytes().replace(b"Origin: Test", b"Origin: Evil"))
    out = tmp_path / "l"
    refused(lock(lists, out, "--keyring", str(archive.keyring)), out, "InRelease: bad signature by key")


def test_text_around_or_after_the_signed_block_is_refused(tmp_path, keys):
    """An attacker appending a Release of their own after the signature (hashes of their
    index, NotAutomatic), or a second signed block, is refused as apt refuses it: gpgv
    alone would verify the first block and ignore the rest."""
    archive, _ = keys
    evil = PACKAGES.replace(b"Version: 2.0", b"Version: 9.0")
    lists = signed_lists(tmp_path, archive, packages=evil)
    inrelease = lists / f"{PREFIX}InRelease"
    signed = inrelease.read_bytes()
    out = tmp_path / "l"
    for data in (
        signed + b"\n" + release_text(evil, "NotAutomatic: yes"),
        release_text(evil) + signed,
        signed + archive.clearsign(release_text(evil)),
    ):
        inrelease.write_bytes(data)
        refused(
            lock(lists, out, "--keyring", str(archive.keyring)),
            out,
            "InRelease: not exactly one clear-signed text",
        )


def test_a_release_of_another_suite_under_this_ones_name_is_refused(tmp_path, keys):
    """A genuine signed Release of another suite (sid's, say) renamed to this suite's
    file: its Suite/Codename says which it is."""
    archive, _ = keys
    release = release_text(PACKAGES).replace(b"Codename: s", b"Suite: unstable\nCodename: sid")
    lists = signed_lists(tmp_path, archive, release)
    out = tmp_path / "l"
    refused(
        lock(lists, out, "--keyring", str(archive.keyring)),
        out,
        "InRelease: expected the Release of suite s, found one of unstable / sid",
    )


def test_a_detached_signature_is_verified_and_a_missing_one_refused(tmp_path, keys):
    archive, _ = keys
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / INDEX).write_bytes(PACKAGES)
    release = release_text(PACKAGES)
    (lists / f"{PREFIX}Release").write_bytes(release)
    out = tmp_path / "l"
    refused(lock(lists, out, "--keyring", str(archive.keyring)), out, "Release: unsigned (no ")
    (lists / f"{PREFIX}Release.gpg").write_bytes(archive.detach_sign(release))
    proc = lock(lists, out, "--keyring", str(archive.keyring))
    assert proc.returncode == 0 and f"s: key {archive.fingerprint}" in out.read_text(), proc.stderr


def test_no_release_file_is_refused_unless_the_lists_are_trusted(tmp_path, keys):
    archive, _ = keys
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / INDEX).write_bytes(PACKAGES)
    out = tmp_path / "l"
    refused(
        lock(lists, out, "--keyring", str(archive.keyring)),
        out,
        f"{lists / INDEX}: no InRelease or Release file",
        "--trust-lists",
    )
    # (and without --keyring: lists no apt source names, see below)
    refused(lock(lists, out), out, "no deb entry of the machine's apt sources", "--keyring FILE")
    refused(lock(lists, out, "--trust-lists", "--keyring", str(archive.keyring)), out, "choose one")
    proc = lock(lists, out, "--trust-lists")
    assert proc.returncode == 0, proc.stderr
    assert f"# Indexes NOT verified (--trust-lists): read as found in {lists}." in out.read_text()


def test_a_release_without_the_index_or_hashes_is_refused(tmp_path, keys):
    archive, _ = keys
    out = tmp_path / "l"
    lists = signed_lists(tmp_path, archive, release_text(PACKAGES, path="contrib/binary-amd64/Packages"))
    refused(
        lock(lists, out, "--keyring", str(archive.keyring)),
        out,
        "InRelease lists no SHA256 for main/binary-amd64/Packages",
    )
    (lists / f"{PREFIX}InRelease").write_bytes(archive.clearsign(b"Origin: Test\nCodename: s\n"))
    refused(lock(lists, out, "--keyring", str(archive.keyring)), out, "InRelease: no SHA256 hashes")


def test_a_missing_keyring_is_refused(tmp_path, keys):
    archive, _ = keys
    out = tmp_path / "l"
    missing = tmp_path / "nope.gpg"
    refused(
        lock(signed_lists(tmp_path, archive), out, "--keyring", str(missing)), out, f"--keyring {missing}"
    )


def test_an_expired_release_is_a_warning(tmp_path, keys):
    archive, _ = keys
    lists = signed_lists(
        tmp_path, archive, release_text(PACKAGES, "Valid-Until: Sat, 01 Jan 2000 00:00:00 UTC")
    )
    out = tmp_path / "l"
    proc = lock(lists, out, "--keyring", str(archive.keyring))
    assert proc.returncode == 0, proc.stderr
    assert "InRelease: expired on 2000-01-01 00:00 UTC (Valid-Until)" in proc.stderr
    assert "run 'apt-get update'" in proc.stderr


def test_the_pin_priority_comes_from_the_signed_release(tmp_path, keys):
    archive, _ = keys
    lists = signed_lists(
        tmp_path, archive, release_text(PACKAGES, "NotAutomatic: yes", "ButAutomaticUpgrades: yes")
    )
    with ListsVerifier([archive.keyring], sources=[], global_trust=[]) as v:
        AptIndex.load(lists, "amd64", v)
        assert v.priority(lists / INDEX) == 100
        [suite] = v.suites
        assert suite.signers == (archive.fingerprint,) and suite.release.suite == "s"


def test_compressed_indexes_are_checked_decompressed_or_as_downloaded(tmp_path, keys):
    import lzma

    archive, _ = keys
    lists = tmp_path / "lists"
    lists.mkdir()
    xz = lzma.compress(PACKAGES)
    (lists / (INDEX + ".xz")).write_bytes(xz)
    # a Release listing only the compressed file: the file itself is compared
    release = release_text(xz, path="main/binary-amd64/Packages.xz")
    (lists / f"{PREFIX}InRelease").write_bytes(archive.clearsign(release))
    with ListsVerifier([archive.keyring], sources=[], global_trust=[]) as v:
        assert "b" in AptIndex.load(lists, "amd64", v)
    (lists / (INDEX + ".xz")).write_bytes(lzma.compress(PACKAGES, preset=1))  # same text, other bytes
    with (
        ListsVerifier([archive.keyring], sources=[], global_trust=[]) as v,
        pytest.raises(AptError, match="Packages.xz"),
    ):
        AptIndex.load(lists, "amd64", v)


def test_default_keys_are_the_sources_signed_by_for_that_archive(tmp_path, keys):
    """Without --keyring, the keys are those the machine's apt trusts for the archive:
    the stranger's key, trusted for another archive only, does not verify this one."""
    from kiln.store.aptsources import SourceEntry

    archive, stranger = keys
    lists = signed_lists(tmp_path, stranger)
    sources = [
        SourceEntry(("deb",), ("http://h/debian",), ("s",), (str(archive.keyring),)),
        SourceEntry(("deb",), ("http://other.invalid/x",), ("s",), (str(stranger.armored),)),
    ]
    verifier = ListsVerifier(None, sources, global_trust=[str(stranger.keyring)])
    with verifier as v, pytest.raises(AptError, match="no good signature by a trusted key"):
        AptIndex.load(lists, "amd64", v)
    # an inline Signed-By block for the right archive verifies it
    inline = SourceEntry(("deb",), ("http://h/debian",), ("s",), (stranger.armored.read_text(),))
    with ListsVerifier(None, [inline], global_trust=[]) as v:
        assert "b" in AptIndex.load(lists, "amd64", v)
        assert v.suites[0].signers == (stranger.fingerprint,)


def test_the_verifier_uses_its_clock_for_valid_until(tmp_path, keys):
    archive, _ = keys
    release = release_text(PACKAGES, "Valid-Until: Sat, 01 Jan 2000 00:00:00 UTC")
    lists = signed_lists(tmp_path, archive, release)
    then = datetime(1999, 12, 31, tzinfo=UTC)
    with ListsVerifier([archive.keyring], sources=[], global_trust=[], now=then) as v:
        AptIndex.load(lists, "amd64", v)
        assert v.warnings == []


def test_an_index_is_checked_against_its_configured_suite_not_a_longer_named_release(tmp_path, keys):
    """A Release file named to prefix the index more closely
    (``h_debian_dists_s_main_InRelease``), signed by a key trusted for another archive,
    does not take over this archive's index: the suite and its keys come from the
    machine's sources."""
    from kiln.store.aptsources import SourceEntry

    archive, stranger = keys
    evil = PACKAGES.replace(b"Version: 2.0", b"Version: 9.0")
    lists = signed_lists(tmp_path, archive, packages=evil)  # (the real InRelease lists PACKAGES)
    (lists / f"{PREFIX}main_InRelease").write_bytes(
        stranger.clearsign(
            release_text(evil, path="binary-amd64/Packages").replace(b"Codename: s", b"Codename: s/main")
        )
    )
    sources = [
        SourceEntry(("deb",), ("http://h/debian",), ("s",), (str(archive.keyring),)),
        SourceEntry(("deb",), ("http://other.invalid/x",), ("s",), (str(stranger.keyring),)),
    ]
    verifier = ListsVerifier(None, sources, global_trust=[str(stranger.keyring)])
    with (
        verifier as v,
        pytest.raises(AptError, match=f"{PREFIX}InRelease lists, found .* the index is not what"),
    ):
        AptIndex.load(lists, "amd64", v)


def test_an_index_no_source_names_needs_chosen_keys(tmp_path, keys):
    """Lists no deb entry of the machine names (a stray file, another machine's lists) are
    checked only with --keyring keys, never with every key the machine trusts."""
    from kiln.store.aptsources import SourceEntry

    archive, _ = keys
    lists = signed_lists(tmp_path, archive)
    other = [SourceEntry(("deb",), ("http://elsewhere.invalid/debian",), ("s",), (str(archive.keyring),))]
    with (
        ListsVerifier(None, other, global_trust=[str(archive.keyring)]) as v,
        pytest.raises(AptError, match="no deb entry of the machine's apt sources has lists of this name"),
    ):
        AptIndex.load(lists, "amd64", v)
    with ListsVerifier([archive.keyring], other, global_trust=[]) as v:
        assert "b" in AptIndex.load(lists, "amd64", v)


def test_signed_by_fingerprints_narrow_the_keys(tmp_path, keys):
    """A Signed-By fingerprint (apt: any item not an absolute path) limits the good
    signatures to that key, taken from apt's global keyrings; it is never read as a file
    name (a file so named in the working directory is not a keyring)."""
    from kiln.store.aptsources import SourceEntry

    archive, stranger = keys
    trust = [str(archive.keyring), str(stranger.keyring)]
    by_stranger = [SourceEntry(("deb",), ("http://h/debian",), ("s",), (stranger.fingerprint.lower(),))]
    lists = signed_lists(tmp_path, archive)
    verifier = ListsVerifier(None, by_stranger, global_trust=trust)
    with verifier as v, pytest.raises(AptError, match="good signatures only by keys Signed-By does not name"):
        AptIndex.load(lists, "amd64", v)
    lists = signed_lists(tmp_path, stranger)
    with ListsVerifier(None, by_stranger, global_trust=trust) as v:
        AptIndex.load(lists, "amd64", v)
        assert v.suites[0].signers == (stranger.fingerprint,)


def test_apts_global_keyrings_armored_or_not(tmp_path, keys):
    """apt's global trust: trusted.gpg and trusted.gpg.d's *.gpg and *.asc (armored keys
    are dearmored for gpgv), used for an entry with no Signed-By."""
    from kiln.store.aptkeys import global_keyrings
    from kiln.store.aptsources import SourceEntry

    archive, stranger = keys
    d = tmp_path / "trusted.gpg.d"
    d.mkdir()
    (d / "archive.asc").write_bytes(archive.armored.read_bytes())
    (d / "notes.txt").write_text("not a keyring")
    trust = global_keyrings(tmp_path / "trusted.gpg", d)
    assert trust == [str(d / "archive.asc")]  # (no trusted.gpg here; other suffixes skipped)
    (tmp_path / "trusted.gpg").write_bytes(stranger.keyring.read_bytes())
    trust = global_keyrings(tmp_path / "trusted.gpg", d)
    assert trust == [str(tmp_path / "trusted.gpg"), str(d / "archive.asc")]
    plain = [SourceEntry(("deb",), ("http://h/debian",), ("s",), ())]
    with ListsVerifier(None, plain, global_trust=trust) as v:
        assert "b" in AptIndex.load(signed_lists(tmp_path, archive), "amd64", v)
        assert v.suites[0].signers == (archive.fingerprint,)


def test_inrelease_is_preferred_to_release(tmp_path, keys):
    """With both beside the index, the InRelease is the one checked (as apt prefers it): a
    stale unsigned Release next to it changes nothing."""
    archive, _ = keys
    lists = signed_lists(tmp_path, archive)
    (lists / f"{PREFIX}Release").write_bytes(release_text(b"old"))
    out = tmp_path / "l"
    proc = lock(lists, out, "--keyring", str(archive.keyring))
    assert proc.returncode == 0, proc.stderr
    with ListsVerifier([archive.keyring], sources=[], global_trust=[]) as v:
        AptIndex.load(lists, "amd64", v)
        assert [s.path.name for s in v.suites] == [f"{PREFIX}InRelease"]


def test_an_older_release_than_one_verified_before_is_refused(tmp_path, keys):
    """A genuine signed Release put back after a newer one was verified (a rollback: no
    Valid-Until to catch it), as an InRelease or as a Release, is refused as apt refuses
    it; one dated in the future too. The dates are kept by suite, newest first; only
    Releases verified with the machine's keys are recorded (a --keyring run could record
    a far-future date that refuses every genuine Release after it)."""
    from kiln.store import aptseen
    from kiln.store.aptsources import SourceEntry

    archive, _ = keys
    sources = [SourceEntry(("deb",), ("http://h/debian",), ("s",), (str(archive.keyring),))]
    seen_file = tmp_path / "home" / aptseen.FILE_NAME
    now = datetime(2026, 3, 20, tzinfo=UTC)

    def dated(day: int) -> bytes:
        return release_text(PACKAGES, f"Date: {day:02d} Mar 2026 10:00:00 UTC")

    def verify(lists: Path, keyring: list[Path] | None = None) -> ListsVerifier:
        with ListsVerifier(keyring, sources, global_trust=[], now=now, seen=aptseen.load(seen_file)[0]) as v:
            AptIndex.load(lists, "amd64", v)
        aptseen.save(seen_file, v.dates)
        return v

    lists = signed_lists(tmp_path, archive, dated(10))
    verify(lists)
    assert json.loads(seen_file.read_text()) == {PREFIX: "2026-03-10T10:00:00+00:00"}
    (lists / f"{PREFIX}InRelease").write_bytes(archive.clearsign(dated(9)))
    with pytest.raises(AptError) as e:
        verify(lists)
    assert str(e.value).startswith(
        f"{lists / PREFIX}InRelease: dated 2026-03-09 10:00 UTC, older than the Release of this suite "
        "an earlier kiln lock verified (2026-03-10 10:00 UTC): an old Release put back (a rollback)?"
    ), e.value
    # the same old Release put back as Release + Release.gpg: the same suite, refused
    (lists / f"{PREFIX}InRelease").unlink()
    (lists / f"{PREFIX}Release").write_bytes(dated(9))
    (lists / f"{PREFIX}Release.gpg").write_bytes(archive.detach_sign(dated(9)))
    with pytest.raises(AptError, match="Release: dated 2026-03-09 10:00 UTC, older than"):
        verify(lists)
    # chosen keys: neither checked against nor recorded
    verify(lists, [archive.keyring])
    (lists / f"{PREFIX}Release").write_bytes(dated(30))
    (lists / f"{PREFIX}Release.gpg").write_bytes(archive.detach_sign(dated(30)))
    with pytest.raises(
        AptError, match=r"dated 2026-03-30 10:00 UTC, after this machine's clock .*not valid yet"
    ):
        verify(lists, [archive.keyring])
    assert json.loads(seen_file.read_text()) == {PREFIX: "2026-03-10T10:00:00+00:00"}
    (lists / f"{PREFIX}Release").write_bytes(dated(11))
    (lists / f"{PREFIX}Release.gpg").write_bytes(archive.detach_sign(dated(11)))
    verify(lists)
    assert json.loads(seen_file.read_text()) == {PREFIX: "2026-03-11T10:00:00+00:00"}


def test_the_dates_seen_file_damaged_or_unwritable_is_a_warning(tmp_path, keys):
    """A damaged record is said and replaced, one that cannot be written is said: the
    rollback check is lost, never the lock."""
    archive, _ = keys
    lists = signed_lists(tmp_path, archive)
    out = tmp_path / "l"
    home = tmp_path / "home"
    home.mkdir()
    (home / "apt-releases.json").write_text("{not json")
    proc = lock(lists, out, "--keyring", str(archive.keyring))
    assert proc.returncode == 0 and "cannot read the Release dates seen before" in proc.stderr, proc.stderr
    assert json.loads((home / "apt-releases.json").read_text()) == {}  # (chosen keys: nothing recorded)
    (home / "apt-releases.json").unlink()
    (home / "apt-releases.json").mkdir()  # (cannot be replaced by a file)
    out.unlink()
    proc = lock(lists, out, "--keyring", str(archive.keyring))
    assert proc.returncode == 0 and "warning: cannot record the Release dates in" in proc.stderr, proc.stderr


def test_an_updates_suite_is_its_codenames_and_a_bad_keyring_is_named(tmp_path, keys):
    """A ``<codename>/updates`` suite (old security archives) is verified against a
    Release naming the codename (apt drops the last component); a keyring file that is
    neither armored nor starts with a public key packet is an error naming it."""
    from kiln.store.aptsources import SourceEntry

    archive, _ = keys
    lists = tmp_path / "lists"
    lists.mkdir()
    prefix = "h_debian_dists_s_updates_"
    (lists / (prefix + "main_binary-amd64_Packages")).write_bytes(PACKAGES)
    (lists / (prefix + "InRelease")).write_bytes(archive.clearsign(release_text(PACKAGES)))
    sources = [SourceEntry(("deb",), ("http://h/debian",), ("s/updates",), (str(archive.keyring),))]
    with ListsVerifier(None, sources, global_trust=[]) as v:
        assert "b" in AptIndex.load(lists, "amd64", v)
    junk = tmp_path / "junk.gpg"
    junk.write_bytes(b"\x00not a key")
    with pytest.raises(AptError, match=f"{junk}: not an OpenPGP keyring"):
        ListsVerifier([junk], sources=[], global_trust=[])
