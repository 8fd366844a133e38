"""Lock entry values are validated wherever entries are read or made (review finding 11):
parse_lock/read_lock, the apt index (so `kiln lock debian` never writes a bad lock) and
render_lock. Errors name the lock (or index) file, the entry and the field, and say what
was expected and what was found."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from kiln.store.apt import AptIndex, LockEntry, lock_value_problem, parse_lock, read_lock, render_lock
from kiln.store.aptresolve import resolve
from kiln.store.errors import FormatError

HASH = "ab" * 32
GOOD = {
    "name": '"bash"',
    "version": '"5.2.15-2+b13"',
    "arch": '"amd64"',
    "sha256": f'"{HASH}"',
    "filename": '"pool/main/b/bash/bash_5.2.15-2+b13_amd64.deb"',
    "size": "1490652",
}


def lock_text(**override: str) -> str:
    """A two-entry lock whose second entry ("bash") has the given raw field texts."""
    first = render_lock([LockEntry("a", "1", "all", "cd" * 32, "pool/a_1_all.deb", 1)]).splitlines()[1]
    fields = {**GOOD, **override}
    second = "{ " + ", ".join(f"{k} = {v}" for k, v in fields.items() if v is not None) + " },"
    return f"let debian_lock = [\n{first}\n  {second}\n]\n"


@pytest.mark.parametrize(
    ("field", "raw", "expected", "found"),
    [
        ("sha256", '"not-a-hash"', "64 lowercase hex digits", "'not-a-hash'"),
        ("sha256", f'"{HASH.upper()}"', "64 lowercase hex digits", HASH.upper()),
        ("sha256", f'"{HASH}0"', "64 lowercase hex digits", HASH + "0"),
        ("size", "-1", "a non-negative integer", "-1"),
        ("size", '"12"', "a non-negative integer", "'12'"),
        ("size", "lots", "a non-negative integer", "'lots'"),
        ("filename", '"../../etc/passwd"', "a relative path of plain components", "a '..' component"),
        ("filename", '"/etc/passwd"', "a path relative to the archive base", "absolute path '/etc/passwd'"),
        ("filename", '"pool/main/p/p/p 1.deb"', "no whitespace", "' ' in 'pool/main/p/p/p 1.deb'"),
        ("filename", '"pool//a.deb"', "a relative path of plain components", "a '' component"),
        ("filename", '"pool/a\x00.deb"', "no whitespace or control characters", "'\\x00'"),
        ("name", '""', "a non-empty string", "''"),
        ("name", '"ba sh"', "no whitespace", "' '"),
        ("version", '""', "a non-empty string", "''"),
        ("arch", '"amd\t64"', "no whitespace", "'\\t'"),
        ("name", "bash", "a quoted string", "bash"),
    ],
)
def test_invalid_values_name_file_entry_and_field(field, raw, expected, found):
    with pytest.raises(FormatError) as e:
        parse_lock(lock_text(**{field: raw}), "recipes/x.lock.recipe")
    msg = str(e.value)
    given = raw.strip('"')
    label = "" if raw == "bash" else f" ({given!r})" if field == "name" else " ('bash')"
    assert msg.startswith(f"recipes/x.lock.recipe: lock entry 2{label}: '{field}': "), msg
    assert f"expected {expected}" in msg and found in msg, msg


def test_missing_and_repeated_fields():
    with pytest.raises(FormatError, match=r"^L: lock entry 2 \('bash'\): lacks sha256, size"):
        parse_lock(lock_text(sha256=None, size=None), "L")
    with pytest.raises(FormatError, match=r"^L: lock entry 1 \('a'\): 'size' is given twice"):
        parse_lock('[{ name = "a", version = "1", arch = "all", size = 1, size = 2 }]', "L")
    with pytest.raises(FormatError, match="^L: no lock records found"):
        parse_lock("let debian_lock = []", "L")


def test_review_repro_is_refused():
    # the hand-edited record of review finding 11, accepted before
    text = '{ name = "x", version = "", arch = "sparc", sha256 = "not-a-hash", filename = "../../etc/passwd", size = 0 }'
    with pytest.raises(
        FormatError, match=r"lock file: lock entry 1 \('x'\): 'version': expected a non-empty"
    ):
        parse_lock(text)


def test_read_lock_names_the_file(tmp_path):
    path = tmp_path / "toolchain.lock.recipe"
    path.write_text(lock_text(sha256='"abc"'))
    with pytest.raises(FormatError, match=f"^{re.escape(str(path))}: lock entry 2 \\('bash'\\): 'sha256'"):
        read_lock(path)
    path.write_text(lock_text())
    assert [e.name for e in read_lock(path)] == ["a", "bash"]


def test_valid_values_still_round_trip():
    entries = (
        LockEntry("g++", "4:12.2.0-3", "amd64", HASH, "pool/main/g/gcc-defaults/g++_12.2.0-3_amd64.deb", 0),
        LockEntry('we"ird$', "1~rc1+b2", "all", "cd" * 32, 'pool/x/we"ird$_1~rc1+b2_all.deb', 3),
    )
    assert parse_lock(render_lock(entries)) == entries
    assert lock_value_problem("size", 0) is None and lock_value_problem("size", True) is not None


def test_render_lock_refuses_an_invalid_entry():
    bad = LockEntry("p", "1", "amd64", "abc", "pool/p_1_amd64.deb", 1)
    with pytest.raises(FormatError, match=r"refusing to write lock entry 1 \('p'\): 'sha256': expected 64"):
        render_lock([bad])


def index_stanza(**fields: str) -> str:
    values = {
        "Package": "p",
        "Version": "1.0",
        "Architecture": "amd64",
        "Filename": "pool/main/p/p/p_1.0_amd64.deb",
        "Size": "100",
        "SHA256": HASH,
        **fields,
    }
    return "".join(f"{k}: {v}\n" for k, v in values.items())


@pytest.mark.parametrize(
    ("field", "value", "found"),
    [
        ("SHA256", "abc", "expected 64 lowercase hex digits, found 'abc'"),
        ("Filename", "pool/main/p/p/p 1.deb", "found ' ' in"),
        ("Filename", "../../p.deb", "found a '..' component"),
    ],
)
def test_bad_index_values_name_the_index_file_and_package(tmp_path, field, value, found):
    index = tmp_path / "h_dists_s_main_binary-amd64_Packages"
    index.write_text(index_stanza(**{field: value}))
    with pytest.raises(FormatError) as e:
        resolve(AptIndex.load(tmp_path), ["p"])
    assert str(e.value).startswith(f"{index}: index stanza of p 1.0: {field}: "), e.value
    assert found in str(e.value)


def test_kiln_lock_refuses_to_write_a_bad_index_value(tmp_path):
    (tmp_path / "h_dists_s_main_binary-amd64_Packages").write_text(index_stanza(SHA256="abc"))
    out = tmp_path / "lock.recipe"
    proc = subprocess.run(
        [sys.executable, "-m", "kiln", "lock", "debian", "p", "--lists", str(tmp_path), "--trust-lists"]
        + ["-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "h_dists_s_main_binary-amd64_Packages: index stanza of p 1.0: SHA256: expected 64" in proc.stderr
    assert not out.exists()
