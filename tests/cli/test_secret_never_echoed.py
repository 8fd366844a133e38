"""A secret key given where a key file or a public key belongs is never echoed: error
output ends up in CI logs. Before, ``--key "$(cat k.sec)"`` printed the whole key in
"no such secret key file", and ``--trusted-key`` its first 60 characters (the seed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from clikit import kiln_at

from kiln.store.signing import SecretKey

SECRET = SecretKey.generate("leaky-1").to_text()
SEED = SECRET.split(":", 1)[1][:20]  # any run of its base64 would do
B64 = SECRET.split(":", 1)[1]
#: other spellings of the same key: a trailing newline, no name, quoted, wrapped, URL-safe
SPELLINGS = [
    SECRET + "\n",
    B64,
    f'"{SECRET}"',
    B64[:64] + "\n" + B64[64:],
    B64.replace("+", "-").replace("/", "_"),
    "\n".join(B64[i : i + 40] for i in range(0, len(B64), 40)),  # wrapped short: no long run
]
#: what must never appear: the seed's start, in either alphabet
SEEDS = (SEED[:12], SEED[:12].replace("+", "-").replace("/", "_"))


def kiln(tmp: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return kiln_at(tmp, *args, env=env, cwd=tmp)


@pytest.mark.parametrize(
    "args",
    [
        ["store", "sign", "--key", SECRET, "--all"],
        ["build", "x.recipe", "--sign-key", SECRET],
        ["push", "/kiln/store/" + "0" * 32 + "-x", "--to", "file:///nonexistent", "--sign-key", SECRET],
        ["store", "verify", "--trusted-key", SECRET],
        ["serve", "--dir", "reg", "--attester-key", SECRET],
        ["copy", "--from", "file:///nonexistent", "--to", "store", "/kiln/store/x", "--trusted-key", SECRET],
        ["sbom", "/kiln/store/" + "0" * 32 + "-x", "--attest", "--key", SECRET],
        ["rebuild", "/kiln/store/" + "0" * 32 + "-x", "--key", SECRET],
        ["key", "rotate", SECRET],
        ["key", "public", SECRET],
        *(["store", "sign", "--key", k, "--all"] for k in SPELLINGS),
        *(["store", "verify", "--trusted-key", k] for k in SPELLINGS),
        ["key", SECRET],  # argparse's "invalid choice" quotes the value
        ["build", "x.recipe", "--cores", SECRET],
    ],
)
def test_a_secret_key_in_the_wrong_place_is_not_echoed(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "x.recipe").write_text('package x { build = "true" }\n')
    assert kiln(tmp_path, "store", "init").returncode == 0
    r = kiln(tmp_path, *args)
    assert r.returncode != 0
    assert not any(seed in r.stdout + r.stderr for seed in SEEDS), r.stderr
    assert "internal error" not in r.stderr, r.stderr


def test_a_secret_key_in_kiln_trusted_keys_is_not_echoed(tmp_path: Path) -> None:
    r = kiln(tmp_path, "store", "verify", env={"KILN_TRUSTED_KEYS": SECRET})
    assert r.returncode == 1 and "KILN_TRUSTED_KEYS" in r.stderr and SEED not in r.stderr, r.stderr


def test_a_path_is_not_taken_for_a_key(tmp_path: Path) -> None:
    """CamelCase directories, store paths with capitals: shown as they are."""
    d = tmp_path / "JohnSmith" / "Documents" / "WorkStuff" / "BuildKeys"
    r = kiln(tmp_path, "store", "verify", "--trusted-key", str(d / "signer.pub"))
    assert f"{d / 'signer.pub'}: no such public key file" in r.stderr, r.stderr
    p = "/kiln/store/1b8m03r63zqhnjf7l5wnldhh7c134ap5-PyQt5-QtWebEngine-HTMLRenderer2"
    assert kiln(tmp_path, "store", "init").returncode == 0
    r = kiln(tmp_path, "store", "info", p)
    assert p in r.stderr, r.stderr


def test_the_stderr_filter_hides_keys_exactly_and_nothing_else(tmp_path: Path) -> None:
    """Every message on stderr goes through ``errors.hide_keys``: a secret key (a seed
    followed by its own public key) in any spelling is hidden; a build log's capitals and
    digits, an SRI hash or a signature are not keys and stay (a first, looser rule hid a
    whole failed build's message)."""
    import textwrap

    from kiln.store.errors import hide_keys

    log = (
        "CMake Error at CMakeLists.txt:12 (find_package):\n  Could not find a package configuration file "
        'provided by "Qt5" with any of\n  Add the installation prefix of "Qt5" to CMAKE_PREFIX_PATH or set "Qt5_DIR"\n'
    )
    sri = "found a sha512 hash: 'sha512-" + "AbCdEfGh12345678" * 6 + "=='"
    sig = "sig leaky-1:" + "Qx7" * 29 + "A=="
    for text in (log, sri, sig):
        assert hide_keys(text) == text
    for text in (SECRET, *SPELLINGS, repr("\n".join(textwrap.wrap(B64, 40))), SECRET.replace("/", "\\/")):
        assert not any(seed in hide_keys(f"error: {text}: no such file") for seed in SEEDS), text
    # only the key goes: what follows it on its line and after stays
    shown = hide_keys(f"using key {SECRET}\ncompiling 200 files\nmake error 2")
    assert shown == "using key leaky-1:<not shown: a secret key>\ncompiling 200 files\nmake error 2", shown
    r = kiln(tmp_path, SECRET)  # an "unknown command", printed before the filter is in place
    assert r.returncode == 2 and not any(seed in r.stderr for seed in SEEDS), r.stderr
    r = kiln(tmp_path, "key", "\n".join(textwrap.wrap(SECRET, 40)))  # argparse's repr of it
    assert r.returncode == 2 and not any(seed in r.stderr for seed in SEEDS), r.stderr
