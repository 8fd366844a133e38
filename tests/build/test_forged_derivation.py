"""A ``.drv`` is text-addressed: anyone can write one that *claims* another derivation's
output path. The build loop, ``--check`` and the rebuilders load derivations through
``buildplan.load_graph``, which must refuse such a derivation (Nix's checkInvariants)."""

from __future__ import annotations

import pytest

from kiln.store import buildplan
from kiln.store.derivation import Derivation, Output, check_output_paths, drv_path, finalize
from kiln.store.errors import FormatError, StoreError


def _drv(script: str, store_dir: str = "/kiln/store") -> Derivation:
    d = Derivation.make(
        "hello",
        outputs={"out": Output()},
        builder="/bin/sh",
        args=["-c", script],
        env={"name": "hello", "out": ""},
        store_dir=store_dir,
    )
    return finalize(d, lambda p: None, {})


def test_a_derivation_claiming_another_ones_output_is_refused():
    honest = _drv("echo good > $out")
    evil = _drv("echo TROJAN > $out")
    forged_text = evil.serialize().replace(evil.output_path("out"), honest.output_path("out"))
    forged_path = str(drv_path(evil))  # any text path will do: the graph is read by path
    texts = {forged_path: forged_text, str(drv_path(honest)): honest.serialize()}
    with pytest.raises(StoreError, match="refusing a forged or corrupt derivation"):
        buildplan.load_graph([forged_path], texts.__getitem__, "/kiln/store")
    # the honest one loads
    g = buildplan.load_graph([str(drv_path(honest))], texts.__getitem__, "/kiln/store")
    assert list(g.drvs) == [str(drv_path(honest))]


def test_check_output_paths_names_both_paths():
    honest = _drv("echo good > $out")
    evil = _drv("echo TROJAN > $out")
    from dataclasses import replace

    forged = replace(evil, outputs=honest.outputs)
    with pytest.raises(FormatError, match=honest.output_path("out")):
        check_output_paths(forged, lambda p: None, {})
    check_output_paths(honest, lambda p: None, {})


def _two_outputs() -> Derivation:
    d = Derivation.make(
        "swapdemo",
        outputs={"out": Output(), "dev": Output()},
        builder="/bin/sh",
        args=["-c", "mkdir $out $dev; echo x > $out/f"],
        env={"name": "swapdemo", "out": "", "dev": ""},
        store_dir="/kiln/store",
    )
    return finalize(d, lambda p: None, {})


def test_output_env_vars_must_be_the_output_paths():
    """The output env vars are masked out of the hash, so a ``.drv`` with ``$out`` and
    ``$dev`` swapped keeps the honest output paths while its builder writes each output's
    contents at the other's path: refused, as Nix's checkInvariants does."""
    from dataclasses import replace

    honest = _two_outputs()
    env = honest.env_map
    env["out"], env["dev"] = env["dev"], env["out"]
    forged = replace(honest, env=tuple(sorted(env.items())))
    with pytest.raises(FormatError, match="environment variable 'dev' is .* not its output path"):
        check_output_paths(forged, lambda p: None, {})
    texts = {str(drv_path(forged)): forged.serialize()}
    with pytest.raises(StoreError, match="refusing a forged or corrupt derivation"):
        buildplan.load_graph(list(texts), texts.__getitem__, "/kiln/store")
    check_output_paths(honest, lambda p: None, {})


@pytest.mark.parametrize(
    ("mangle", "match"),
    [
        # two env entries swapped in the text: Nix keeps a sorted map
        (lambda t: t.replace('("name",', '("zzz",', 1), "environment variables are not sorted"),
        (lambda t: t.replace('("name","swapdemo")', '("name","swapdemo"),("name","other")'), "'name' twice"),
        (lambda t: t.replace('"swapdemo"', '"swap\\x"', 1), "not in canonical form"),
    ],
)
def test_non_canonical_drv_text_is_refused(mangle, match):
    """A ``.drv`` whose text is not what serializing it gives (unsorted or duplicate
    entries, an escape Nix never writes) would hash as something else than the builder
    sees: ``parse`` refuses it."""
    from kiln.store.drvparse import parse

    text = _two_outputs().serialize()
    assert parse(text, "swapdemo", "/kiln/store").serialize() == text
    with pytest.raises(FormatError, match=match):
        parse(mangle(text), "swapdemo", "/kiln/store")


def test_a_fixed_output_hash_that_is_not_hex_is_a_format_error():
    from dataclasses import replace

    d = Derivation.make(
        "src",
        outputs={"out": Output(hash_algo="sha256", hash="ab" * 32)},
        builder="builtin:fetchurl",
        env={"out": ""},
        store_dir="/kiln/store",
    )
    bad = replace(d, outputs=(("out", Output(hash_algo="sha256", hash="zz" * 32)),))
    with pytest.raises(FormatError, match="is not hex"):
        check_output_paths(bad, lambda p: None, {})
