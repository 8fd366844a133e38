"""The contract between recipes and derivations (see docs/recipe-language.md)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from lang_helpers import DATA

from kiln.lang import RecipeError, evaluate_file
from kiln.store.derivation import Derivation, Output, drv_path, finalize, hash_modulo

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_package_contract(tmp_path):
    f = write(
        tmp_path,
        "p.recipe",
        """
        package dep { build = "mkdir -p $out/bin" }
        package hello {
          version = "2.10"
          jobs = 4
          fast = true
          slow = false
          flags = ["-O2", "-g"]
          deps = [dep]
          build = "make"
        }
        """,
    )
    ev = evaluate_file(f, store_dir="/kiln/store")
    d = ev.packages["hello"]
    dep = ev.packages["dep"]
    assert d.name == "hello-2.10"
    assert d.builder == "/bin/bash"
    assert d.args == ("-euo", "pipefail", "-c", "make")
    assert d.platform == "x86_64-linux"
    env = d.env_map
    assert env["jobs"] == "4" and env["fast"] == "1" and env["slow"] == ""
    assert env["flags"] == "-O2 -g"
    assert env["deps"] == dep.output_path()
    assert env["PATH"] == f"{dep.output_path()}/bin:/usr/bin:/bin"
    assert env["out"] == d.output_path() and env["name"] == "hello-2.10" and env["version"] == "2.10"
    assert d.input_drvs_map == {ev.drv_paths["dep"]: ("out",)}
    assert d.output_path().startswith("/kiln/store/") and d.output_path().endswith("-hello-2.10")


def _blank(d: Derivation) -> Derivation:
    return Derivation.make(
        d.name,
        outputs={k: Output("", o.hash_algo, o.hash) for k, o in d.outputs},
        input_drvs=dict(d.input_drvs),
        input_srcs=d.input_srcs,
        platform=d.platform,
        builder=d.builder,
        args=d.args,
        env={**d.env_map, **{k: "" for k, _ in d.outputs}},
        store_dir=d.store_dir,
    )


@pytest.mark.parametrize("recipe", ["context", "fetch", "rootfs", "variants", "strings", "import"])
def test_fast_hashing_matches_store_derivation(recipe, features, monkeypatch, hash_sources):
    """lang.drvhash must give exactly what store.derivation (verified against Nix) gives."""
    monkeypatch.chdir(features)
    ev = evaluate_file(f"{recipe}.recipe", add_source=hash_sources)
    memo: dict = {}
    for p, d in ev.drvs.items():
        again = finalize(_blank(d), ev.drvs.__getitem__, memo)
        assert again == d
        assert str(drv_path(again)) == p
        assert hash_modulo(d, ev.drvs.__getitem__, {}) == ev._live[0].memo[p]


def test_fixed_output_change_keeps_dependents(tmp_path):
    """Like Nix: a source's URL is not part of its dependents' output paths, its hash is."""
    text = """
    package p {{
      src = fetchurl {{ url = "{url}", sha256 = "{sha}", name = "src.tar.gz" }}
      build = "tar xf $src"
    }}
    """
    sha = "31e066137a962676e89f69d1b65382de95a7ef7d914b8cb956f41ea72e0f516b"
    a = evaluate_file(write(tmp_path, "a.recipe", text.format(url="https://a.example/s.tar.gz", sha=sha)))
    b = evaluate_file(write(tmp_path, "b.recipe", text.format(url="https://b.example/s.tar.gz", sha=sha)))
    c = evaluate_file(
        write(tmp_path, "c.recipe", text.format(url="https://a.example/s.tar.gz", sha="0" * 64))
    )
    assert a.drv_paths["p"] != b.drv_paths["p"]
    assert a.packages["p"].output_path() == b.packages["p"].output_path()
    assert a.packages["p"].output_path() != c.packages["p"].output_path()


def test_fetch_derivations(features, monkeypatch):
    monkeypatch.chdir(features)
    ev = evaluate_file("fetch.recipe")
    hex_, sri = ev.packages["hex"], ev.packages["sri"]
    assert hex_.builder == "builtin:fetchurl" and hex_.is_fixed_output
    assert hex_.outputs_map["out"].hash_algo == "sha256"
    assert hex_.outputs_map["out"].hash == "31e066137a962676e89f69d1b65382de95a7ef7d914b8cb956f41ea72e0f516b"
    assert hex_.env_map["url"] == "https://example.org/dist/pkg-1.0.tar.gz?download=1"
    assert hex_.name == "pkg-1.0.tar.gz"
    assert sri.env_map["url"] == "https://mirror.example/pkg-1.0.tar.gz"
    assert sri.env_map["urls"].split() == [
        "https://mirror.example/pkg-1.0.tar.gz",
        "https://example.org/dist/pkg-1.0.tar.gz",
    ]
    assert hex_.output_path() == sri.output_path() == ev.packages["nix32"].output_path()
    git = ev.packages["repo"]
    assert git.builder == "builtin:fetchgit" and git.outputs_map["out"].hash_algo == "r:sha256"
    assert git.env_map["rev"] == "0123456789abcdef0123456789abcdef01234567" and git.name == "tool"


def test_debian_rootfs(features, monkeypatch):
    monkeypatch.chdir(features)
    ev = evaluate_file("rootfs.recipe")
    root = ev.packages["toolchain"]
    assert root.builder == "builtin:unpack-debs" and root.env_map["kilnRootfs"] == "1"
    debs = root.env_map["debs"].split()
    assert [ev.drvs[p].output_path() for p, _ in root.input_drvs] != [] and len(debs) == 2
    fetches = {ev.drvs[p].output_path(): ev.drvs[p] for p, _ in root.input_drvs}
    assert [fetches[d].env_map["url"] for d in debs] == [
        "debian:pool/main/b/bash/bash_5.2.15-2+b13_amd64.deb",
        "debian:pool/main/c/coreutils/coreutils_9.1-1_amd64.deb",
    ]
    assert all(f.is_fixed_output and f.builder == "builtin:fetchurl" for f in fetches.values())


def test_variants_are_memoized(features, monkeypatch):
    monkeypatch.chdir(features)
    ev = evaluate_file("variants.recipe")
    assert ev.select("lib(static = false)")[0] == ev.drv_paths["lib"]
    assert ev.select("lib(static = true)")[0] == ev.drv_paths["static_lib"]
    assert ev.attr("lib", static=True) == ev.packages["static_lib"]
    assert ev.packages["lib"].env_map["flags"] == "--shared"
    assert ev.packages["static_lib"].env_map["flags"] == "--static"
    assert len(ev.packages["app"].input_drvs) == 3  # lib, lib(static), lib(static, suffix)


def test_context_makes_inputs(features, monkeypatch):
    monkeypatch.chdir(features)
    ev = evaluate_file("context.recipe")
    user = ev.packages["user"]
    assert set(user.input_drvs_map) == {ev.drv_paths["dep"], ev.drv_paths["tool"]}
    assert user.env_map["PATH"] == f"{ev.packages['dep'].output_path()}/bin:/usr/bin:/bin"


def test_local_sources(features, monkeypatch, hash_sources):
    monkeypatch.chdir(features)
    seen = []

    def add(p: Path, name: str) -> str:
        seen.append((p, name))
        return hash_sources(p, name)

    ev = evaluate_file("source.recipe", add_source=add)
    assert [(p.relative_to(features).as_posix(), n) for p, n in seen] == [
        ("srcdir", "srcdir"),
        ("srcdir/sub", "data"),
    ]
    local = ev.packages["local"]
    assert set(local.input_srcs) == set(ev.sources)
    # .git, build/ and *.tmp are left out: the path equals that of a tree without them
    clean = features / "clean" / "srcdir"
    (clean / "sub").mkdir(parents=True)
    (clean / "main.c").write_text((features / "srcdir/main.c").read_text())
    (clean / "sub/data.txt").write_text("x\n")
    (clean / ".kilnignore").write_text((features / "srcdir/.kilnignore").read_text())
    assert hash_sources(clean, "srcdir") == local.env_map["src"]


def test_imported_names_and_own_packages(features, monkeypatch):
    monkeypatch.chdir(features)
    ev = evaluate_file("import.recipe")
    assert list(ev.drv_paths) == ["app"]  # imported packages are reachable, not listed
    assert ev.select("base")[1].name == "base-0.9"


def test_deep_chain_declared_backwards(tmp_path):
    n = 3000
    body = "".join(
        f'package p{i} {{ deps = [{f"p{i - 1}" if i else ""}] \n build = "echo {i}" }}\n'
        for i in reversed(range(n))
    )
    ev = evaluate_file(write(tmp_path, "chain.recipe", body))
    assert len(ev.drvs) == n
    assert ev.closure(ev.drv_paths[f"p{n - 1}"])[0] == ev.drv_paths["p0"]


def test_store_dir_is_part_of_paths(features, monkeypatch):
    monkeypatch.chdir(features)
    a = evaluate_file("context.recipe", store_dir="/kiln/store")
    b = evaluate_file("context.recipe", store_dir="/nix/store")
    assert b.packages["user"].output_path().startswith("/nix/store/")
    assert a.drv_paths["user"].split("/")[-1] != b.drv_paths["user"].split("/")[-1]


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "recipes").glob("*.recipe")))
def test_repository_recipes_evaluate(recipe, hash_sources):
    ev = evaluate_file(REPO / "recipes" / recipe, add_source=hash_sources)
    assert ev.drv_paths or recipe.endswith(".lock.recipe")


def test_data_dir_exists():
    assert (DATA / "features").is_dir()


def test_default_source_callback_only_hashes(features, monkeypatch, hash_sources):
    monkeypatch.chdir(features)
    default = evaluate_file("source.recipe")
    explicit = evaluate_file("source.recipe", add_source=hash_sources)
    assert default.drv_paths == explicit.drv_paths and default.sources == explicit.sources


def test_a_fetch_of_a_file_named_x_drv_gets_another_name(tmp_path):
    """A derivation name may not end in .drv (its output would look like a derivation):
    a fetch named after such a file takes ``x_drv``."""
    f = write(
        tmp_path,
        "p.recipe",
        """
        let src = fetchurl {
          url = "https://example.org/pkgs/x.drv"
          sha256 = "cf04af86dc085268c5f4470fbae49b18afbc221b78096aab842d934a76bad0ab"
        }
        package p { build = "cp ${src} $out" }
        """,
    )
    ev = evaluate_file(f, store_dir="/kiln/store")
    _, d = ev.select("p")
    (src,) = [ev.drvs[k] for k, _ in d.input_drvs]
    assert src.name == "x_drv" and src.output_path("out").endswith("-x_drv")


def test_a_lock_entry_whose_file_name_does_not_name_it_is_refused(tmp_path, monkeypatch):
    """The build pins each ``.deb`` by its file name (``<name>_<version>_<arch>.deb``,
    checked against the package's control data when unpacked), so an entry whose other
    fields say otherwise would claim a package it does not pin; a file named like a
    ``.drv`` (which once made a fetch named ``x.drv``) is refused the same way."""
    monkeypatch.chdir(tmp_path)
    for filename in ("pool/x.drv", "pool/y_1_amd64.deb", "pool/x_2_amd64.deb"):
        (tmp_path / "r.recipe").write_text(
            'let t = debian_rootfs { lock = [{ name = "x", version = "1", arch = "amd64", '
            f'sha256 = "{"0" * 64}", filename = "{filename}" }}] }}\n'
        )
        with pytest.raises(
            RecipeError, match=r"r\.recipe:1:32: debian_rootfs lock entry 1 .*expected a (\.deb )?file name"
        ):
            evaluate_file("r.recipe").select("t")
    (tmp_path / "r.recipe").write_text(
        'let t = debian_rootfs { lock = [{ name = "x", version = "1:1.0", arch = "amd64", '
        f'sha256 = "{"0" * 64}", filename = "pool/x_1.0_amd64.deb" }}] }}\n'
    )
    ev = evaluate_file("r.recipe")
    (fetch,) = [ev.drvs[p] for p, _ in ev.packages["t"].input_drvs]
    assert fetch.env_map["url"] == "debian:pool/x_1.0_amd64.deb"  # (an epoch is not in pool names)
