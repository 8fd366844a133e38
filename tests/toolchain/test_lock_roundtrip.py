"""render_lock and parse_lock round-trip for every value lock_value_problem allows (audit
finding 4: a filename with '}' was written, then read back as "lacks filename, size"),
and a lock entry's filename must name its package, version and arch (finding 5: the
build checks the .deb against the file name, so the other fields must agree with it)."""

from __future__ import annotations

import random

import pytest

from kiln.store.apt import AptIndex
from kiln.store.aptlock import LockEntry, lock_value_problem, parse_lock, render_lock
from kiln.store.aptresolve import resolve
from kiln.store.errors import FormatError

HASH = "ab" * 32

# what lock_value_problem allows that the syntax must survive: the lock's own
# punctuation, quotes and escapes, string interpolation, comments, non-ASCII (bidi
# controls included: they are format characters, not control characters)
AWKWARD = list("{}[]\"\\$#,;=:'`~+.-%&*()<>|!?@^") + ["${", "\\\\", '\\"', "é", "€", "\u202e", "😀", "a", "1"]


def awkward(rng: random.Random, exclude: str = "") -> str:
    return "".join(
        rng.choice([c for c in AWKWARD if not any(x in c for x in exclude)]) for _ in range(rng.randint(1, 8))
    )


def random_entry(rng: random.Random) -> LockEntry:
    """An entry whose values lock_value_problem allows, and (mostly) whose filename names
    its package as entry_problem wants: ``<dirs>/<name>_<version without epoch>_<arch>.deb``."""
    name, arch = awkward(rng, "_/%"), awkward(rng, "_/%")
    version = awkward(rng, "_/%:")
    if rng.random() < 0.3:
        version = f"{rng.randint(0, 9)}:{version}"
    # (a '.' or '..' component is not allowed)
    dirs = "/".join(awkward(rng, "/").replace(".", "x.") for _ in range(rng.randint(0, 3)))
    base = f"{name}_{version.partition(':')[2] or version}_{arch}.deb"
    if rng.random() < 0.1:
        base = awkward(rng, "/").replace(".", "x.") + ".deb"  # names another package, or none
    e = LockEntry(name, version, arch, HASH, f"{dirs}/{base}" if dirs else base, rng.randint(0, 1 << 40))
    for field in ("name", "version", "arch", "filename"):
        assert lock_value_problem(field, getattr(e, field)) is None, (field, e)
    return e


def test_a_filename_with_braces_round_trips():
    e = LockEntry("p", "1", "amd64", HASH, "pool/a}b{c/#x/p_1_amd64.deb", 1)
    assert parse_lock(render_lock([e])) == (e,)


def test_every_allowed_value_round_trips():
    from kiln.store.aptlock import entry_problem

    rng = random.Random(17)
    written = refused = 0
    for _ in range(3000):
        entries = [random_entry(rng) for _ in range(rng.randint(1, 4))]
        try:
            text = render_lock(entries, 'header with { and } and "quotes"')
        except FormatError as e:
            # only an entry whose file name does not name it is refused: never a lock that
            # parse_lock would then reject
            assert "'filename': expected a" in str(e), e
            assert any(entry_problem(x.name, x.version, x.arch, x.filename) for x in entries)
            refused += 1
            continue
        assert parse_lock(text) == tuple(entries), text
        written += 1
    assert written > 1000 and refused > 100  # both paths were taken


@pytest.mark.parametrize("bad", ["\x9b", "\x85", "\ud800"])
def test_c1_controls_and_lone_surrogates_are_refused(bad):
    # the documented rule is "no control characters"; C1 ones were let through, and a lone
    # surrogate can be rendered but never written to the UTF-8 file
    assert lock_value_problem("name", f"a{bad}b") is not None
    assert lock_value_problem("name", "a\u202eb") is None  # a format character, shown escaped


def test_a_filename_must_name_the_entry():
    text = render_lock(
        [LockEntry("bash", "5.2.15-2+b13", "amd64", HASH, "pool/b/bash_5.2.15-2+b13_amd64.deb", 1)]
    )
    for old, new in (("b/bash_", "b/evil_"), ("amd64.deb", "all.deb"), ("+b13_", "+b14_")):
        with pytest.raises(
            FormatError,
            match=r"^L: lock entry 1 \('bash'\): 'filename': expected a file name naming this entry "
            r"\(bash_5.2.15-2\+b13_amd64.deb: name, version without epoch, arch\), found '.*'$",
        ):
            parse_lock(text.replace(old, new), "L")
    # pool file names drop the epoch; apt-get download writes it as %3a
    for name in ("gcc_12.2.0-3_amd64.deb", "gcc_4%3a12.2.0-3_amd64.deb"):
        e = LockEntry("gcc", "4:12.2.0-3", "amd64", HASH, f"pool/main/g/gcc-defaults/{name}", 1)
        assert parse_lock(render_lock([e])) == (e,)
    with pytest.raises(
        FormatError, match=r"refusing to write lock entry 1 \('p'\): 'filename': expected a .deb"
    ):
        render_lock([LockEntry("p", "1", "amd64", HASH, "pool/p.deb", 1)])


def test_kiln_lock_refuses_an_index_entry_whose_filename_names_another_package(tmp_path):
    index = tmp_path / "h_dists_s_main_binary-amd64_Packages"
    index.write_text(
        f"Package: p\nVersion: 1.0\nArchitecture: amd64\nFilename: pool/main/q/q/q_1.0_amd64.deb\n"
        f"Size: 100\nSHA256: {HASH}\n"
    )
    with pytest.raises(FormatError) as e:
        resolve(AptIndex.load(tmp_path), ["p"])
    assert str(e.value).startswith(
        f"{index}: index stanza of p 1.0: Filename: expected a file name naming"
    ), e.value


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[{ name = "a", = "1" }]', r"lock entry 1: expected 'key = value' or '}', found '= \"1\""),
        ('[{ name = "a", ', "lock entry 1: expected '}' to end the record, found the end of the file"),
        ('[{ name = "a }]', "lock entry 1: expected 'key = value' or '}', found 'name"),
        ('let x = "a', "unterminated string at offset 8"),
    ],
)
def test_malformed_records_say_what_was_expected(text, says):
    with pytest.raises(FormatError, match=f"^L: {says}"):
        parse_lock(text, "L")
