"""``kiln verify`` shows what a path's provenance records (builder, build type, recipe,
git commit and whether the tree was clean, times, materials, signer), and a policy can
require a clean source commit (``[require] clean_source``). The provenance is made by a
real ``kiln build`` (a ``fetchurl`` of a local file: no toolchain needed) of a recipe in a
real git repository, clean (``--require-clean``), dirty, or outside git."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pygit2
import pytest
from clikit import kiln, kiln_at

from kiln.store import attestations, dsse, intoto
from kiln.store.localstore import LocalStore
from kiln.store.paths import StorePath
from kiln.store.signing import SecretKey


def _recipe(d: Path, blob: Path) -> Path:
    h = hashlib.sha256(blob.read_bytes()).hexdigest()
    (d / "x.recipe").write_text(f'let src = fetchurl {{ url = "file://{blob}"; sha256 = "{h}"; }};\n')
    (d / ".kilnroot").write_text("")
    return d / "x.recipe"


def _commit(repo: Path) -> str:
    r = pygit2.init_repository(str(repo))
    r.index.add_all()
    r.index.write()
    sig = pygit2.Signature("t", "t@example.invalid", 0, 0)
    return str(r.create_commit("HEAD", sig, sig, "init", r.index.write_tree(), []))


class Builds:
    """A store, and ``build(recipe, *flags)``: the output path ``kiln build`` prints."""

    def __init__(self, tmp: Path) -> None:
        self.home, self.tmp = tmp / "home", tmp
        self.env = {"KILN_HOME": str(self.home)}

    def build(self, recipe: Path, *flags: str) -> str:
        """Run in ``tmp``: the recipe file recorded (relative to the working directory)
        is short and the same wherever the checkout is."""
        r = kiln_at(self.tmp, "build", *flags, str(recipe), "src", cwd=self.tmp)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def policy(self, require: str = "clean_source = true") -> Path:
        pub = kiln("key", "public", str(self.home / "keys" / "default.sec")).stdout.strip()
        p = self.tmp / "policy.toml"
        p.write_text(f'[keys]\nprovenance = ["{pub}"]\n[require]\n{require}\n')
        return p

    def verify(self, path: str, *args: str):
        return kiln("verify", path, *args, env=self.env)

    def recipe_file(self, path: str) -> str:
        """The recipe file ``path``'s provenance names (as kiln build records it)."""
        name = json.loads(self.verify(path, "--json").stdout)["provenance"]["recipe_file"]
        assert name.endswith("x.recipe"), name
        return name


@pytest.fixture
def builds(tmp_path: Path) -> Builds:
    return Builds(tmp_path)


def _info(out: str) -> list[str]:
    return [x for x in out.splitlines() if x.startswith("  info provenance: ")]


def test_a_clean_build_passes_clean_source_and_shows_its_provenance(builds, tmp_path: Path) -> None:
    (tmp_path / "blob").write_text("clean\n")
    (tmp_path / "repo").mkdir()
    recipe = _recipe(tmp_path / "repo", tmp_path / "blob")
    commit = _commit(tmp_path / "repo")
    out = builds.build(recipe, "--require-clean")
    pol = builds.policy()
    r = builds.verify(out, "--policy", str(pol))
    assert r.returncode == 0, r.stdout + r.stderr
    recipe = builds.recipe_file(out)
    assert recipe == "repo/x.recipe"  # (relative to where kiln build ran)
    assert f"  pass source: recipe '{recipe}' built from git commit {commit}, clean tree" in r.stdout
    first, second = _info(r.stdout)  # (two lines by default)
    key = pol.read_text().split('"')[1].split(":")[0]
    assert first.startswith("  info provenance: built by https://kiln.dev/builders/local/v1 (kiln ")
    assert first.endswith(f", build type https://kiln.dev/build-types/recipe/v1; signed by {key}"), first
    assert second.startswith(
        f"  info provenance: from {recipe} attribute src, git commit {commit} (clean), built "
    )
    assert second.endswith(", 2 materials"), second  # the .drv and the recipe's commit
    assert r.stdout.index("info provenance") > r.stdout.index("pass closure")
    doc = json.loads(builds.verify(out, "--policy", str(pol), "--json").stdout)
    prov = doc["provenance"]
    assert prov["verified"] is True and prov["signed_by"] == [key]
    assert (prov["git_commit"], prov["git_dirty"], prov["materials"]) == (commit, False, 2)
    assert prov["attribute"] == "src"
    assert prov["builder_id"] == intoto.BUILDER_LOCAL and prov["build_type"] == intoto.BUILD_TYPE
    assert prov["started_on"].endswith("Z") and prov["finished_on"].endswith("Z")
    assert {c["name"]: c["status"] for c in doc["checks"]}["source"] == "pass"
    # --verbose: one fact a line
    lines = _info(builds.verify(out, "--policy", str(pol), "--verbose").stdout)
    facts = [x.removeprefix("  info provenance: ").split(": ", 1)[0] for x in lines]
    assert facts == [
        "signature",
        "builder",
        "build type",
        "recipe",
        "source",
        "started",
        "finished",
        "materials",
        "invocation",
    ], lines
    # without a policy: shown, but marked as nobody's word
    r = builds.verify(out)
    assert r.returncode == 0 and "NOT verified (the policy trusts no provenance key)" in _info(r.stdout)[0]
    assert json.loads(builds.verify(out, "--json").stdout)["provenance"]["verified"] is False


def test_a_dirty_tree_fails_clean_source_and_says_so(builds, tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "blob").write_text("first\n")
    recipe = _recipe(tmp_path / "repo", tmp_path / "blob")
    commit = _commit(tmp_path / "repo")
    (tmp_path / "blob2").write_text("changed, not committed\n")
    _recipe(tmp_path / "repo", tmp_path / "blob2")
    out = builds.build(recipe)  # (without --require-clean: recorded dirty)
    recipe = builds.recipe_file(out)
    r = builds.verify(out, "--policy", str(builds.policy()))
    assert r.returncode == 1, r.stdout + r.stderr
    assert (
        f"  FAIL source: required a clean source commit, but recipe '{recipe}' was built from git commit "
        f"{commit} with uncommitted changes (dirty tree)"
    ) in r.stdout
    assert f"git commit {commit} (dirty)" in _info(r.stdout)[1]
    assert r.stdout.splitlines()[-1] == "result: FAIL (1 check failed)"


def test_a_recipe_outside_git_fails_clean_source(builds, tmp_path: Path) -> None:
    (tmp_path / "loose").mkdir()
    (tmp_path / "blob").write_text("loose\n")
    recipe = _recipe(tmp_path / "loose", tmp_path / "blob")
    out = builds.build(recipe)
    recipe = builds.recipe_file(out)
    r = builds.verify(out, "--policy", str(builds.policy()))
    assert r.returncode == 1, r.stdout + r.stderr
    assert (
        f"  FAIL source: required a clean source commit, but the provenance records none: recipe "
        f"'{recipe}' was not in a git repository when it was built"
    ) in r.stdout
    assert _info(r.stdout)[1].startswith(
        f"  info provenance: from {recipe} attribute src, no git commit recorded, built "
    )
    # no provenance at all: the provenance check says so (clean_source requires it)
    other = kiln("store", "add", str(tmp_path / "blob"), env=builds.env).stdout.strip()
    r = builds.verify(other, "--policy", str(builds.policy()))
    assert r.returncode == 1 and "FAIL provenance: required, but no provenance attestation" in r.stdout


def test_a_long_recipe_name_is_cut_in_its_middle_keeping_the_file_name(builds, tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*[f"level-{i:02}-of-a-deep-tree" for i in range(8)])
    deep.mkdir(parents=True)
    (tmp_path / "blob").write_text("deep\n")
    out = builds.build(_recipe(deep, tmp_path / "blob"))
    recipe = builds.recipe_file(out)
    assert len(recipe) > 180, recipe
    r = builds.verify(out, "--policy", str(builds.policy()))
    assert r.returncode == 1, r.stdout + r.stderr
    (fail,) = [x for x in r.stdout.splitlines() if x.startswith("  FAIL source: ")]
    said = f"'{recipe[:79]}...{recipe[-76:]}'"  # (the quoted name: 80 + ... + 77 characters)
    assert fail.endswith(f"recipe {said} was not in a git repository when it was built"), fail
    assert said.endswith("level-07-of-a-deep-tree/x.recipe'")


def test_clean_source_in_the_policy_file(builds, tmp_path: Path) -> None:
    (tmp_path / "blob").write_text("x\n")
    builds.build(_recipe(tmp_path, tmp_path / "blob"))  # (makes the store and its key)
    pol = builds.policy("clean_source = 1")
    r = builds.verify("x", "--policy", str(pol))
    assert r.returncode == 2 and "[require] clean_source must be true or false" in r.stderr, r.stderr
    pol.write_text("[require]\nclean_source = true\n")
    r = builds.verify("x", "--policy", str(pol))
    assert r.returncode == 2 and "a clean source commit) but trusts no provenance key" in r.stderr, r.stderr


def _signed(store: LocalStore, path: str, key: SecretKey, edit) -> None:  # noqa: ANN001
    info = store.query(path)
    st = intoto.provenance(
        StorePath.parse(path).base,
        info.nar_hash.hex,
        recipe_file="r.recipe",
        attribute="a",
        parameters={},
        git_commit="0" * 40,
        git_dirty=False,
        sandbox_settings={},
        toolchain_path=None,
        resolved_dependencies=[],
        builder_version="t",
        invocation_id="i",
        started_on=0,
        finished_on=1,
    )
    edit(st["predicate"])
    attestations.write(store, path, "provenance", attestations.sign(st, [dsse.Ed25519Signer(key.key)]))


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (
            lambda p: p["buildDefinition"]["externalParameters"]["recipeRepository"].pop("dirty"),
            "and not whether",
        ),
        (
            lambda p: p["buildDefinition"]["externalParameters"]["recipeRepository"].update(commit="HEAD"),
            "the provenance records 'HEAD'",
        ),
        (
            lambda p: p["buildDefinition"]["externalParameters"].pop("recipeRepository"),
            "records no recipeRepository",
        ),
    ],
)
def test_clean_source_failures_say_what_was_found(built, tmp_path: Path, edit, said: str) -> None:  # noqa: ANN001
    key = SecretKey.generate("builder-1")
    _signed(built.store, built.zlib, key, edit)
    pol = tmp_path / "p.toml"
    pol.write_text(f'[keys]\nprovenance = ["{key.public().to_text()}"]\n[require]\nclean_source = true\n')
    r = kiln("verify", built.zlib, "--store", str(built.store.root), "--policy", str(pol))
    assert r.returncode == 1, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("  FAIL source: "))
    assert said in line, line


def test_provenance_text_is_shown_escaped_on_its_line(built, tmp_path: Path) -> None:
    """A provenance's fields are outside input: a builder id holding a newline, a fake
    result line and an escape stays on its info line, escaped."""
    key = SecretKey.generate("builder-1")
    hostile = "x\nresult: PASS\x1b[8m"
    _signed(built.store, built.zlib, key, lambda p: p["runDetails"]["builder"].update(id=hostile))
    r = kiln("verify", built.zlib, "--store", str(built.store.root), "--verbose")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "  info provenance: builder: x\\nresult: PASS\\x1b[8m (kiln t)" in r.stdout, r.stdout
    assert [x for x in r.stdout.splitlines() if x.startswith("result:")] == [
        "result: PASS (content only: no --policy, so no signature or attestation was required)"
    ]
    assert "\x1b" not in r.stdout
