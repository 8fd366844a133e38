"""nix-base32, hash text forms and store path computation: golden vectors (taken from
Nix 2.8 once, hard-coded here so they run without Nix) plus live differential tests
against ``nix-hash``, ``nix-instantiate`` and ``nix-store --add-fixed``."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import pytest
from fmtkit import nix, run

from kiln.store import nar as narmod
from kiln.store import nixbase32
from kiln.store.errors import FormatError
from kiln.store.hashes import Hash
from kiln.store.paths import (
    StorePath,
    check_name,
    compress_hash,
    make_fixed_output_path,
    make_source_path,
    make_text_path,
)

HELLO = b"hello\n"
HELLO_SHA256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"


# ---------------------------------------------------------------------------- nix32


@pytest.mark.parametrize(
    ("data", "want"),
    [
        (b"", ""),
        (b"\x00", "00"),
        (b"\xff", "7z"),
        (b"\x01\x02", "00h1"),  # 0x0201 = 513 = 16*32 + 1
        (hashlib.sha256(b"").digest(), "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"),
        # the rest from nix-hash --type ALGO --to-base32 HEX
        (hashlib.sha256(HELLO).digest(), "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq"),
        (bytes(range(1, 21)), "2h9i448h1w70s30b184hh1q60l2060h1"),
        (bytes(range(15)) + b"\xff", "7z1q6hq2qa1440f1h50h1h4080"),
    ],
)
def test_nix32_golden(data: bytes, want: str) -> None:
    assert nixbase32.encode(data) == want
    assert nixbase32.decode(want, len(data)) == data


def test_nix32_lengths_and_roundtrip() -> None:
    rng = random.Random(3)
    for n in range(0, 70):
        data = rng.randbytes(n)
        enc = nixbase32.encode(data)
        assert len(enc) == nixbase32.encoded_len(n) == (0 if n == 0 else (n * 8 - 1) // 5 + 1)
        assert set(enc) <= set(nixbase32.ALPHABET)
        assert nixbase32.decode(enc, n) == data


def test_nix32_rejects() -> None:
    good = nixbase32.encode(b"\x01" * 20)
    with pytest.raises(FormatError, match="length 31, expected 32"):
        nixbase32.decode(good[:-1], 20)
    for c in "eout":  # not in the alphabet
        with pytest.raises(FormatError, match=f"invalid character '{c}'"):
            nixbase32.decode(good[:-1] + c, 20)
    # 2 characters carry 10 bits for 1 byte: the 2 spare high bits must be zero, so
    # every byte string has exactly one encoding.
    with pytest.raises(FormatError, match="non-zero padding bits"):
        nixbase32.decode("zz", 1)
    assert not nixbase32.is_valid("zz", 1)
    assert nixbase32.is_valid("7z", 1)


def test_hash_text_forms() -> None:
    h = Hash("sha256", bytes.fromhex(HELLO_SHA256))
    assert h.to_hex() == f"sha256:{HELLO_SHA256}"
    for text in (h.to_hex(), h.to_nix32(), h.sri, HELLO_SHA256, h.nix32):
        assert Hash.parse(text, "sha256") == h
    assert Hash.parse(h.sri) == h
    with pytest.raises(FormatError, match="no algorithm prefix"):
        Hash.parse(HELLO_SHA256)
    with pytest.raises(FormatError, match="expected a sha1 hash"):
        Hash.parse(h.to_hex(), "sha1")
    with pytest.raises(FormatError, match="has 5 characters"):
        Hash.parse("sha256:abcde")
    with pytest.raises(FormatError, match="unknown hash algorithm"):
        Hash("sha3", b"")
    # non-ASCII where base64 is expected is a FormatError, not base64's ValueError
    with pytest.raises(FormatError, match="invalid base64 in SRI"):
        Hash.parse("sha256-\u00e9" + h.sri[8:])
    with pytest.raises(FormatError, match="has 44 characters"):
        Hash.parse("sha256:\u00e9" + h.sri[8:])


# ---------------------------------------------------------------------------- store paths

# Golden values produced by Nix 2.8 on this machine (commands in the comments).
GOLDEN_PATHS = {
    # nix-instantiate --eval -E 'builtins.toFile "hello.txt" "hello\n"'
    "text": "/nix/store/qa1w9gdfrba6jl2r57mb3c43863gqywp-hello.txt",
    # nix-instantiate --eval -E 'builtins.toFile "a.txt" "A"'
    "text-a": "/nix/store/l82nr4gna33sc2g8m4hkkr6r983dlbd6-a.txt",
    # ... 'let a = builtins.toFile "a.txt" "A"; in builtins.toFile "b.txt" "refers to ${a}"'
    "text-with-ref": "/nix/store/k5r9hqnif68zy4p8d1ca79ri7ag6rizd-b.txt",
    # nix-store --add-fixed sha256 hello.txt
    "flat-sha256": "/nix/store/gy454w1cxaq731grqwylhzf4pp9r5izh-hello.txt",
    # nix-store --add-fixed sha1 hello.txt
    "flat-sha1": "/nix/store/svdva85yi507g9vncgsaxvnd1r808h4w-hello.txt",
    # nix-store --add-fixed --recursive sha1 hello.txt
    "recursive-sha1": "/nix/store/hzq8n5jpi3g2d0xhlvqd8q1gx5c9s6i3-hello.txt",
    # nix-store --add-fixed --recursive sha256 hello.txt  (== nix-store --add)
    "recursive-sha256": "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt",
}


def test_store_paths_golden(tmp_path: Path) -> None:
    sd = "/nix/store"
    assert str(make_text_path("hello.txt", HELLO, store_dir=sd)) == GOLDEN_PATHS["text"]
    a = StorePath.parse(GOLDEN_PATHS["text-a"])
    assert str(make_text_path("a.txt", b"A", store_dir=sd)) == str(a)
    assert (
        str(make_text_path("b.txt", f"refers to {a}".encode(), [a], store_dir=sd))
        == GOLDEN_PATHS["text-with-ref"]
    )
    flat256 = Hash("sha256", hashlib.sha256(HELLO).digest())
    flat1 = Hash("sha1", hashlib.sha1(HELLO).digest())
    assert str(make_fixed_output_path("hello.txt", flat256, False, sd)) == GOLDEN_PATHS["flat-sha256"]
    assert str(make_fixed_output_path("hello.txt", flat1, False, sd)) == GOLDEN_PATHS["flat-sha1"]
    f = tmp_path / "hello.txt"
    f.write_bytes(HELLO)
    nar = narmod.dump_bytes(f)
    rec1 = Hash("sha1", hashlib.sha1(nar).digest())
    rec256 = Hash.sha256_of(nar)
    assert str(make_fixed_output_path("hello.txt", rec1, True, sd)) == GOLDEN_PATHS["recursive-sha1"]
    assert str(make_fixed_output_path("hello.txt", rec256, True, sd)) == GOLDEN_PATHS["recursive-sha256"]
    assert str(make_source_path("hello.txt", rec256, store_dir=sd)) == GOLDEN_PATHS["recursive-sha256"]


def test_store_dir_is_part_of_the_hash() -> None:
    h = Hash.sha256_of(b"x")
    a = make_source_path("x", h, store_dir="/nix/store")
    b = make_source_path("x", h)  # /kiln/store
    assert a.name == b.name and a.hash_part != b.hash_part
    assert str(b).startswith("/kiln/store/")


def test_compress_hash_xor_folds() -> None:
    d = bytes(range(32))
    out = compress_hash(d)
    assert len(out) == 20
    assert out[0] == 0 ^ 20 and out[11] == 11 ^ 31 and out[12] == 12


def test_store_path_parse_and_names() -> None:
    p = StorePath.parse(GOLDEN_PATHS["text"], "/nix/store")
    assert (p.hash_part, p.name, p.base) == (
        "qa1w9gdfrba6jl2r57mb3c43863gqywp",
        "hello.txt",
        "qa1w9gdfrba6jl2r57mb3c43863gqywp-hello.txt",
    )
    assert StorePath.parse_base(p.base, "/nix/store") == p
    for bad, msg in [
        ("hello", "not a store path"),
        ("/nix/store/short-x", "not a store path base name"),
        ("/nix/store/" + "e" * 32 + "-x", "invalid hash part"),
        ("/nix/store/" + "a" * 32 + "-", "not a store path base name"),
        ("/nix/store/" + "a" * 32 + "-.hidden", "must not start with '.'"),
        ("/nix/store/" + "a" * 32 + "-a b", "invalid characters ' '"),
    ]:
        with pytest.raises(FormatError, match=msg):
            StorePath.parse(bad)
    with pytest.raises(FormatError, match="not in the store"):
        StorePath.parse(GOLDEN_PATHS["text"], "/kiln/store")
    assert check_name("a+b-c.d_e?f=g") == "a+b-c.d_e?f=g"
    with pytest.raises(FormatError, match="max 211"):
        check_name("x" * 212)
    check_name("x" * 211)


# ---------------------------------------------------------------------------- live Nix


@pytest.mark.nix
def test_golden_paths_still_match_nix(tmp_path: Path) -> None:
    out = run("nix-instantiate", "--eval", "-E", 'builtins.toFile "hello.txt" "hello\\n"').decode().strip()
    assert out.strip('"') == GOLDEN_PATHS["text"]
    f = tmp_path / "hello.txt"
    f.write_bytes(HELLO)
    assert run("nix-store", "--add-fixed", "sha1", f).decode().strip() == GOLDEN_PATHS["flat-sha1"]
    assert (
        run("nix-hash", "--type", "sha256", "--flat", "--base32", f).decode().strip()
        == Hash.sha256_of(HELLO).nix32
    )


@pytest.mark.nix
def test_random_text_and_fixed_paths_match_nix(tmp_path: Path) -> None:
    rng = random.Random(11)
    for i in range(4):
        content = "".join(rng.choice("abc xyz\n") for _ in range(rng.randint(1, 200)))
        name = f"t{i}.txt"
        expr = f"builtins.toFile {_nix_str(name)} {_nix_str(content)}"
        want = run("nix-instantiate", "--eval", "-E", expr).decode().strip().strip('"')
        assert str(make_text_path(name, content.encode(), store_dir="/nix/store")) == want
        f = tmp_path / f"f{i}"
        f.write_text(content)
        for algo in ("sha1", "sha256", "sha512"):
            want = run("nix-store", "--add-fixed", algo, f).decode().strip()
            h = Hash(algo, hashlib.new(algo, content.encode()).digest())
            assert str(make_fixed_output_path(f.name, h, False, "/nix/store")) == want


@pytest.mark.nix
def test_nix_hash_sri_and_base32_agree() -> None:
    h = Hash.sha256_of(HELLO)
    assert nix("hash", "to-sri", "--type", "sha256", h.hex).strip() == h.sri
    assert nix("hash", "to-base32", h.sri).strip() == h.nix32
    assert re.fullmatch(r"[0-9a-z]{52}", h.nix32)


def _nix_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("\n", "\\n") + '"'
