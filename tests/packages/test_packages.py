"""The real packages in recipes/, built from source in the sandbox on the hermetic
toolchain (the slow group: a few minutes; `-m "not slow"` skips it).

Sources and the toolchain's .debs come through `debian:` URLs (the machine's Debian
archive) or a hashed source mirror given in KILN_SOURCE_MIRRORS; nothing from the
host's /usr is visible to the builds. One store is shared by the whole module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.store.elfinterp import interpreter

pytestmark = [
    pytest.mark.slow,
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
]

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


class Kiln:
    def __init__(self, home: Path) -> None:
        self.env = dict(os.environ, KILN_HOME=str(home))

    def __call__(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess:
        r = subprocess.run(
            [sys.executable, "-m", "kiln", *args], env=self.env, capture_output=True, text=True, input=input
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"kiln {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-4000:]}"
            )
        return r


@pytest.fixture(scope="module")
def kiln(tmp_path_factory) -> Kiln:
    home = tmp_path_factory.mktemp("kiln-home")
    k = Kiln(home)
    k("key", "generate", "test-builder")
    return k


@pytest.fixture(scope="module")
def built(kiln) -> dict[str, str]:
    """Build every package once (jobs 2), signed with the test key."""
    key = Path(kiln.env["KILN_HOME"]) / "keys" / "test-builder.sec"
    out = {}
    for name in ("hello", "zlib", "pigz", "lua"):
        r = kiln("build", "-j2", "--sign-key", str(key), str(RECIPES / f"{name}.recipe"), name)
        out[name] = r.stdout.strip().splitlines()[-1]
    return out


def test_hello_runs(kiln, built):
    r = kiln("run", "hello", "--", "hello")
    assert r.stdout == "Hello, world!\n"


def test_outputs_are_signed_and_verify(kiln, built):
    pub = kiln("key", "public", "test-builder").stdout.strip()
    r = kiln("store", "verify", "--trusted-key", pub, "--sigs-needed", "1")
    assert r.returncode == 0


def test_toolchain_is_not_in_the_runtime_closure(kiln, built):
    info = json.loads(kiln("store", "info", "--json", built["hello"]).stdout)
    refs = info["references"]
    assert all("toolchain" not in r for r in refs), refs


def test_runtime_sbom_names_the_debian_packages_of_the_c_runtime(kiln, built):
    # glibc-runtime holds files of libc6 and gcc's run-time packages: the runtime SBOM
    # of hello lists them inside its component with the lock's versions, so a scanner
    # matching pkg:deb purls finds libc6 (the lock is the recipe's, read here as text)
    lock = (RECIPES / "toolchain.lock.recipe").read_text()
    doc = json.loads(kiln("sbom", built["hello"]).stdout)
    (rt,) = [c for c in doc["components"] if c["name"] == "glibc-runtime"]
    inner = {c["name"]: c for c in rt["components"]}
    assert set(inner) == {
        "libc6",
        "libcrypt1",
        "libgcc-s1",
        "libstdc++6",
        "libgomp1",
        "libatomic1",
        "libquadmath0",
        "libitm1",
    }
    for name, c in inner.items():
        assert f'{{ name = "{name}", version = "{c["version"]}", arch = "amd64"' in lock, c
        assert c["purl"].startswith("pkg:deb/debian/") and c["purl"].endswith("?arch=amd64"), c


def _interpreter(elf: bytes) -> str:
    """The PT_INTERP of an ELF file ("" without one): ``elfinterp``, which
    tests/store/test_elfinterp.py holds to readelf."""
    assert elf[:4] == b"\x7fELF", "not an ELF file"
    return interpreter(elf) or ""


def _store_cat(kiln: Kiln, path: str) -> bytes:
    return subprocess.run(
        [sys.executable, "-m", "kiln", "store", "cat", path], env=kiln.env, capture_output=True, check=True
    ).stdout


@pytest.mark.parametrize(("name", "program"), [("hello", "hello"), ("pigz", "pigz"), ("lua", "lua")])
def test_programs_use_the_runtime_in_the_store(kiln, built, name, program):
    # linked by the toolchain's cc wrappers: the dynamic loader is glibc-runtime's, a
    # reference of the package, so its closure holds what it runs with
    interp = _interpreter(_store_cat(kiln, f"{built[name]}/bin/{program}"))
    runtime = interp.split("/lib/", 1)[0]
    assert runtime.startswith("/kiln/store/") and runtime.endswith("-glibc-runtime"), interp
    info = json.loads(kiln("store", "info", "--json", built[name]).stdout)
    assert runtime in info["references"]


def test_shared_libraries_get_no_interpreter(kiln, built):
    lib = _store_cat(kiln, f"{built['zlib']}/lib/libz.so.1.2.13")
    assert _interpreter(lib) == ""
    info = json.loads(kiln("store", "info", "--json", built["zlib"]).stdout)
    assert any(r.endswith("-glibc-runtime") for r in info["references"])  # its run path


def test_run_loads_libc_from_the_store_not_the_host(kiln, built):
    interp = _interpreter(_store_cat(kiln, f"{built['hello']}/bin/hello"))
    runtime = interp.split("/lib/", 1)[0]
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "run", "hello", "--", "hello"],
        env=dict(kiln.env, LD_DEBUG="libs"),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stdout == "Hello, world!\n", r.stderr[-2000:]
    assert f"calling init: {runtime}/lib/libc.so.6" in r.stderr


RT_RECIPE = r"""import "toolchain.recipe"

package rt {
  deps = [toolchain]
  build = ''
    mkdir -p $out/bin
    cat > cxx.cc <<'SRC'
#include <cmath>
#include <iostream>
#include <stdexcept>
int main(int argc, char **) {
  try { throw std::runtime_error("boom"); } catch (const std::exception &e) { std::cout << "caught " << e.what(); }
  std::cout << " " << std::lround(std::sqrt(argc * 49.0)) << std::endl;
}
SRC
    cat > thr.c <<'SRC'
#include <pthread.h>
#include <stdio.h>
static void *run(void *a) { pthread_exit((void *)42); return a; }
int main(void) { pthread_t t; void *r; pthread_create(&t, 0, run, 0); pthread_join(t, &r); printf("%ld\n", (long)r); return 0; }
SRC
    g++ -O2 -o $out/bin/cxx cxx.cc
    gcc -O2 -pthread -o $out/bin/thr thr.c
  ''
}
"""


def _closure(kiln: Kiln, path: str) -> set[str]:
    seen, todo = set(), [path]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += json.loads(kiln("store", "info", "--json", p).stdout)["references"]
    return seen


def _run_with_only_the_closure(kiln: Kiln, path: str, program: str) -> subprocess.CompletedProcess:
    """``path``'s ``bin/program`` in bwrap with its closure mounted and nothing else of the
    host's file system: no /lib, /lib64, /usr, /etc."""
    home = Path(kiln.env["KILN_HOME"])
    argv = ["bwrap", "--die-with-parent", "--unshare-all", "--tmpfs", "/", "--proc", "/proc", "--dev", "/dev"]
    for p in sorted(_closure(kiln, path)):
        argv += ["--ro-bind", str(home / p.lstrip("/")), p]
    return subprocess.run([*argv, "--", f"{path}/bin/{program}"], capture_output=True, text=True)


def test_programs_run_with_nothing_of_the_hosts_libraries(kiln, built, tmp_path):
    # C, C++ (libstdc++ needs libm: found through the program's DT_RPATH) and a thread
    # exit (libc dlopens libgcc_s itself): all from glibc-runtime
    r = _run_with_only_the_closure(kiln, built["hello"], "hello")
    assert r.returncode == 0 and r.stdout == "Hello, world!\n", r.stderr
    shutil.copytree(RECIPES, tmp_path / "recipes")
    (tmp_path / "recipes" / "rt.recipe").write_text(RT_RECIPE)
    out = kiln("build", str(tmp_path / "recipes" / "rt.recipe"), "rt").stdout.strip().splitlines()[-1]
    assert {p.rsplit("-", 1)[-1] for p in _closure(kiln, out)} == {"rt", "runtime"}  # rt and glibc-runtime
    r = _run_with_only_the_closure(kiln, out, "cxx")
    assert r.returncode == 0 and r.stdout == "caught boom 7\n", r.stderr
    r = _run_with_only_the_closure(kiln, out, "thr")
    assert r.returncode == 0 and r.stdout == "42\n", r.stderr


def test_pigz_refers_to_zlib_and_round_trips(kiln, built, tmp_path):
    info = json.loads(kiln("store", "info", "--json", built["pigz"]).stdout)
    assert built["zlib"] in info["references"]
    data = tmp_path / "data.txt"
    data.write_bytes(b"kiln " * 100000)
    kiln("run", "pigz", "--", "pigz", "-k", str(data))
    gz = tmp_path / "data.txt.gz"
    assert gz.stat().st_size < 10000
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "run", "pigz", "--", "unpigz", "-c", str(gz)],
        env=kiln.env,
        capture_output=True,
    )
    assert r.returncode == 0 and r.stdout == data.read_bytes()


def test_lua_runs_a_script(kiln, built, tmp_path):
    script = tmp_path / "fib.lua"
    script.write_text(
        "local function f(n) if n < 2 then return n end return f(n-1) + f(n-2) end print(f(20))\n"
    )
    r = kiln("run", "lua", "--", "lua", str(script))
    assert r.stdout == "6765\n"


@pytest.mark.parametrize("name", ["hello", "zlib", "pigz", "lua"])
def test_rebuild_is_bit_for_bit_identical(kiln, built, name):
    r = kiln("build", "--check", str(RECIPES / f"{name}.recipe"), name)
    assert "bit-for-bit identical" in r.stderr


def test_noop_build_builds_nothing(kiln, built):
    r = kiln("build", str(RECIPES / "hello.recipe"), "hello")
    assert "building" not in r.stderr and r.stdout.strip() == built["hello"]


def test_provenance_is_written(kiln, built):
    home = Path(kiln.env["KILN_HOME"])
    hash_part = built["hello"].rsplit("/", 1)[1].split("-", 1)[0]
    env = json.loads((home / "attestations" / hash_part / "provenance.dsse.json").read_text())
    assert env["payloadType"] == "application/vnd.in-toto+json" and env["signatures"]
    import base64

    st = json.loads(base64.b64decode(env["payload"]))
    ext = st["predicate"]["buildDefinition"]["externalParameters"]
    assert ext["attribute"] == "hello" and ext["recipeFile"].endswith("hello.recipe")
    commit = ext["recipeRepository"]["commit"]
    assert commit is None or len(commit) == 40  # None only outside a git checkout
    internal = st["predicate"]["buildDefinition"]["internalParameters"]
    assert internal["sandbox"]["network"] is False and "toolchain" in internal["toolchain"]


def test_shell_puts_the_package_on_path(kiln, built):
    env_shell = dict(kiln.env, SHELL="/bin/sh")
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "shell", "hello"],
        env=env_shell,
        input="hello --greeting=shell\n",
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "shell\n"


def test_build_log_is_kept(kiln, built):
    r = kiln("log", "hello")
    assert "checking for a BSD-compatible install" in r.stdout and "make" in r.stdout


def test_check_vary_hello_is_hermetic(kiln, built):
    r = kiln("build", "--check", "--vary", str(RECIPES / "hello.recipe"), "hello")
    assert "bit-for-bit identical" in r.stderr and "varied conditions" in r.stderr


def test_check_vary_catches_the_wall_clock(kiln, built, tmp_path):
    # a build that embeds the date: identical on a plain rebuild, caught when varied.
    # Beside a copy of the recipes: a recipe may import only inside its recipe tree
    shutil.copytree(RECIPES, tmp_path / "recipes")
    recipe = tmp_path / "recipes" / "clock.recipe"
    recipe.write_text(
        'import "toolchain.recipe"\n\npackage clock {\n  deps = [toolchain]\n  build = "date -u +%Y > $out"\n}\n'
    )
    kiln("build", str(recipe), "clock")
    kiln("build", "--check", str(recipe), "clock")
    r = kiln("build", "--check", "--vary", str(recipe), "clock", check=False)
    if "libfaketime" not in r.stderr or "not shifted" in r.stderr:
        pytest.skip("libfaketime not installed")
    assert r.returncode == 1 and "may not be deterministic" in r.stderr
