"""The evaluation cache: hits only for unchanged inputs, no parser on a hit, ≤ 10 % of
a cold evaluation's time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lang_helpers import DATA

from kiln.lang import evaluate_file


def gen(n: int) -> str:
    out = ['let s = "x"\n']
    for i in range(n):
        deps = ", ".join(f"p{d}" for d in sorted({i - 1, i // 2}) if i)
        out.append(
            f'package p{i} {{\n  version = "1.{i}"\n'
            f'  src = fetchurl {{ url = "https://example.org/p{i}-${{version}}.tgz", '
            f'sha256 = "{i:064x}" }}\n  deps = [{deps}]\n  build = "tar xf $src; echo ${{s}} > $out"\n}}\n'
        )
    return "".join(out)


def test_hit_returns_the_same(features, tmp_path, hash_sources, monkeypatch):
    monkeypatch.chdir(features)
    cache = tmp_path / "cache"
    cold = evaluate_file("source.recipe", add_source=hash_sources, cache_dir=cache)
    warm = evaluate_file("source.recipe", add_source=hash_sources, cache_dir=cache)
    assert not cold.from_cache and warm.from_cache
    assert warm.drv_paths == cold.drv_paths
    assert dict(warm.drvs) == dict(cold.drvs)
    assert warm.sources == cold.sources
    assert warm.packages == cold.packages
    # a variant not in the cache falls back to a real evaluation
    assert warm.select("local")[0] == cold.drv_paths["local"]


def test_changes_invalidate(features, tmp_path, hash_sources, monkeypatch):
    monkeypatch.chdir(features)
    cache = tmp_path / "cache"
    first = evaluate_file("import.recipe", cache_dir=cache)
    lib = features / "lib" / "base.recipe"
    lib.write_text(lib.read_text().replace('"0.9"', '"1.0"'))
    second = evaluate_file("import.recipe", cache_dir=cache)
    assert not second.from_cache and second.drv_paths != first.drv_paths
    assert evaluate_file("import.recipe", cache_dir=cache).from_cache
    # a local source's content
    evaluate_file("source.recipe", add_source=hash_sources, cache_dir=cache)
    assert evaluate_file("source.recipe", add_source=hash_sources, cache_dir=cache).from_cache
    (features / "srcdir" / "main.c").write_text("int main(){return 1;}\n")
    again = evaluate_file("source.recipe", add_source=hash_sources, cache_dir=cache)
    assert not again.from_cache
    # another store dir is another entry
    assert not evaluate_file("import.recipe", store_dir="/other/store", cache_dir=cache).from_cache


def test_corrupt_entry_is_a_miss(features, tmp_path, monkeypatch):
    monkeypatch.chdir(features)
    cache = tmp_path / "cache"
    evaluate_file("values.recipe", cache_dir=cache)
    for f in cache.iterdir():
        f.write_bytes(b"garbage")
    ev = evaluate_file("values.recipe", cache_dir=cache)
    assert not ev.from_cache and "values" in ev.drv_paths


def test_hit_does_not_import_the_parser(tmp_path):
    (tmp_path / "set.recipe").write_text(gen(20))
    code = (
        "import sys; from kiln.lang import evaluate_file;"
        f"ev = evaluate_file('set.recipe', cache_dir={str(tmp_path / 'c')!r});"
        "print(ev.from_cache, 'lark' in sys.modules, 'kiln.lang.parser' in sys.modules)"
    )

    def run():
        return subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
        )

    assert run().stdout.split() == ["False", "True", "True"]
    assert run().stdout.split() == ["True", "False", "False"]


def test_cached_is_at_most_a_tenth(tmp_path):
    (tmp_path / "set.recipe").write_text(gen(600))
    cache = tmp_path / "c"
    t0 = time.process_time()
    cold = evaluate_file(tmp_path / "set.recipe", cache_dir=cache)
    t1 = time.process_time()
    warm = evaluate_file(tmp_path / "set.recipe", cache_dir=cache)
    t2 = time.process_time()
    assert warm.from_cache and warm.drv_paths == cold.drv_paths
    assert (t2 - t1) <= 0.10 * (t1 - t0), (t1 - t0, t2 - t1)


def test_cache_file_is_replaced_atomically(tmp_path):
    """A new entry for the same recipe takes the old one's name by rename: a reader that
    has the old one open still reads it whole, and no temp file is left behind."""
    (tmp_path / "set.recipe").write_text(gen(3))
    cache = tmp_path / "c"
    evaluate_file(tmp_path / "set.recipe", cache_dir=cache)
    names = os.listdir(cache)
    assert len(names) == 1 and names[0].endswith(".eval")
    entry = cache / names[0]
    old = entry.read_bytes()
    with open(entry, "rb") as reader:
        (tmp_path / "set.recipe").write_text(gen(4))
        evaluate_file(tmp_path / "set.recipe", cache_dir=cache)
        assert os.listdir(cache) == names  # the same entry, replaced
        assert os.fstat(reader.fileno()).st_ino != entry.stat().st_ino
        assert reader.read() == old and entry.read_bytes() != old


def test_data_dir(tmp_path):
    assert Path(DATA).is_dir()


def test_builtin_sha256_is_sha256():
    """The cache hashes with CPython's builtin sha256 (no OpenSSL start-up): same digests."""
    import hashlib

    from kiln.lang import cache

    for data in (b"", b"abc", bytes(range(256)) * 1000):
        assert cache._sha256(data) == hashlib.sha256(data).hexdigest()


def test_every_bit_flip_of_an_entry_is_a_miss_or_the_same_answer(features, tmp_path, monkeypatch):
    # The entry carries a checksum: a damaged one is never decoded into another answer.
    monkeypatch.chdir(features)
    cache = tmp_path / "cache"
    cold = evaluate_file("values.recipe", cache_dir=cache)
    (entry,) = cache.iterdir()
    good = entry.read_bytes()
    for i in range(0, len(good), max(1, len(good) // 300)):
        bad = bytearray(good)
        bad[i] ^= 1 << (i % 8)
        entry.write_bytes(bytes(bad))
        ev = evaluate_file("values.recipe", cache_dir=cache)
        assert ev.drv_paths == cold.drv_paths and not ev.from_cache


def test_restored_mtime_and_same_size_edit_is_seen(features, tmp_path, hash_sources, monkeypatch):
    monkeypatch.chdir(features)
    cache = tmp_path / "cache"
    main = features / "srcdir" / "main.c"
    evaluate_file("source.recipe", add_source=hash_sources, cache_dir=cache)
    st = os.stat(main)
    time.sleep(0.01)
    main.write_bytes(main.read_bytes().replace(b"0", b"7"))  # same size
    os.utime(main, ns=(st.st_atime_ns, st.st_mtime_ns))  # cp -p, rsync -t, touch -d
    again = evaluate_file("source.recipe", add_source=hash_sources, cache_dir=cache)
    assert not again.from_cache


def test_a_symlinked_source_is_fingerprinted_as_the_link(tmp_path, hash_sources):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    for v in ("v1", "v2"):
        (tmp_path / v / "f").write_text("same")
    os.symlink("v1", tmp_path / "src")
    (tmp_path / "r.recipe").write_text('let s = path "./src"\npackage p { build = "${s}" }\n')
    cache = tmp_path / "cache"
    first = evaluate_file(tmp_path / "r.recipe", add_source=hash_sources, cache_dir=cache)
    os.unlink(tmp_path / "src")
    os.symlink("v2", tmp_path / "src")
    second = evaluate_file(tmp_path / "r.recipe", add_source=hash_sources, cache_dir=cache)
    cold = evaluate_file(tmp_path / "r.recipe", add_source=hash_sources)
    assert not second.from_cache and second.drv_paths == cold.drv_paths
    assert first.from_cache is False


def test_a_source_edited_while_being_added_is_not_cached(features, tmp_path, monkeypatch):
    monkeypatch.chdir(features)
    cache = tmp_path / "cache"
    from lang_helpers import source_hasher

    inner = source_hasher()

    def add_and_edit(p, name):
        out = inner(p, name)
        (features / "srcdir" / "main.c").write_text("int main(){return 3;}\n")  # an editor saves
        return out

    evaluate_file("source.recipe", add_source=add_and_edit, cache_dir=cache)
    assert not evaluate_file("source.recipe", add_source=inner, cache_dir=cache).from_cache


def test_unbounded_variant_recursion_is_a_located_recipe_error(tmp_path):
    from kiln.lang.errors import InfiniteRecursion

    (tmp_path / "r.recipe").write_text('package p(n = 0) {\n  build = "${p(n = n + 1)}"\n}\n')
    with pytest.raises(InfiniteRecursion, match=r"r.recipe:2:\d+: evaluation went too deep"):
        evaluate_file(tmp_path / "r.recipe").attributes()  # (a broken binding, like any other)


def test_an_import_through_a_repointed_symlink_is_a_miss(tmp_path):
    for v in ("1", "2"):
        (tmp_path / f"v{v}").mkdir()
        (tmp_path / f"v{v}" / "lib.recipe").write_text(f'let version = "{v}.0"\n')
    os.symlink("v1", tmp_path / "lib")
    (tmp_path / "r.recipe").write_text('import "lib/lib.recipe"\npackage app { build = version }\n')
    cache = tmp_path / "cache"
    first = evaluate_file(tmp_path / "r.recipe", cache_dir=cache)
    assert evaluate_file(tmp_path / "r.recipe", cache_dir=cache).from_cache
    os.unlink(tmp_path / "lib")
    os.symlink("v2", tmp_path / "lib")
    again = evaluate_file(tmp_path / "r.recipe", cache_dir=cache)
    assert not again.from_cache and again.drv_paths != first.drv_paths
    assert again.drv_paths == evaluate_file(tmp_path / "r.recipe").drv_paths


def test_an_imported_directory_replaced_by_a_symlink_is_a_miss(tmp_path):
    """The same bytes reached through a new symlink resolve their relative imports from
    elsewhere: the cache served the old result (the file's hash still matched)."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "vendor" / "v2" / "lib").mkdir(parents=True)
    (tmp_path / "main.recipe").write_text(
        'import "lib/a.recipe"\npackage app {\n  deps = [liba]\n  build = "${liba}"\n}\n'
    )
    (tmp_path / "lib" / "a.recipe").write_text('import "../common.recipe"\npackage liba { build = common }\n')
    (tmp_path / "common.recipe").write_text('let common = "old"\n')
    (tmp_path / "vendor" / "v2" / "common.recipe").write_text('let common = "NEW"\n')
    cache = tmp_path / "cache"
    first = evaluate_file(tmp_path / "main.recipe", cache_dir=cache)
    os.rename(tmp_path / "lib" / "a.recipe", tmp_path / "vendor" / "v2" / "lib" / "a.recipe")
    os.rmdir(tmp_path / "lib")
    os.symlink("vendor/v2/lib", tmp_path / "lib")
    again = evaluate_file(tmp_path / "main.recipe", cache_dir=cache)
    assert not again.from_cache and again.drv_paths != first.drv_paths
    assert again.drv_paths == evaluate_file(tmp_path / "main.recipe").drv_paths
    # and a file replaced by a symlink to identical bytes elsewhere
    assert evaluate_file(tmp_path / "main.recipe", cache_dir=cache).from_cache
    elsewhere = tmp_path / "x" / "elsewhere"
    elsewhere.mkdir(parents=True)
    (tmp_path / "x" / "common.recipe").write_text('let common = "third"\n')  # its ../common.recipe
    real = tmp_path / "vendor" / "v2" / "lib" / "a.recipe"
    os.rename(real, elsewhere / "a.recipe")
    os.symlink(elsewhere / "a.recipe", real)
    third = evaluate_file(tmp_path / "main.recipe", cache_dir=cache)
    assert not third.from_cache and third.drv_paths != again.drv_paths
    assert third.drv_paths == evaluate_file(tmp_path / "main.recipe").drv_paths


def test_a_fifo_in_the_cache_is_a_miss_not_a_hang(tmp_path):
    import os

    from kiln.lang import cache

    d = tmp_path / "c"
    d.mkdir()
    os.mkfifo(cache.entry_path(d, "x.recipe", "/kiln/store"))
    assert cache.load(d, "x.recipe", "/kiln/store") is None


def _kiln_copy(where: Path) -> Path:
    """A copy of this kiln, importable from ``where`` (as an installed package lays it
    out: ``kiln/`` with ``lang/``, ``store/``... inside)."""
    import shutil

    repo = Path(__file__).parents[2]
    pkg = where / "kiln"
    shutil.copytree(repo / "cli", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for sub in ("lang", "store", "sandbox", "registry"):
        shutil.copytree(repo / sub, pkg / sub, ignore=shutil.ignore_patterns("__pycache__"))
    return where


def test_an_evaluator_edit_with_every_mtime_pinned_is_a_miss(tmp_path: Path) -> None:
    """An install whose files all carry one mtime (a Nix store path, a reproducible
    package), then an edit of the same size with that mtime: the old answer was served."""
    site = _kiln_copy(tmp_path / "site")
    recipe = tmp_path / "a.recipe"
    recipe.write_text('package a { version = "1" build = "echo hi > $out" }\n')
    compile_py = site / "kiln" / "lang" / "compile.py"

    def pin() -> None:
        for f in site.rglob("*"):
            os.utime(f, ns=(1_000_000_000, 1_000_000_000), follow_symlinks=False)

    def builder() -> str:
        env = dict(os.environ, PYTHONPATH=str(site), KILN_HOME=str(tmp_path / "home"))
        r = subprocess.run(
            [sys.executable, "-m", "kiln", "show-derivation", str(recipe), "a"],
            env=env,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    pin()
    assert '"/bin/bash"' in builder()
    assert '"/bin/bash"' in builder()  # (a hit)
    text = compile_py.read_text()
    assert 'builder="/bin/bash"' in text
    compile_py.write_text(text.replace('builder="/bin/bash"', 'builder="/bin/dash"'))  # (same size)
    pin()
    assert '"/bin/dash"' in builder()
