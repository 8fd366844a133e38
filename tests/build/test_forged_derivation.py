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
