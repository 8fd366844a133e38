"""narinfo: golden files written by ``nix copy --to file://`` parse to the right values
and render back byte for byte; strict errors name the line; and (with Nix) fresh
narinfos from ``nix copy`` round-trip too."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard
from fmtkit import NIX_OPTS, nix, run

from kiln.store import nar as narmod
from kiln.store import narinfo
from kiln.store.errors import FormatError
from kiln.store.hashes import Hash
from kiln.store.keyfiles import load_public_key
from kiln.store.pathinfo import PathInfo
from kiln.store.signing import SecretKey, valid_signers

GOLDEN = Path(__file__).parent / "golden"
SD = "/nix/store"


def golden(name: str) -> str:
    return (GOLDEN / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["ia.narinfo", "ca-text.narinfo", "ca-source.narinfo"])
def test_golden_roundtrip(name: str) -> None:
    text = golden(name)
    info = narinfo.parse(text, SD)
    assert info.render() == text
    assert narinfo.parse(info.render(), SD) == info


def test_golden_fields() -> None:
    info = narinfo.parse(golden("ia.narinfo"), SD)
    assert info.path == "/nix/store/fkkph61ilz8i4ls15kgzaqydv22n5vgs-golden-out"
    assert info.url == "nar/1vlpc2smjj7li9gj5acz2947l7iazrza9hsq39bawq5x5javvzhf.nar.zst"
    assert info.compression == "zstd"
    assert info.file_size == 138 and info.nar_size == 176
    assert info.references == ("/nix/store/4chcqkl41xk5hfvvbzlpakiv8z602i6h-golden-dep.txt",)
    assert info.deriver == "/nix/store/lpkd5wy1fa0glgj39mq9gjp38k3dx46f-golden-out.drv"
    assert info.ca is None and len(info.sigs) == 1
    # The NAR file the narinfo points at matches FileHash/FileSize and NarHash/NarSize.
    blob = (GOLDEN / "ia.nar.zst").read_bytes()
    assert Hash.sha256_of(blob) == info.file_hash and len(blob) == info.file_size
    nar = zstandard.ZstdDecompressor().decompressobj().decompress(blob)  # no size in frame
    assert Hash.sha256_of(nar) == info.nar_hash and len(nar) == info.nar_size
    assert [e.type for e in narmod.entries([nar])] == ["regular"]
    ca = narinfo.parse(golden("ca-source.narinfo"), SD)
    assert ca.ca == f"fixed:r:{ca.nar_hash.to_nix32()}" and ca.references == () and ca.deriver is None


@pytest.mark.parametrize("name", ["ia.narinfo", "ca-text.narinfo", "ca-source.narinfo"])
def test_golden_signature_is_reproduced(name: str) -> None:
    """ed25519 is deterministic: kiln signing the same fingerprint with the same key gives
    exactly the Sig line Nix wrote; and the Sig verifies with the public key."""
    info = narinfo.parse(golden(name), SD)
    sk = SecretKey.parse(golden("test-key.sec"))
    assert sk.sign(info.fingerprint()) == info.sigs[0]
    assert valid_signers(info, [load_public_key(GOLDEN / "test-key.pub")]) == {"kiln-test-1"}


def test_pathinfo_conversion() -> None:
    info = narinfo.parse(golden("ia.narinfo"), SD)
    pi = info.to_pathinfo()
    assert type(pi) is PathInfo and pi.fingerprint() == info.fingerprint()
    assert narinfo.NarInfo.from_pathinfo(pi, info.url, info.compression) == info


def test_render_optional_fields() -> None:
    info = narinfo.parse(golden("ia.narinfo"), SD)
    bare = replace(info, file_hash=None, file_size=None, deriver=None, sigs=(), references=())
    text = bare.render()
    assert "FileHash" not in text and "FileSize" not in text and "Deriver" not in text and "Sig" not in text
    assert "\nReferences: \n" in text  # Nix always writes the line, with a trailing space
    assert narinfo.parse(text, SD) == bare
    two = replace(info, sigs=("a:AAAA", "b:BBBB"))
    assert two.render().count("\nSig: ") == 2
    assert narinfo.parse(two.render(), SD).sigs == ("a:AAAA", "b:BBBB")


def test_parse_leniency_like_nix() -> None:
    text = golden("ia.narinfo")
    # unknown keys are ignored; no Compression means bzip2; unknown-deriver means none
    t = text.replace("Compression: zstd\n", "X-Future: 1\n").replace(
        "Deriver: lpkd5wy1fa0glgj39mq9gjp38k3dx46f-golden-out.drv", "Deriver: unknown-deriver"
    )
    info = narinfo.parse(t, SD)
    assert info.compression == "bzip2" and info.deriver is None
    # "References:" without the trailing space is accepted too
    assert (
        narinfo.parse(golden("ca-text.narinfo").replace("References: \n", "References:\n"), SD).references
        == ()
    )


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda t: t.replace("NarSize: 176\n", ""), r"missing required field\(s\): NarSize"),
        (lambda t: t.replace("URL: ", "URL:: "), r"missing required field\(s\): URL"),
        (lambda t: t + "NarSize: 1\n", r"line 11: duplicate NarSize"),
        (lambda t: t.replace("NarSize: 176", "NarSize: -1"), r"line 7 \('NarSize: -1'\): NarSize must be"),
        (lambda t: t.replace("NarSize: 176", "NarSize: 1e3"), r"line 7 .*non-negative decimal"),
        (lambda t: t.replace("NarHash: sha256:", "NarHash: sha256:x"), r"line 6 .*has 53 characters"),
        (lambda t: t.replace("NarHash: sha256:", "NarHash: "), r"line 6 .*algorithm prefix"),
        (lambda t: t.replace("FileSize: 138", "FileSize: lots"), r"line 5 .*FileSize"),
        (lambda t: t.replace("References: 4ch", "References: 4ch/"), r"line 8 .*not a store path base name"),
        (lambda t: t.replace("/nix/store/fkk", "/gnu/store/fkk"), r"line 1 .*not in the store '/nix/store'"),
        (lambda t: t.replace("Deriver: lpkd", "Deriver: xx"), r"line 9 .*not a store path base name"),
        (lambda t: "garbage line\n" + t, r"line 1: expected 'Key: value', found 'garbage line'"),
        (lambda t: re.sub(r"Sig: .*", "Sig: ", t), r"line 10: empty Sig"),
        (lambda t: t.replace("Compression: zstd", "Compression: z std"), r"line 3 .*one word"),
        # as strict as Nix's parser (``NarInfo::NarInfo``): a zero NarSize, a padded hash,
        # references separated by anything but spaces are corrupt
        (lambda t: t.replace("NarSize: 176", "NarSize: 0"), r"line 7 .*NarSize must be positive"),
        (lambda t: t.replace("NarHash: sha256:", "NarHash:  sha256:"), r"line 6 .*whitespace around"),
        (lambda t: re.sub(r"(FileHash: \S+)", r"\1 ", t), r"line 4 .*whitespace around"),
        (lambda t: re.sub(r"References: (\S+)", "References: \\1\t\\1", t), r"line 8 .*invalid characters"),
    ],
)
def test_parse_errors_name_the_line(edit, pattern: str) -> None:
    with pytest.raises(FormatError, match=pattern):
        narinfo.parse(edit(golden("ia.narinfo")), SD)


@pytest.mark.parametrize(
    ("ca", "pattern"),
    [
        ("fixed:r:sha256:" + "0" * 59, "has 59 characters"),
        ("fixed:r:sha256:", "sha256"),
        ("git:sha1:abc", "is not 'text:sha256"),
        ("text:sha1:" + "0" * 32, "is not 'text:sha256"),
        ("fixed:r:", "no algorithm prefix"),
    ],
)
def test_a_malformed_ca_is_refused(ca: str, pattern: str) -> None:
    """CA is not covered by the signature: a malformed one must not reach the store
    (where it made `kiln store verify` fail for every path)."""
    text = golden("ia.narinfo") + f"CA: {ca}\n"
    with pytest.raises(FormatError, match=pattern):
        narinfo.parse(text, SD)


@pytest.mark.nix
def test_fresh_nix_copy_roundtrips(corpus: dict[str, Path], tmp_path: Path) -> None:
    """Narinfos Nix writes now (uncompressed and zstd) parse, render identically, and
    agree with kiln's own NAR hash of the source tree."""
    p = run("nix-store", "--add", corpus["mixed"]).decode().strip()
    h, size = narmod.hash_path(corpus["mixed"])
    for comp in ("none", "zstd", "xz"):
        cache = tmp_path / comp
        nix("copy", "--to", f"file://{cache}?compression={comp}", p)
        text = (cache / f"{Path(p).name[:32]}.narinfo").read_text()
        info = narinfo.parse(text, SD)
        assert info.render() == text
        assert (info.nar_hash, info.nar_size, info.compression) == (h, size, comp)
        blob = (cache / info.url).read_bytes()
        assert Hash.sha256_of(blob) == info.file_hash
    assert NIX_OPTS  # the helper passed no-substituter options
