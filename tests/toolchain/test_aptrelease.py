"""The pure pieces of apt index verification: Release parsing, gpgv's status lines, armor,
apt's list file names, and which keys an archive is checked with."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from kiln.store.apt import AptError
from kiln.store.aptkeys import SuiteKeys, keys_for, source_prefixes
from kiln.store.aptrelease import clearsigned_problem, dearmor, good_signers, parse_release
from kiln.store.aptsources import SourceEntry, list_prefix
from kiln.store.aptverify import named_suite
from kiln.store.errors import FormatError

H1, H2 = "a" * 64, "B" * 64

RELEASE = f"""Origin: Debian
Suite: oldstable
Codename: bookworm
Date: Sat, 11 Jul 2026 10:16:52 UTC
Valid-Until: Mon, 07 Dec 2026 00:22:33 UTC
SHA256:
 {H1}   50060337 main/binary-amd64/Packages
 {H2} 12 main/binary-amd64/Packages.xz
"""


def test_a_release_is_read():
    r = parse_release(RELEASE, "R")
    assert r.suite == "bookworm"
    assert r.sha256 == {
        "main/binary-amd64/Packages": (H1, 50060337),
        "main/binary-amd64/Packages.xz": (H2.lower(), 12),
    }
    assert r.valid_until == datetime(2026, 12, 7, 0, 22, 33, tzinfo=UTC)
    assert not r.not_automatic and not r.but_automatic_upgrades
    flags = parse_release(RELEASE + "NotAutomatic: yes\nButAutomaticUpgrades: Yes\n", "R")
    assert flags.not_automatic and flags.but_automatic_upgrades


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (RELEASE.replace(" 12 ", " x "), "R: SHA256 line 2: expected '<64 hex digits> <size> <path>', found"),
        (RELEASE.replace(H1, "a" * 63), "R: SHA256 line 1: expected"),
        (RELEASE + "Codename: evil\n", "R: field 'Codename' is given twice"),  # it reads two ways
        ("Origin: x\nMD5Sum:\n 00 1 main/Packages\n", "R: no SHA256 hashes"),
        (
            RELEASE.replace("Mon, 07 Dec 2026 00:22:33 UTC", "soon"),
            "R: Valid-Until: expected an RFC 2822 date",
        ),
        (
            RELEASE.replace(" UTC\nSHA256", " -0000\nSHA256"),
            "R: Valid-Until: expected a date with a time zone",
        ),
    ],
)
def test_a_bad_release_is_a_format_error(text, error):
    with pytest.raises(FormatError) as e:
        parse_release(text, "R")
    assert str(e.value).startswith(error), e.value


FPR = "ED541312A33F1128F10B1C6C54404762BBB6E853"
PRIMARY = "AC530D520F2F3269F5E98313A48449044AAD5C5D"


def validsig(fpr: str = FPR, digest: str = "8") -> str:
    return f"[GNUPG:] VALIDSIG {fpr} 2026-11-30 1795998154 0 4 0 1 {digest} 01 {PRIMARY}"


def test_a_good_signature_needs_goodsig_and_validsig_and_a_strong_digest():
    good = f"[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG {FPR[-16:]} Debian\n{validsig()}\n"
    assert good_signers(good).good == ((FPR, PRIMARY),) and good_signers(good).by(()) == (PRIMARY,)
    # VALIDSIG without GOODSIG: gpgv says so for a signature by an expired or revoked key
    expired = f"[GNUPG:] NEWSIG\n[GNUPG:] EXPKEYSIG {FPR[-16:]} Debian\n{validsig()}\n"
    sigs = good_signers(expired)
    assert sigs.good == () and sigs.other == (f"key {FPR[-16:]}: expired key",)  # (said once)
    weak = f"[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG {FPR[-16:]} Debian\n{validsig(digest='2')}\n"
    assert good_signers(weak).good == () and "weak digest SHA1" in good_signers(weak).other[0]
    # a GOODSIG of one signature does not carry over to the next
    carried = f"[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG {FPR[-16:]} D\n[GNUPG:] NEWSIG\n{validsig()}\n"
    assert good_signers(carried).good == ()
    unknown = "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 6ED0E7B82643E131 1 8 01 1783765031 9 4CB5\n"
    unknown += "[GNUPG:] NO_PUBKEY 6ED0E7B82643E131\n"
    assert good_signers(unknown + good).by(()) == (PRIMARY,)  # one good one is enough, as apt
    assert good_signers(unknown).other == ("key 6ED0E7B82643E131: not in the trusted keyrings",)


def test_signed_by_fingerprints_choose_among_good_signatures():
    sigs = good_signers(f"[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG {FPR[-16:]} Debian\n{validsig()}\n")
    assert sigs.by((PRIMARY,)) == (PRIMARY,)  # a primary key's fingerprint covers its subkeys
    assert sigs.by((FPR,)) == (PRIMARY,)  # the signing subkey itself
    assert sigs.by((FPR + "!",)) == (PRIMARY,)
    assert sigs.by((PRIMARY + "!",)) == ()  # "!": that exact key only, not its subkeys
    assert sigs.by(("0" * 40,)) == ()


def test_gpgv_errors_refuse_the_file():
    good = f"[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG {FPR[-16:]} Debian\n{validsig()}\n"
    with pytest.raises(FormatError, match="gpgv: ERROR proc_pkt.plaintext 89_BAD_DATA"):
        good_signers(good + "[GNUPG:] ERROR proc_pkt.plaintext 89_BAD_DATA\n")
    with pytest.raises(FormatError, match="gpgv: NODATA 1"):
        good_signers("[GNUPG:] NODATA 1\n")


def test_an_inrelease_is_exactly_one_clearsigned_text():
    one = (
        b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: x\n- -----BEGIN dash-escaped\n"
        b"-----BEGIN PGP SIGNATURE-----\n\nAAAA\n=AAAA\n-----END PGP SIGNATURE-----\n"
    )
    assert clearsigned_problem(one) is None
    assert clearsigned_problem(b"\n\n" + one + b"\n") is None  # blank lines around: as apt
    for bad in (b"x\n" + one, one + b"x\n", one + one, one.replace(b"SIGNED MESSAGE", b"MESSAGE"), b""):
        assert clearsigned_problem(bad) is not None, bad


def test_any_bad_signature_refuses_the_file():
    good = f"[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG {FPR[-16:]} Debian\n{validsig()}\n"
    with pytest.raises(FormatError, match="bad signature by key 0123456789ABCDEF: the file was altered"):
        good_signers(good + "[GNUPG:] NEWSIG\n[GNUPG:] BADSIG 0123456789ABCDEF Evil\n")


def armor(data: bytes, crc: str | None = None) -> str:
    from kiln.store.aptrelease import _crc24

    body = base64.b64encode(data).decode()
    crc = crc or base64.b64encode(_crc24(data).to_bytes(3, "big")).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join(
        ["-----BEGIN PGP PUBLIC KEY BLOCK-----", "Comment: test", "", *lines, f"={crc}"]
        + ["-----END PGP PUBLIC KEY BLOCK-----", ""]
    )


def test_dearmor():
    data = bytes(range(256)) * 3
    assert dearmor(armor(data), "k") == data
    assert dearmor(armor(b"one") + armor(b"two"), "k") == b"onetwo"
    # the CRC-24 of the empty message is RFC 4880's initial value
    assert armor(b"").endswith("=twTO\n-----END PGP PUBLIC KEY BLOCK-----\n")
    with pytest.raises(FormatError, match="k: key block 1: CRC-24 000000 expected"):
        dearmor(armor(data, crc="AAAA"), "k")
    with pytest.raises(FormatError, match="k: key block 1: bad base64"):
        dearmor(armor(data).replace("Comment: test\n\n", "Comment: test\n\n!!"), "k")
    with pytest.raises(FormatError, match="k: no armored public key block"):
        dearmor("-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n", "k")


@pytest.mark.parametrize(
    ("uri", "suite", "prefix"),
    [
        # the names apt gave this machine's lists
        ("http://deb.debian.org/debian", "bookworm", "deb.debian.org_debian_dists_bookworm_"),
        ("http://deb.debian.org/debian-security/", "bookworm-security", "deb.debian.org_debian-security_dists_bookworm-security_"),
        ("https://user:pw@host:8080/a_b/", "s", "host:8080_a%5fb_dists_s_"),
        ("file:/srv/repo", "s", "_srv_repo_dists_s_"),
        ("file:///srv/repo", "s", "_srv_repo_dists_s_"),
        ("http://host/flat", "./", "host_flat_._"),
        ("http://host/x~y", "s", "host_x%7ey_dists_s_"),
        # apt's URI parsing: brackets of an IPv6 host dropped, credentials up to the last
        # "@" of the host part, non-ASCII quoted as its UTF-8 bytes
        ("http://[2001:db8::1]/debian", "s", "2001:db8::1_debian_dists_s_"),
        ("http://u:p@ss@host/x", "s", "host_x_dists_s_"),
        ("http://h\u00f4st/x", "s", "h%c3%b4st_x_dists_s_"),
    ],
)  # fmt: skip
def test_list_prefix_is_apts_file_name(uri, suite, prefix):
    assert list_prefix(uri, suite) == prefix


def test_keys_for_an_archive():
    a = SourceEntry(("deb",), ("http://h/debian",), ("s", "t"), ("/a.gpg",))
    b = SourceEntry(("deb", "deb-src"), ("http://h/debian",), ("s",), ())
    c = SourceEntry(("deb",), ("http://o/x",), ("s",), ("/c.gpg", "/d.gpg", "ab12cd!"))
    flat = SourceEntry(("deb",), ("http://f/repo",), ("./",), ())
    src_only = SourceEntry(("deb-src",), ("http://s/x",), ("s",), ("/e.gpg",))
    prefixes = source_prefixes([a, b, c, flat, src_only])
    assert {p: (suite, len(es)) for p, (suite, es) in prefixes.items()} == {
        "h_debian_dists_s_": ("s", 2), "h_debian_dists_t_": ("t", 1), "o_x_dists_s_": ("s", 1),
        "f_repo_._": ("./", 1),
    }  # fmt: skip
    trust = ["/etc/apt/trusted.gpg"]
    assert keys_for(prefixes["h_debian_dists_t_"][1], trust) == SuiteKeys(("/a.gpg",))
    # an entry naming no Signed-By: apt's global keyrings
    assert keys_for([b], trust) == SuiteKeys(("/etc/apt/trusted.gpg",))
    # two entries of one suite that disagree: refused (as apt), not merged into wider trust
    with pytest.raises(AptError, match=r"R: the machine's apt sources give this suite conflicting Signed-By"):
        keys_for(prefixes["h_debian_dists_s_"][1], trust, "R")
    # an item not an absolute path is a fingerprint (apt), never a file
    assert keys_for([c], trust) == SuiteKeys(("/c.gpg", "/d.gpg"), ("AB12CD!",))
    only_fpr = SourceEntry(("deb",), ("http://f/x",), ("s",), ("0123abcd",))
    assert keys_for([only_fpr], trust) == SuiteKeys(("/etc/apt/trusted.gpg",), ("0123ABCD",))


def test_the_suite_a_release_file_is_named_for():
    assert named_suite("deb.debian.org_debian_dists_bookworm-security_InRelease") == "bookworm-security"
    assert named_suite("h_debian_dists_s_Release") == "s"
    assert named_suite("h_debian_dists_s_main_InRelease") == "s/main"
    assert named_suite("h_x_dists_a_dists_b_InRelease") == "b"
    assert named_suite("host_flat_._InRelease") is None


def test_sources_name_their_keys_in_both_formats(tmp_path):
    from kiln.store.aptsources import read_sources

    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "a.sources").write_text(
        "Types: deb\nURIs: http://a.invalid/debian\nSuites: s t\nComponents: main\n"
        "Signed-By: /k1.gpg /k2.gpg\n\n"
        "Types: deb\nURIs: http://b.invalid/\nSuites: s\nSigned-By:\n"
        " -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n QUJD\n =x\n -----END PGP PUBLIC KEY BLOCK-----\n"
    )
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64 signed-by=/k3.gpg] http://c.invalid/debian s main\ndeb http://d.invalid/ s main\n"
    )
    entries = read_sources(d, tmp_path / "sources.list")
    assert [(e.uris, e.suites, e.signed_by) for e in entries] == [
        (("http://c.invalid/debian",), ("s",), ("/k3.gpg",)),
        (("http://d.invalid/",), ("s",), ()),
        (("http://a.invalid/debian",), ("s", "t"), ("/k1.gpg", "/k2.gpg")),
        (
            ("http://b.invalid/",),
            ("s",),
            ("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nQUJD\n=x\n-----END PGP PUBLIC KEY BLOCK-----",),
        ),
    ]
