"""Values that share parts, and values that grow past kiln's size limits.

A chain of ``let``s can double a value at every line. A list that holds one list twice,
forty levels deep, is 2^40 strings in 41 tuples: ``==``, ``elem`` and a variant's
parameter key walked it leaf by leaf (hours, or for ever), so they now walk it once per
distinct part (``values.equal``, ``values.canonical``); ``shared_values.recipe`` (also a
golden test in ``features/``) must evaluate within a CPU-time limit. A string doubled
forty times took all of the machine's memory and then blamed recursion: every operation
that can make a longer string or list than its inputs now checks the length it would
make against ``limits`` before making it, and fails there (``errors/bad_*_too_long``
check the real limits; here they are lowered so each operation is cheap to test).
"""

from __future__ import annotations

import json
import random

import pytest
from lang_helpers import DATA, run_kiln

from kiln.lang import errors as E
from kiln.lang import evaluate_file, limits
from kiln.lang.values import CStr, DrvValue, Record, SourceValue, canonical, equal

#: CPU seconds ``shared_values.recipe`` may take (it takes well under one)
_CPU_LIMIT = 20


def test_shared_values_compare_in_time_linear_in_their_parts(tmp_path):
    """``==``, ``!=``, ``elem`` and variant keys on lists and records of 2^40 leaves (built
    apart but equal, or differing in the last leaf only) finish within the CPU limit with
    the right answers; before, the process was killed by it."""
    r = run_kiln(
        ["show-derivation", "shared_values.recipe", "dag", "--no-cache"],
        DATA / "features",
        home=tmp_path / "home",
        cpu=_CPU_LIMIT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    ((_, drv),) = json.loads(r.stdout).items()
    env = drv["env"]
    assert {
        k: env[k] for k in ("same", "equal", "records", "mixed", "not_equal", "in_list")
    } == dict.fromkeys(("same", "equal", "records", "mixed", "not_equal", "in_list"), "1")
    assert (env["differs"], env["not_in_list"], env["in_long_list"], env["not_in_long_list"]) == (
        "",
        "",
        "1",
        "",
    )
    assert env["variant"] == env["variant_again"] == env["other_variant"] == env["record_variant"]
    assert env["long_variant"] != env["variant"]


def _reference_eq(a, b) -> bool:
    """``==`` as the evaluator defined it before (recursive, leaf by leaf)."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    if isinstance(a, CStr) or isinstance(b, CStr):
        return (a.text if isinstance(a, CStr) else a) == (b.text if isinstance(b, CStr) else b)
    if isinstance(a, DrvValue) and isinstance(b, DrvValue):
        return a.path == b.path
    if isinstance(a, SourceValue) and isinstance(b, SourceValue):
        return a.path == b.path
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_reference_eq(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Record) and isinstance(b, Record):
        return a.keys() == b.keys() and all(_reference_eq(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _reference_key(v) -> object:
    """``canonical`` as it was before (a nested tuple)."""
    if isinstance(v, tuple):
        return ("l", tuple(_reference_key(x) for x in v))
    if isinstance(v, Record):
        return ("r", tuple((k, _reference_key(x)) for k, x in sorted(v.items())))
    return canonical(v)


def test_equality_and_variant_keys_mean_what_they_did():
    """On 60,000 random pairs of small values (strings with and without context, numbers,
    booleans, packages, sources, lists and records, nested, shared, rebuilt equal), ``==``
    gives what the recursive comparison gave, and two values get the same variant key
    exactly when the old nested-tuple keys were equal."""
    rnd = random.Random(26)
    drvs = [DrvValue(None, f"/kiln/store/{c * 32}-{c}.drv", {}, c) for c in "ab"]  # type: ignore[arg-type]
    srcs = [SourceValue(f"/kiln/store/{c * 32}-{c}", c) for c in "ab"]
    pool: list = []

    def gen(depth: int):
        k = rnd.randrange(12 if depth < 4 else 8)
        if k == 0:
            return rnd.choice([True, False, 0, 1, -1, 2])
        if k in (1, 2):
            return rnd.choice(["", "a", "b", "1", "true"])
        if k == 3:
            return CStr(rnd.choice(["", "a", "b"]), frozenset({("s", rnd.choice(srcs).path)}))
        if k == 4:
            return rnd.choice(drvs + srcs)
        if k in (5, 6):
            return rnd.choice(pool) if pool else ()
        if k == 7:
            return ()
        if k in (8, 9):
            return tuple(gen(depth + 1) for _ in range(rnd.randrange(4)))
        return Record((rnd.choice("abc"), gen(depth + 1)) for _ in range(rnd.randrange(4)))

    def rebuild(v):  # equal, but no part shared; a string's context maybe changed
        if isinstance(v, tuple):
            return tuple(rebuild(x) for x in v)
        if isinstance(v, Record):
            return Record(reversed([(k, rebuild(x)) for k, x in v.items()]))
        if isinstance(v, str) and v and rnd.random() < 0.3:
            return CStr(v, frozenset({("s", srcs[0].path)}))
        if isinstance(v, CStr) and rnd.random() < 0.3:
            return v.text
        return v

    equal_pairs = 0
    for _ in range(20_000):
        a = gen(0)
        b = a if rnd.random() < 0.2 else rebuild(a) if rnd.random() < 0.5 else gen(0)
        pool = [*pool[-40:], a]
        for x, y in ((a, b), (b, a), (a, a)):
            assert equal(x, y) == _reference_eq(x, y), (x, y)
            assert (canonical(x) == canonical(y)) == (_reference_key(x) == _reference_key(y)), (x, y)
            equal_pairs += equal(x, y)
    assert equal_pairs > 30_000  # (not only unequal pairs)


@pytest.fixture
def small_limits(monkeypatch):
    monkeypatch.setattr(limits, "MAX_STRING", 64)
    monkeypatch.setattr(limits, "MAX_LIST", 8)


_A = '"' + "0123456789" * 3 + 'abcd"'  # 34 characters, three '0's
_URL = '"https://example.org/0123456789/0123456789"'  # 41 characters
_LOCK_ENTRY = (
    '{ name = "bash", version = "5.2.15-2+b13", arch = "amd64", filename = '
    '"pool/main/b/bash/bash_5.2.15-2+b13_amd64.deb", sha256 = '
    '"82130bb6a560cd2a7234d8018baf73f188f5dd56413d5aa0accc987b2197a6a1" }'
)
_SHA = '"31e066137a962676e89f69d1b65382de95a7ef7d914b8cb956f41ea72e0f516b"'


@pytest.mark.parametrize(
    ("expr", "at", "message"),
    [
        (f"{_A} + {_A}", "+ ", "string too long: '+' would make a string of 68 characters"),
        (
            f'"${{{_A}}}-${{{_A}}}"',
            '"${',
            'string too long: "${...}" would make a string of 69 characters',
        ),
        (f'join("--", [{_A}, {_A}])', "join", "string too long: join() would make a string of 70 characters"),
        (f'replace({_A}, "0", "0123456789abc")', "replace", "replace() would make a string of 70 characters"),
        (f'replace({_A}, "", "_")', "replace", "replace() would make a string of 69 characters"),
        (f'upper("{"ß" * 33}")', "upper", "string too long: upper() would make a string of 66 characters"),
        (
            'split("a,b,c,d,e,f,g,h,i", ",")',
            "split",
            "list too long: split() would make a list of 9 elements",
        ),
        ("[1, 2, 3, 4, 5] + [6, 7, 8, 9]", "+ ", "list too long: '+' would make a list of 9 elements"),
        (
            f"fetchurl {{ url = {_URL}, urls = [{_URL}], sha256 = {_SHA} }}",
            "[",
            "string too long: fetchurl's 'urls', joined, would make a string of 83 characters",
        ),
    ],
)
def test_each_growing_operation_is_held_to_the_limit(tmp_path, small_limits, expr, at, message):
    """Each operation that can make a longer string or list than its inputs fails at its
    own position, saying the length it would have made and the limit."""
    text = f'let x = {expr}\npackage p {{\n  build = "true"\n  n = x\n}}\n'
    (tmp_path / "r.recipe").write_text(text)
    with pytest.raises(E.TooLarge) as info:
        evaluate_file(tmp_path / "r.recipe").attributes()
    unit = "elements" if "list too long" in message else "characters"
    limit = limits.MAX_LIST if unit == "elements" else limits.MAX_STRING
    first = str(info.value).split("\n")[0]
    assert first.endswith(f"{message}; kiln's limit is {limit:,} {unit}"), first
    col = int(first.split(":")[2])
    assert text.split("\n")[0][col - 1 :].startswith(at), first


def test_debian_rootfs_paths_are_held_to_the_limit(tmp_path, monkeypatch):
    """``debian_rootfs``' space-joined ``.deb`` paths are held to the string limit, counted
    as they are made (a lock doubled in lets repeats one entry, made once)."""
    monkeypatch.setattr(limits, "MAX_STRING", 200)
    lets = f"let e0 = [{_LOCK_ENTRY}]\n" + "".join(f"let e{i} = e{i - 1} + e{i - 1}\n" for i in range(1, 21))
    ok = lets + 'let tc = debian_rootfs { lock = e1 }\npackage p { build = "true"; deps = [tc] }\n'
    (tmp_path / "ok.recipe").write_text(ok)
    assert evaluate_file(tmp_path / "ok.recipe").attributes()["p"]
    (tmp_path / "big.recipe").write_text(ok.replace("lock = e1", "lock = e20"))
    with pytest.raises(
        E.TooLarge, match=r"big\.recipe:22:\d+: string too long: debian_rootfs' list of \.deb"
    ):
        evaluate_file(tmp_path / "big.recipe").attributes()


def test_a_fetch_derivation_is_held_to_the_limit(tmp_path, monkeypatch):
    """A derivation's environment in total is held to the string limit too (each of its
    values may be within it): here ``url`` and ``urls`` hold the same 60 characters."""
    monkeypatch.setattr(limits, "MAX_STRING", 100)
    url = "https://example.org/" + "a" * 40
    (tmp_path / "r.recipe").write_text(f'let f = fetchurl {{ url = "{url}", sha256 = {_SHA} }}\n')
    with pytest.raises(E.TooLarge) as info:
        evaluate_file(tmp_path / "r.recipe").attributes()
    assert str(info.value).split("\n")[0] == (
        f"{tmp_path / 'r.recipe'}:1:9: derivation too large: fetchurl '{'a' * 40}' would hold 174 "
        "characters of environment and arguments; kiln's limit is 100 characters"
    )


def test_values_at_the_limit_are_made(tmp_path, small_limits):
    """The limit is inclusive: a string of exactly 64 characters and a list of exactly 8
    elements are made."""
    text = f'let s = {_A} + "{"x" * 30}"\nlet l = [1, 2, 3, 4] + [5, 6, 7, 8]\n'
    text += 'package p {\n  build = "true"\n  n = length(s)\n  m = length(l)\n}\n'
    (tmp_path / "r.recipe").write_text(text)
    ev = evaluate_file(tmp_path / "r.recipe")
    env = dict(ev.packages["p"].env)
    assert (env["n"], env["m"]) == ("64", "8")


def test_running_out_of_memory_blames_large_values_too(tmp_path):
    """Many strings, each within the limit, can still exhaust memory: the error says that
    values grew too large, not only recursion (it named recursion alone, which the recipe
    does not have)."""
    lets = ['let s0 = "0123456789abcdef"', *(f"let s{i} = s{i - 1} + s{i - 1}" for i in range(1, 21))]
    lets += [f'let f{i} = s20 + "{i}"' for i in range(80)]  # 80 strings of 16 MiB
    (tmp_path / "r.recipe").write_text("\n".join(lets) + '\npackage p { build = "true" }\n')
    r = run_kiln(
        ["eval", "r.recipe", "--no-cache"],
        tmp_path,
        home=tmp_path / "home",
        cpu=60,
        mem=1536 << 20,
        timeout=300,
    )
    assert r.returncode == 1, r.stderr[-2000:]
    assert "evaluation went out of memory: values grew too large (many long strings or lists" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # one 40-character string 4 times in a list field: 163 characters, joined
        (
            "  xs = l2\n",
            "string too long: field 'xs', joined, would make a string of 163 characters",
        ),
        # each field within the limit, the package's derivation over it
        (
            "  a = s\n  b = s\n  c = s\n",
            "derivation too large: package 'p' would hold 1",
        ),
    ],
)
def test_package_fields_are_held_to_the_limit(tmp_path, monkeypatch, body, message):
    """A list field's joined text and a package's whole environment are held to the
    string limit: a list built by doubling may repeat one long string millions of times,
    and many fields may each hold one."""
    monkeypatch.setattr(limits, "MAX_STRING", 100)
    lets = 'let s = "' + "x" * 40 + '"\nlet l0 = [s]\nlet l1 = l0 + l0\nlet l2 = l1 + l1\n'
    (tmp_path / "r.recipe").write_text(lets + 'package p {\n  build = "true"\n' + body + "}\n")
    with pytest.raises(E.TooLarge) as info:
        evaluate_file(tmp_path / "r.recipe").attributes()
    assert message in str(info.value).split("\n")[0], str(info.value)


def test_path_from_deps_is_held_to_the_limit(tmp_path, monkeypatch):
    """``deps`` of one package repeated 2^20 times: its ``PATH`` (and the field itself)
    would be 60 MiB; refused at the field."""
    monkeypatch.setattr(limits, "MAX_STRING", 1 << 20)
    lets = "let d0 = [q]\n" + "".join(f"let d{i} = d{i - 1} + d{i - 1}\n" for i in range(1, 21))
    text = lets + 'package q { build = "true" }\npackage p {\n  build = "true"\n  deps = d20\n}\n'
    (tmp_path / "r.recipe").write_text(text)
    with pytest.raises(E.TooLarge, match=r"r\.recipe:25:10: string too long: field 'deps', joined,"):
        evaluate_file(tmp_path / "r.recipe").attributes()
