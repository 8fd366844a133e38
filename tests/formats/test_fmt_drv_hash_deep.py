"""``derivation.hash_modulo`` over input derivations: inputs first with an explicit stack
(a chain deeper than Python's recursion limit raised RecursionError out of the build
loop's check of a crafted graph and out of ``kiln sbom``), one hash per ``.drv``, and a
graph that loops (only a crafted one can: a ``.drv``'s path hashes its inputs' paths) is
a ``FormatError``, not a hang."""

from __future__ import annotations

import sys

import pytest

from kiln.store.derivation import Derivation, Output, drv_path, finalize, hash_modulo
from kiln.store.errors import FormatError


def _drv(name: str, inputs: list[str]) -> Derivation:
    return Derivation.make(
        name,
        outputs={"out": Output()},
        input_drvs={p: ["out"] for p in inputs},
        builder="/bin/sh",
        env={"out": ""},
    )


def test_a_chain_deeper_than_the_recursion_limit_is_hashed_once_per_drv() -> None:
    drvs: dict[str, Derivation] = {}
    prev: list[str] = []
    calls = 0

    def resolve(p: str) -> Derivation:
        nonlocal calls
        calls += 1
        return drvs[p]

    building: dict = {}  # (shared while building the chain: each step is then cheap)
    for i in range(3 * sys.getrecursionlimit()):
        d = finalize(_drv(f"d{i}", prev), resolve, building)
        p = str(drv_path(d))
        drvs[p] = d
        prev = [p]
    calls = 0
    memo: dict = {}
    top = drvs[prev[0]]
    h = hash_modulo(top, resolve, memo)
    assert len(memo) == len(drvs) - 1 and calls == len(drvs) - 1
    assert hash_modulo(top, resolve, {}) == h  # (the same from scratch)


def test_a_crafted_loop_is_a_format_error() -> None:
    a = _drv("a", ["/kiln/store/" + "b" * 32 + "-b.drv"])
    b = _drv("b", ["/kiln/store/" + "a" * 32 + "-a.drv"])
    graph = {"/kiln/store/" + "a" * 32 + "-a.drv": a, "/kiln/store/" + "b" * 32 + "-b.drv": b}
    with pytest.raises(FormatError, match="depends on itself"):
        hash_modulo(a, graph.__getitem__, {})


def test_the_inputs_of_a_fixed_output_input_are_not_looked_at() -> None:
    """A fixed-output derivation's hash is its output's (Nix's ``hashDerivationModulo``):
    its own inputs need not even be there, and a loop through one is no loop."""
    from kiln.store.derivation import Output

    missing = "/kiln/store/" + "c" * 32 + "-curl.drv"
    fetch = Derivation.make(
        "src",
        outputs={"out": Output(hash_algo="sha256", hash="0" * 64)},
        input_drvs={missing: ["out"]},
        builder="builtin:fetchurl",
        env={"out": ""},
    )
    fetch_path = "/kiln/store/" + "f" * 32 + "-src.drv"
    top = _drv("top", [fetch_path])
    seen: list[str] = []

    def resolve(p: str) -> Derivation:
        seen.append(p)
        return {fetch_path: fetch}[p]

    hash_modulo(top, resolve, {})
    assert seen == [fetch_path]
